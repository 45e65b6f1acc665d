import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import pytest
import torch

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.detector import DISPLAY_THRESHOLD, DetectionResult, Detector
from ssd_tutorial.model import build_ssd
from ssd_tutorial.postprocess import Detections, detect
from ssd_tutorial.preprocess import preprocess
from ssd_tutorial.viz import PALETTE, draw_detections

NAMES = ("background", "cat", "dog")
HEIGHT, WIDTH = 72, 130  # not square, not the network's 128 x 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_ssd("ssd_tiny", len(NAMES)).eval()


@pytest.fixture(scope="module")
def detector(model):
    # A threshold low enough that the untrained network finds plenty.
    return Detector(model, NAMES, conf_threshold=0.05)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A smooth random RGB picture (smooth so that JPEG keeps it close)."""
    generator = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 6, 9, generator=generator)
    smooth = torch.nn.functional.interpolate(small, (HEIGHT, WIDTH), mode="bilinear")
    return (smooth[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def assert_same_result(a: DetectionResult, b: DetectionResult) -> None:
    assert a.image_size == b.image_size
    assert a.names == b.names
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.boxes, b.boxes)


def test_boxes_are_in_pixels_of_the_original_image(model, detector, image):
    result = detector(image)
    x = preprocess(torch.from_numpy(image).permute(2, 0, 1), 128, model.image_mean, model.image_std)
    with torch.no_grad():
        loc, conf = model(x)
    (expected,) = detect(loc, conf, default_boxes(model.config), conf_threshold=0.05)
    assert len(expected.boxes) > 10
    torch.testing.assert_close(result.boxes, expected.boxes * torch.tensor([130, 72, 130, 72]))
    torch.testing.assert_close(result.scores, expected.scores)
    assert torch.equal(result.labels, expected.labels)
    assert result.names == [NAMES[label] for label in expected.labels.tolist()]
    assert result.image_size == (HEIGHT, WIDTH)
    assert result.boxes.dtype == torch.float32


def test_every_accepted_image_form_gives_the_same_result(detector, image, tmp_path):
    png = tmp_path / "picture.png"
    PIL.Image.fromarray(image).save(png)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    expected = detector(tensor)
    for same in (tensor.float() / 255, image, PIL.Image.fromarray(image), str(png), png):
        assert_same_result(detector(same), expected)


def test_reads_jpeg_files(detector, image, tmp_path):
    path = tmp_path / "picture.jpg"
    PIL.Image.fromarray(image).save(path, quality=95)
    result = detector(path)
    assert result.image_size == (HEIGHT, WIDTH)
    assert len(result.boxes) > 0
    assert (result.boxes[:, 2] <= WIDTH).all() and (result.boxes[:, 3] <= HEIGHT).all()


def test_a_list_gives_one_result_per_image_in_its_own_pixels(detector, image):
    other = np.ascontiguousarray(image[:40, :50])
    results = detector([image, other])
    assert isinstance(results, list) and len(results) == 2
    assert_same_result(results[0], detector(image))
    assert_same_result(results[1], detector(other))
    assert results[1].image_size == (40, 50)
    batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2)
    assert len(detector(batch)) == 2


def test_class_names_may_leave_out_the_background(model, image):
    with_background = Detector(model, NAMES)(image)
    without = Detector(model, NAMES[1:])(image)
    assert without.names == with_background.names


def test_default_threshold_is_for_display(model, image):
    result = Detector(model, NAMES)(image)
    assert Detector(model, NAMES).conf_threshold == DISPLAY_THRESHOLD
    assert (result.scores > DISPLAY_THRESHOLD).all()


def test_runs_in_eval_mode_and_restores_training_mode(model, detector, image):
    expected = detector(image)
    model.train()
    try:
        assert_same_result(detector(image), expected)
        assert model.training
    finally:
        model.eval()


class Elsewhere:
    """Not an ``nn.Module``: all a detector needs of a network run elsewhere (as ONNX)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config, self.num_classes = model.config, model.num_classes
        self.image_mean, self.image_std = model.image_mean, model.image_std
        self.device = torch.device("cpu")

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)


def test_takes_any_network_with_the_model_attributes(model, detector, image):
    elsewhere = Detector(Elsewhere(model), NAMES, conf_threshold=0.05)
    assert elsewhere.device == torch.device("cpu")
    assert_same_result(elsewhere(image), detector(image))
    with pytest.raises(ValueError, match=r"device must be None or cpu, got 'cuda'"):
        Detector(Elsewhere(model), NAMES, device="cuda")


def test_to_dicts_is_json_ready(detector, image):
    result = detector(image)
    dicts = json.loads(json.dumps(result.to_dicts()))
    assert len(dicts) == len(result.boxes)
    first = dicts[0]
    assert first["name"] == result.names[0] and first["label"] == int(result.labels[0])
    assert first["score"] == pytest.approx(float(result.scores[0]))
    assert first["box"] == pytest.approx(result.boxes[0].tolist())


def test_missing_file_is_named(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*missing\.jpg"):
        detector(tmp_path / "missing.jpg")


def test_a_file_that_is_not_an_image_is_named(detector, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(ValueError, match=r"image file .*notes\.jpg could not be decoded"):
        detector(str(path))


def test_a_truncated_image_file_is_named(detector, image, tmp_path):
    path = tmp_path / "cut.jpg"
    PIL.Image.fromarray(image).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ValueError, match=r"image file .*cut\.jpg could not be decoded"):
        detector(path)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((20, 30), np.uint8), ValueError, r"RGB with shape \[H, W, 3\], got \[20, 30\]"),
        (np.zeros((20, 30, 4), np.uint8), ValueError, "convert grayscale or RGBA"),
        (torch.zeros(4, 20, 30), ValueError, r"RGB \[3, H, W\], got \[4, 20, 30\]"),
        (torch.zeros(20, 30, 3), ValueError, r"channels first: permute\(2, 0, 1\)"),
        (torch.zeros(3, 0, 30), ValueError, "the image is empty"),
        (torch.full((3, 20, 30), 255.0), ValueError, r"values in \[0, 1\], got \[255, 255\]"),
        (torch.zeros(3, 20, 30, dtype=torch.int32), ValueError, "uint8 or floating point"),
        (42, TypeError, "a file path, a PIL image, .* got int"),
    ],
)
def test_rejects_what_is_not_an_image(detector, image, error, message):
    with pytest.raises(error, match=message):
        detector(image)


def test_class_names_must_fit_the_model(model):
    with pytest.raises(ValueError, match=r"name the model's 3 classes .* got 5 names"):
        Detector(model, ["a", "b", "c", "d", "e"])


def test_draw_detections_labels_each_box_with_name_and_score(detector, image):
    result = detector(image)
    ax = draw_detections(None, image, result)
    try:
        assert len(ax.patches) == len(result.boxes)
        assert ax.texts[0].get_text() == f"{result.names[0]} {float(result.scores[0]):.2f}"
        colors = {p.get_edgecolor() for p, label in zip(ax.patches, result.labels) if label == 1}
        assert colors == {matplotlib.colors.to_rgba(PALETTE[0])}
    finally:
        plt.close(ax.figure)


def test_draw_detections_uses_class_names_for_plain_detections(detector, image):
    result = detector(image)
    plain = Detections(result.boxes, result.scores, result.labels)
    _, ax = plt.subplots()
    try:
        assert draw_detections(ax, PIL.Image.fromarray(image), plain, NAMES) is ax
        assert ax.texts[0].get_text() == f"{result.names[0]} {float(result.scores[0]):.2f}"
    finally:
        plt.close(ax.figure)
