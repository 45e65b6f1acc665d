import functools
import importlib.util
import os
import shutil
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests run on shared 2-core CI machines: no per-example deadline.
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The benchmarks folder is not a package: its scripts import their shared ``timing`` module,
# and the tests import it too, by its folder on the path.
sys.path.append(str(BENCHMARKS))


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/{name}.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@functools.cache
def online() -> bool:
    """Whether torchvision's weight server answers (the build machines have no internet)."""
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def pytest_runtest_setup(item):
    if item.get_closest_marker("internet") and not online():
        pytest.skip("offline: the test downloads weights from download.pytorch.org")


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium, through Playwright (browser tests only)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed (make browser-deps installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


# Known messages of the theme itself, not of this book: sphinx-book-theme's colour-mode reset,
# and sphinx-thebe's config script that Jupyter Book 1 includes twice on every page.
THEME_MESSAGES = ("Got invalid theme mode", "Identifier 'THEBE_JS_URL' has already been declared")


class Page:
    """A page opened offline, with the JS errors and blocked requests it produced.

    ``address`` is a file, or the URL of a page that a local server serves; requests to
    addresses that do not start with ``allow`` (by default: any file) are blocked.
    """

    def __init__(self, browser, address: Path | str, allow: str = "file://"):
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.allow = allow
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.route("**/*", self._offline)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(address.as_uri() if isinstance(address, Path) else address)
        self.page.wait_for_load_state("load")

    def _offline(self, route) -> None:
        if route.request.url.startswith(self.allow):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def our_errors(self) -> list[str]:
        return [e for e in self.errors if not any(m in e for m in THEME_MESSAGES)]


@pytest.fixture
def open_page(browser):
    """``open_page(path)``: a :class:`Page` of a file, closed after the test."""
    pages = []

    def open_(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]

    yield open_
    for page in pages:
        page.page.close()


# --- ground truth (test_matching, test_loss) ------------------------------------------------------


def random_batch(
    generator: torch.Generator,
    num_images: int,
    max_objects: int = 20,
    min_size: float = 0.01,
    num_classes: int = 21,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images with 0..max_objects objects of varied sizes, inside the image.

    Returns:
        ``(boxes, labels)``: per image, relative corner-form boxes ``[n_i, 4]`` with sides from
        ``min_size`` to ``min_size + 0.6`` (clamped to the image), and labels
        ``1..num_classes - 1`` ``[n_i]``.
    """
    counts = torch.randint(0, max_objects + 1, (num_images,), generator=generator).tolist()
    boxes, labels = [], []
    for n in counts:
        center = torch.rand(n, 2, generator=generator)
        size = torch.rand(n, 2, generator=generator) * 0.6 + min_size
        boxes.append(torch.cat((center - size / 2, center + size / 2), dim=1).clamp(0, 1))
        labels.append(torch.randint(1, num_classes, (n,), generator=generator))
    return boxes, labels


# --- evaluation inputs (test_metrics, test_cocoeval) ----------------------------------------------

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
C = [40.0, 0.0, 50.0, 10.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def det(boxes, scores, labels=None):
    """One image's detections as a dict; every label 1 unless given."""
    labels = [1] * len(boxes) if labels is None else labels
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def tgt(boxes, labels=None, **flags):
    """One image's ground truth as a dict, with optional per-object flags (``difficult``)."""
    labels = [1] * len(boxes) if labels is None else labels
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    target.update({k: torch.tensor(v, dtype=torch.bool) for k, v in flags.items()})
    return target


def random_scenes(rng, num_images, num_classes=4, pixel_size=100.0, difficult=False):
    """Clustered, overlapping objects; jittered and duplicated detections; random misses.

    Scores are float64 and distinct, so the ranking has no ties.
    """
    detections, targets = [], []
    for _ in range(num_images):
        gt_boxes, gt_labels = [], []
        for _ in range(rng.randint(0, 3)):  # clusters of overlapping objects
            cx, cy = rng.uniform(0.2, 0.8) * pixel_size, rng.uniform(0.2, 0.8) * pixel_size
            for _ in range(rng.randint(1, 4)):
                w, h = (rng.uniform(0.02, 0.5) * pixel_size for _ in range(2))
                x, y = cx + rng.uniform(-0.1, 0.1) * w, cy + rng.uniform(-0.1, 0.1) * h
                gt_boxes.append([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
                gt_labels.append(rng.randint(1, 2) if rng.random() < 0.7 else rng.randint(1, 3))
        det_boxes, det_labels = [], []
        for box, label in zip(gt_boxes, gt_labels):
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                w, h = box[2] - box[0], box[3] - box[1]
                jitter = [rng.gauss(0, 0.15) * s for s in (w, h, w, h)]
                x1, y1, x2, y2 = (c + j for c, j in zip(box, jitter))
                det_boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
                det_labels.append(label if rng.random() < 0.85 else rng.randint(1, num_classes - 1))
        for _ in range(rng.randint(0, 4)):  # background false positives
            x, y = rng.uniform(0, 0.9) * pixel_size, rng.uniform(0, 0.9) * pixel_size
            s = rng.uniform(0.01, 0.3) * pixel_size
            det_boxes.append([x, y, x + s, y + s])
            det_labels.append(rng.randint(1, num_classes - 1))
        scores = [rng.random() for _ in det_boxes]
        detections.append(
            {
                "boxes": torch.tensor(det_boxes, dtype=torch.float64).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float64),
                "labels": torch.tensor(det_labels, dtype=torch.int64),
            }
        )
        target = {
            "boxes": torch.tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor(gt_labels, dtype=torch.int64),
        }
        if difficult:
            target["difficult"] = torch.tensor(
                [rng.random() < 0.2 for _ in gt_boxes], dtype=torch.bool
            )
        targets.append(target)
    return detections, targets


# --- training (test_train, test_checkpoint) ------------------------------------------------------


def tiny_trainer(config, **kwargs):
    """A CPU :class:`~ssd_tutorial.train.Trainer` of ``ssd_tiny`` on the shapes' classes, with
    the same initial weights every time."""
    from ssd_tutorial.data.shapes import CLASS_NAMES
    from ssd_tutorial.model import build_ssd
    from ssd_tutorial.train import Trainer

    torch.manual_seed(0)
    return Trainer(
        build_ssd("ssd_tiny", len(CLASS_NAMES)), config, device="cpu", progress=False, **kwargs
    )
