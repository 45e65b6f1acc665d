"""The built book as a reader sees it: headless Chromium, every non-local request blocked.

Runs after the book build (``make test`` builds ``_build/html`` first).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import Page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module", autouse=True)
def built_book():
    assert (HTML / "index.html").exists(), "build the book first (make test does)"


def chapter_page(chapter: Path) -> Path:
    return HTML / "notebooks" / f"{chapter.stem}.html"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_renders_offline_without_errors(browser, chapter):
    page = Page(browser, chapter_page(chapter))
    assert page.blocked == [], f"the page needs the network: {page.blocked}"
    assert page.our_errors() == []
    images = page.page.eval_on_selector_all(
        ".cell_output img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])"
    )
    assert images, "every chapter has at least one figure"
    broken = [src for src, width in images if width == 0]
    assert broken == [], f"figures that did not load: {broken}"
    # a Markdown table that a cell displays must arrive as a table, not as a paragraph of pipes
    pipes = page.page.eval_on_selector_all(
        ".cell_output p", "els => els.map(e => e.textContent).filter(t => t.trim().startsWith('|'))"
    )
    assert pipes == [], f"Markdown output rendered as text: {pipes}"
    # formulas are typeset by the vendored MathJax (SVG output)
    if page.page.locator(".math").count():
        # attached, not visible: a formula may sit in a closed exercise dropdown
        page.page.wait_for_selector("mjx-container svg", state="attached", timeout=10_000)
    page.page.close()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_colab_button_opens_this_chapter(browser, chapter):
    page = Page(browser, chapter_page(chapter))
    links = page.page.eval_on_selector_all(
        "a", "els => els.map(e => e.href).filter(h => h.includes('colab.research.google.com'))"
    )
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    expected = (
        f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{chapter.name}"
    )
    assert links == [expected]
    page.page.close()


def test_intro_page_lists_every_chapter(browser):
    page = Page(browser, HTML / "book" / "intro.html")
    nav = page.page.eval_on_selector_all(".bd-sidebar a", "els => els.map(e => e.href)")
    for chapter in CHAPTERS:
        assert any(href.endswith(f"notebooks/{chapter.stem}.html") for href in nav), chapter.stem
    assert page.our_errors() == []
    page.page.close()


@pytest.fixture(scope="module")
def explorer(browser):
    page = Page(browser, HTML / "notebooks" / "03_default_boxes.html")
    page.page.wait_for_selector(".ssd-explorer .default-box")
    yield page
    page.page.close()


def drawn_boxes(page: Page) -> list[list[float]]:
    return page.page.eval_on_selector_all(
        ".ssd-explorer .default-box",
        "els => els.map(e => ['x', 'y', 'width', 'height'].map(k => +e.getAttribute(k)))",
    )


def test_explorer_boxes_equal_the_package(explorer):
    import torch

    from ssd_tutorial import anchors
    from ssd_tutorial.explorer import config_json

    for config in anchors.CONFIGS.values():
        theirs = explorer.page.evaluate(
            "config => window.ssdExplorer.allBoxes(config)", config_json(config)
        )
        ours = anchors.default_boxes(config, dtype=torch.float64)
        torch.testing.assert_close(torch.tensor(theirs, dtype=torch.float64), ours)


def test_explorer_controls_change_the_drawing(explorer):
    page = explorer.page
    total = page.locator(".ssd-explorer [data-role=total]")
    assert total.inner_text() == "8732"
    first = drawn_boxes(explorer)
    assert len(first) == 4  # a 38x38 cell: two squares and ratio 2, 1/2

    page.select_option(".ssd-explorer [data-role=map]", "1")  # the 19x19 map, six boxes a cell
    on_19 = drawn_boxes(explorer)
    assert len(on_19) == 6 and on_19 != first

    page.locator(".ssd-explorer [data-role=col]").fill("3")  # move one column to the left
    moved = drawn_boxes(explorer)
    assert [v for b in moved for v in b[1:]] == pytest.approx([v for b in on_19 for v in b[1:]])
    assert all(m[0] < b[0] for m, b in zip(moved, on_19))

    page.locator(".ssd-explorer [data-role=ratio-3]").uncheck()  # drop ratios 3 and 1/3
    assert len(drawn_boxes(explorer)) == 4
    assert total.inner_text() == str(8732 - 2 * 19 * 19)

    matched = page.locator(".ssd-explorer [data-role=matched]")
    before = int(matched.inner_text())
    page.locator(".ssd-explorer [data-role=iou]").fill("0.3")
    assert int(matched.inner_text()) > before
    assert explorer.our_errors() == []


#: The chapters that show an explorer besides chapter 3's, and the kind of each.
EXPLORER_PAGES = {
    "05_matching": "matching",
    "06_loss_and_hard_negatives": "mining",
    "09_inference_and_nms": "nms",
    "10_evaluation": "ap",
    "12_what_accuracy_needs": "anchors",
}


@pytest.mark.parametrize("stem", EXPLORER_PAGES)
def test_every_explorer_of_the_book_draws_and_answers_a_control(browser, stem):
    """In the built page, offline: the explorer draws, says what it shows, and redraws when
    one of its sliders moves (tests/test_explorers.py checks each control and number)."""
    page = Page(browser, HTML / "notebooks" / f"{stem}.html")
    root = page.page.locator(".ssd-explorer").first
    root.wait_for(timeout=10_000)
    status = root.locator("[data-role=status]")

    def shown() -> tuple[str, str]:
        return status.inner_text(), root.locator("svg").first.inner_html()

    before = shown()
    assert before[0].strip(), "the status line says what the picture shows"
    sliders = root.locator("input[type=range]:enabled")
    assert sliders.count() > 0
    redrawn = False
    for k in range(sliders.count()):
        slider = sliders.nth(k)
        low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
        slider.fill(str(low + 0.8 * (high - low)))
        if shown() != before:
            redrawn = True
            break
    assert redrawn, "no slider changed the picture or the status line"
    assert page.blocked == [] and page.our_errors() == []
    page.page.close()
