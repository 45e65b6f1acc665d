"""Let nbval and the book build share one execution of every chapter.

``pytest --nbval-lax notebooks`` runs each chapter in a fresh kernel and checks that no cell
fails. The hooks below collect the outputs nbval received and, when every cell of a chapter
passed, store the executed chapter in the book's jupyter-cache (``_build/.jupyter_cache``).
The book build that follows (``execute_notebooks: cache`` in ``_config.yml``) then renders
those outputs instead of running the chapter a second time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BOOK_CACHE = Path(__file__).parent / "_build" / ".jupyter_cache"
_failed_notebooks: set[str] = set()


def _is_notebook_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if _is_notebook_cell(item) and report.failed:
        _failed_notebooks.add(item.parent.nodeid)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if not _is_notebook_cell(item):
        return
    item.cell.outputs = list(item.test_outputs or [])
    item.cell.execution_count = item.cell_num + 1
    chapter_done = nextitem is None or nextitem.parent is not item.parent
    if chapter_done and item.parent.nodeid not in _failed_notebooks:
        _cache_executed_notebook(item.parent.nb, Path(item.parent.path))


def _cache_executed_notebook(notebook, path: Path) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(BOOK_CACHE))
    cache.cache_notebook_bundle(CacheBundleIn(notebook, str(path)), overwrite=True)
