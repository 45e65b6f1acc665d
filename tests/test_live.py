"""The live detector page: the files the book build writes for it, and the page in Chromium.

The browser tests read the built book (``make test`` builds ``_build/html`` first) and serve it
with Python's ``http.server`` on the loopback address, as a reader would; every other request
is blocked.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import threading
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from test_export import as_if_trained, assert_same_detections, run_session, unpadded

from conftest import Page
from ssd_tutorial import live
from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.data.catalog import open_dataset
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.detector import Detector
from ssd_tutorial.export import OnnxSSD
from ssd_tutorial.model import build_ssd
from ssd_tutorial.postprocess import Detections, detect
from ssd_tutorial.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


@pytest.fixture
def runtime_dir(tmp_path) -> Path:
    """A stand-in for onnxruntime-web's ``dist``: the page's files and one it does not need."""
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in (*live.RUNTIME_FILES, "ort.webgpu.min.js"):
        (dist / name).write_bytes(name.encode() * 3)
    return dist


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return as_if_trained(build_ssd("ssd_tiny", len(CLASS_NAMES)), seed=1)


def test_write_assets_writes_the_files_the_page_loads(model, runtime_dir, tmp_path):
    out = tmp_path / "live"
    written = live.write_assets(out, model, CLASS_NAMES, runtime_dir, num_samples=3)
    samples = [f"samples/shapes_{i}.png" for i in range(3)]
    expected = {"network.onnx", "postprocess.onnx", *samples, "live_detector.js", "live.json"}
    assert {str(p.relative_to(out)) for p in written} == expected | set(live.RUNTIME_FILES)
    assert sorted(p.relative_to(out) for p in out.rglob("*.*")) == sorted(
        p.relative_to(out) for p in written
    )  # nothing else: the runtime's other builds stay out of the book
    for name in live.RUNTIME_FILES:
        assert (out / name).read_bytes() == (runtime_dir / name).read_bytes()
    script = resources.files("ssd_tutorial").joinpath("live_detector.js").read_text()
    assert (out / "live_detector.js").read_text() == script

    config = json.loads((out / "live.json").read_text())
    assert config["samples"] == samples
    assert (config["imageSize"], config["classNames"]) == (128, list(CLASS_NAMES))
    assert (tuple(config["mean"]), tuple(config["std"])) == (model.image_mean, model.image_std)
    assert (config["scoreThreshold"], config["nmsThreshold"]) == (0.3, 0.45)
    assert len(config["colors"]) == 9 and all(c.startswith("#") for c in config["colors"])
    # the validation images as they are, at the network's size
    validation = open_dataset("synthetic", "val", length=3, image_size=128)
    for index, sample in enumerate(samples):
        pixels = torch.from_numpy(np.array(Image.open(out / sample))).permute(2, 0, 1)
        assert torch.equal(pixels, validation[index][0])


def test_the_two_onnx_files_give_the_models_detections_at_any_threshold(
    model, runtime_dir, tmp_path
):
    out = tmp_path / "live"
    live.write_assets(out, model, CLASS_NAMES, runtime_dir, num_samples=2)
    x = torch.cat(
        [sample_input(out, 0, model.image_mean, model.image_std), torch.zeros(1, 3, 128, 128)]
    )
    loc, conf = OnnxSSD(out / "network.onnx")(x)
    with torch.no_grad():
        expected_loc, expected_conf = model(x)
    torch.testing.assert_close(loc, expected_loc, rtol=0, atol=1e-4)
    torch.testing.assert_close(conf, expected_conf, rtol=0, atol=1e-4)
    session = onnxruntime.InferenceSession(str(out / "postprocess.onnx"))
    priors = default_boxes(model.config)
    for score, iou in [(0.3, 0.45), (0.05, 0.2), (0.6, 0.9)]:
        found = unpadded(run_session(session, loc, conf, (score, iou)))
        assert_same_detections(found, detect(loc, conf, priors, score, iou))


def sample_input(out: Path, index: int, mean, std) -> torch.Tensor:
    """``[1, 3, 128, 128]``: the package's preprocessing of sample ``index``'s PNG file."""
    pixels = torch.from_numpy(np.array(Image.open(out / f"samples/shapes_{index}.png")))
    return preprocess(pixels.permute(2, 0, 1), 128, tuple(mean), tuple(std))


def test_missing_runtime_files_are_named_with_the_command_that_installs_them(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ort.wasm.min.js, .* not in .*: .*`npm ci`"):
        live.write_assets(tmp_path / "live", model, CLASS_NAMES, tmp_path)


def test_the_book_build_needs_the_chapters_model(runtime_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TUTORIAL_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"no trained model at .*empty.*: run the chapters"):
        live.write_book_assets(tmp_path / "live", runtime_dir)


def test_the_sphinx_extension_writes_the_files_when_an_html_build_succeeds(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "live_detector", ROOT / "book" / "_ext" / "live_detector.py"
    )
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    calls = []
    monkeypatch.setattr(live, "write_book_assets", lambda *args: calls.append(args) or [])

    app = SimpleNamespace(outdir=str(tmp_path), builder=SimpleNamespace(format="html"))
    extension.write_live_files(app, RuntimeError("the build failed"))
    assert calls == []
    extension.write_live_files(app, None)
    assert calls == [(tmp_path / "_static" / "live", ROOT / "node_modules/onnxruntime-web/dist")]
    app.builder.format = "latex"
    extension.write_live_files(app, None)
    assert len(calls) == 1


# --- the page in Chromium -----------------------------------------------------------------------

LIVE = HTML / "_static" / "live"


@pytest.fixture(scope="module")
def server():
    """The built book served by ``http.server`` on 127.0.0.1 at a free port: its base URL."""
    assert (LIVE / "live.json").exists(), "build the book first (make test does)"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def reference():
    """The Python side: the page's two files run by onnxruntime, and its config."""
    config = json.loads((LIVE / "live.json").read_text())
    network = OnnxSSD(LIVE / "network.onnx")
    postprocess = onnxruntime.InferenceSession(str(LIVE / "postprocess.onnx"))
    return config, network, postprocess


@pytest.fixture(scope="module")
def live_page(browser, server):
    page = Page(browser, f"{server}/book/live_detector.html", allow=server)
    page.page.wait_for_function("() => window.ssdLive && window.ssdLive.chooseSample")
    yield page
    page.page.close()


def page_state(page: Page) -> dict:
    """Once the page's queued work is done: its input tensor, thresholds and detections."""
    page.page.evaluate("() => window.ssdLive.idle()")
    return page.page.evaluate(
        """() => { const s = window.ssdLive;
            return {input: Array.from(s.input), imageSize: s.imageSize, thresholds: s.thresholds,
                    detections: s.detections, networkRuns: s.networkRuns,
                    postprocessRuns: s.postprocessRuns}; }"""
    )


def choose_sample(page: Page, index: int) -> dict:
    """Click sample ``index`` and wait for its detections: :func:`page_state`."""
    runs = page.page.evaluate("() => window.ssdLive.networkRuns")
    page.page.click(f"[data-sample='{index}']")
    page.page.wait_for_function(f"() => window.ssdLive.networkRuns > {runs}")
    return page_state(page)


def assert_page_detections_are_pythons(state: dict, reference) -> list[Detections]:
    """The page's detections equal onnxruntime's in Python on the page's own input tensor, and
    so ``postprocess.detect``'s on the same network outputs, at the thresholds the page fed."""
    config, network, postprocess = reference
    size = config["imageSize"]
    x = torch.tensor(state["input"], dtype=torch.float32).reshape(1, 3, size, size)
    loc, conf = network(x)
    thresholds = (state["thresholds"]["score"], state["thresholds"]["iou"])
    expected = unpadded(run_session(postprocess, loc, conf, thresholds))
    found = Detections(
        boxes=torch.tensor([d["box"] for d in state["detections"]]).reshape(-1, 4),
        scores=torch.tensor([d["score"] for d in state["detections"]]),
        labels=torch.tensor([d["label"] for d in state["detections"]], dtype=torch.int64),
    )
    assert found.labels.tolist() == expected[0].labels.tolist()
    torch.testing.assert_close(found.scores, expected[0].scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(found.boxes, expected[0].boxes, rtol=0, atol=1e-3)
    # float32 thresholds, as the page fed them
    threshold32 = [float(np.float32(t)) for t in thresholds]
    package = detect(loc, conf, default_boxes(network.config), *threshold32)[0]
    assert_same_detections([found], [package])
    assert [d["name"] for d in state["detections"]] == [
        config["classNames"][k] for k in found.labels.tolist()
    ]
    return expected


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_detects_on_the_samples_as_onnxruntime_does_and_sliders_rerun_nms_only(
    live_page, reference
):
    """ "Same image": the sample's PNG file; the page's input tensor equals the package's
    ``preprocess`` of it (to 1e-5), and its detections equal Python's on that tensor."""
    config = reference[0]
    page = live_page.page
    counts = []
    for index in range(len(config["samples"])):
        state = choose_sample(live_page, index)
        x = sample_input(LIVE, index, config["mean"], config["std"])
        page_input = torch.tensor(state["input"]).reshape(x.shape)
        torch.testing.assert_close(page_input, x, rtol=0, atol=1e-5)
        assert state["thresholds"] == {"score": 0.3, "iou": 0.45}  # the sliders' start
        counts.append(len(assert_page_detections_are_pythons(state, reference)[0].labels))
    assert sum(counts) >= len(counts)  # a trained model: objects found, on most images

    state = choose_sample(live_page, counts.index(max(counts)))

    # Each slider reruns the post-processing graph alone, at the value it shows: a lower score
    # finds more, a stricter NMS or a higher score fewer.
    before = state
    for role, value, change in (("score", "0.02", +1), ("iou", "0.1", -1), ("score", "0.6", -1)):
        page.locator(f"[data-role={role}]").fill(value)
        state = page_state(live_page)
        assert state["thresholds"][role] == float(value)
        assert page.locator(f"[data-role={role}-value]").inner_text() == f"{float(value):.2f}"
        assert state["networkRuns"] == before["networkRuns"]
        assert state["postprocessRuns"] > before["postprocessRuns"]
        assert_page_detections_are_pythons(state, reference)
        found, earlier = len(state["detections"]), len(before["detections"])
        assert (found - earlier) * change > 0, (role, value, earlier, found)
        before = state
    # and across the range, at low scores, where NMS has the most to do
    for score in ("0.01", "0.1"):
        page.locator("[data-role=score]").fill(score)
        for iou in ("0.2", "0.3", "0.5", "0.6", "0.7", "0.8", "0.9", "1"):
            page.locator("[data-role=iou]").fill(iou)
            state = page_state(live_page)
            assert state["thresholds"] == {"score": float(score), "iou": float(iou)}
            assert_page_detections_are_pythons(state, reference)
    shown = page.locator("[data-role=table] tbody tr").count()
    assert shown == len(state["detections"])
    assert live_page.blocked == [], f"the page needs the network: {live_page.blocked}"
    assert live_page.our_errors() == []


@pytest.mark.slow
@pytest.mark.browser
def test_an_uploaded_picture_of_another_size_is_resized_as_the_package_resizes(
    live_page, reference, tmp_path
):
    """ "Same image": a 90 x 150 PNG file; the page's tensor equals the package's
    ``preprocess`` (antialiased bilinear resize to 128 x 128) to 1e-4, its detections equal
    Python's on the page's tensor, and ``Detector``'s on the file, in relative coordinates."""
    config = reference[0]
    image, _ = SyntheticShapes(1, image_size=(90, 150), seed=5)[0]
    path = tmp_path / "wide.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    page = live_page.page
    page.locator("[data-role=score]").fill("0.3")
    page.locator("[data-role=iou]").fill("0.45")
    page.set_input_files("[data-role=upload]", str(path))
    page.wait_for_function("() => (window.ssdLive.imageSize || [])[1] === 150")
    state = page_state(live_page)
    assert state["imageSize"] == [90, 150]
    x = preprocess(image, 128, tuple(config["mean"]), tuple(config["std"]))
    torch.testing.assert_close(torch.tensor(state["input"]).reshape(x.shape), x, rtol=0, atol=1e-4)
    assert_page_detections_are_pythons(state, reference)
    result = Detector.from_onnx(LIVE / "network.onnx", conf_threshold=0.3)(path)
    assert [d["label"] for d in state["detections"]] == result.labels.tolist()
    relative = result.boxes / torch.tensor([150, 90, 150, 90])
    page_boxes = torch.tensor([d["box"] for d in state["detections"]]).reshape(-1, 4)
    torch.testing.assert_close(page_boxes, relative, rtol=0, atol=1e-3)
    assert live_page.blocked == [] and live_page.our_errors() == []


@pytest.mark.slow
@pytest.mark.browser
def test_the_network_time_per_image_in_the_browser(live_page):
    """Not a limit: the median time of the network on one image, printed for the record."""
    page = live_page.page
    choose_sample(live_page, 1)
    ms = page.evaluate("() => window.ssdLive.timeNetwork(20)")
    post = page.evaluate("() => window.ssdLive.postprocessMs")
    sizes = {p.name: p.stat().st_size for p in LIVE.iterdir() if p.is_file()}
    print(
        f"\nin Chromium: network {ms:.1f} ms per image (median of 20), "
        f"post-processing {post:.1f} ms"
    )
    print("files:", {name: f"{size / 2**20:.2f} MiB" for name, size in sorted(sizes.items())})
    assert ms > 0


@pytest.mark.slow
@pytest.mark.browser
def test_opened_from_disk_the_page_says_to_serve_it(browser):
    page = Page(browser, HTML / "book" / "live_detector.html")
    status = page.page.locator("#ssd-live [data-role=status]")
    page.page.wait_for_function(
        "() => document.querySelector('#ssd-live .ssd-live-error') !== null", timeout=20_000
    )
    assert "python -m http.server -d _build/html" in status.inner_text()
    assert "file://" in status.inner_text()
    assert page.blocked == []
    page.page.close()
