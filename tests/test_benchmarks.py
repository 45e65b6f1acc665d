"""The benchmarks' shared helpers (``benchmarks/timing.py``) that write RESULTS.md, and the
learning benchmark that writes its own section of it."""

import pytest
import torch
from timing import (
    LEARNING_END,
    LEARNING_START,
    RESULTS_END,
    learning_section,
    with_learning_section,
)

from conftest import BENCHMARKS, load_benchmark


def test_the_learning_section_is_appended_once_then_replaced():
    page = "# Benchmark results\n\n<!-- results -->\n\n| speed |\n"
    first = f"{LEARNING_START}\nold table\n{LEARNING_END}"
    written = with_learning_section(page, first)
    assert written.startswith(page.rstrip("\n")) and learning_section(written) == first
    assert "## How fast the tiny SSD learns" in written
    second = f"{LEARNING_START}\nnew table\n{LEARNING_END}"
    again = with_learning_section(written, second)
    assert learning_section(again) == second and "old table" not in again
    assert again.count("## How fast the tiny SSD learns") == 1


def test_a_page_without_the_markers_has_no_learning_section():
    assert learning_section("# Benchmark results\n") == ""
    assert learning_section(f"{LEARNING_END} before {LEARNING_START}") == ""


def test_the_committed_results_page_has_a_learning_section_the_book_can_include():
    page = (BENCHMARKS / "RESULTS.md").read_text()
    assert "| recipe | steps |" in learning_section(page)
    book = (BENCHMARKS.parent / "book" / "benchmarks.md").read_text()
    # the book's includes end at these markers: each must be there, before the learning part
    assert ":end-before: <!-- /results -->" in book and ":start-after: <!-- learning -->" in book
    assert page.index("<!-- results -->") < page.index(RESULTS_END) < page.index(LEARNING_START)


@pytest.mark.slow
def test_the_learning_benchmark_writes_its_table_and_its_figure(tmp_path, monkeypatch):
    """A short run of ``bench_learning.py --write``: both recipes' rows in the results page's
    learning section, and the curves' figure beside it."""
    bench = load_benchmark("bench_learning")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(bench, "FIGURE", tmp_path / "learning_curve.png")
    threads = str(torch.get_num_threads())  # the run sets them: keep this process's
    bench.main(["--budget", "2", "--eval-every", "1", "--threads", threads, "--write"])
    section = learning_section((tmp_path / "RESULTS.md").read_text())
    assert "| before |" in section and "| after |" in section
    assert (tmp_path / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
