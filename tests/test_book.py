"""Structure of the book: every chapter is titled, importable in Colab, and listed in the TOC."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += toc_files(item)
    return files


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapters():
    assert NOTEBOOKS


def test_every_notebook_is_in_the_toc_in_reading_order():
    listed = [f for f in toc_files(TOC) if f.startswith("notebooks/")]
    assert listed == [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    assert all(
        (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists()
        for f in [*toc_files(TOC), TOC["root"]]
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_opens_with_a_title_and_the_colab_install_cell(path):
    first, install = cells(path)[:2]
    assert first["cell_type"] == "markdown"
    assert re.match(r"# \S", source(first)), "the first cell must be the chapter's # title"
    assert install["cell_type"] == "code"
    text = source(install)
    assert '"google.colab" in sys.modules' in text
    url = CONFIG["repository"]["url"]
    assert f"git+{url}" in text, f"install cell must install from {url} (see _config.yml)"
    # and no other repository address anywhere in the chapter
    for cell in cells(path):
        for found in re.findall(r"github\.com/[\w.-]+/[\w.-]+", source(cell)):
            assert url.endswith(found), f"{path.name} names {found}, _config.yml says {url}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_uses_the_package_and_ends_with_summary_and_exercises(path):
    code = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    assert re.search(r"^(from|import) ssd_tutorial", code, re.M)
    markdown = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_fits_the_pages_code_column(path):
    # The built page scrolls sideways past this width; only the Colab install line may.
    ruff_config = (ROOT / "notebooks" / "ruff.toml").read_text()
    width = int(re.search(r"^line-length = (\d+)$", ruff_config, re.M).group(1))
    too_long = [
        line
        for cell in cells(path)
        if cell["cell_type"] == "code"
        for line in source(cell).splitlines()
        if len(line) > width and "%pip install" not in line
    ]
    assert too_long == [], f"{path.name}: lines over {width} characters: {too_long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_are_committed_without_outputs(path):
    for cell in cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_launch_buttons_point_to_colab():
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["repository"]["url"].startswith("https://github.com/")


def chapter_title(path: Path) -> str:
    return source(cells(path)[0]).splitlines()[0].removeprefix("# ").strip()


def roadmap_items(text: str) -> list[tuple[int, str]]:
    """The ``N. **Title**`` items of a numbered roadmap, in their order."""
    return [(int(n), title) for n, title in re.findall(r"^(\d+)\. \*\*(.+?)\*\*", text, re.M)]


def test_roadmaps_list_every_chapter_by_its_number_and_title():
    chapters = [(n, chapter_title(p)) for n, p in enumerate(NOTEBOOKS, start=1)]
    intro = (ROOT / "book" / "intro.md").read_text()
    first_chapter = "\n".join(source(c) for c in cells(NOTEBOOKS[0]))
    assert roadmap_items(intro) == chapters
    assert roadmap_items(first_chapter) == chapters
