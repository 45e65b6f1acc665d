import copy
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from ssd_tutorial.anchors import config_from_scales, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.cli import main
from ssd_tutorial.data.shapes import SyntheticShapes
from ssd_tutorial.detector import Detector
from ssd_tutorial.export import DEFAULT_OPSET, FORMAT_KEY, OnnxSSD, export_onnx
from ssd_tutorial.model import SSD, TORCHVISION_MEAN, TORCHVISION_STD, build_ssd
from ssd_tutorial.train import load_model

NAMES = ("background", "circle", "square")


def as_if_trained(model: SSD, seed: int) -> SSD:
    """``model`` with random head biases, as loaded weights would leave them (not all zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.head.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> SSD:
    torch.manual_seed(0)
    return as_if_trained(build_ssd("ssd_tiny", len(NAMES)), seed=1)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx", NAMES)


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    """A normalised-looking input batch ``[batch, 3, size, size]``."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(model: SSD, runner: OnnxSSD, batch_sizes: tuple[int, ...]) -> None:
    size, boxes = model.config.image_size, model.config.num_boxes
    for seed, batch in enumerate(batch_sizes):
        x = images(batch, size, seed)
        with torch.no_grad():
            expected_loc, expected_conf = model(x)
        loc, conf = runner(x)
        assert loc.shape == (batch, boxes, 4) and conf.shape == (batch, boxes, model.num_classes)
        assert loc.dtype == conf.dtype == torch.float32
        torch.testing.assert_close(loc, expected_loc, rtol=0, atol=1e-4)
        torch.testing.assert_close(conf, expected_conf, rtol=0, atol=1e-4)


def test_onnxruntime_gives_the_pytorch_outputs_at_any_batch_size(tiny, tiny_onnx):
    assert_same_outputs(tiny, OnnxSSD(tiny_onnx), batch_sizes=(1, 5))


def test_the_graph_has_a_dynamic_batch_axis_and_named_inputs_and_outputs(tiny_onnx):
    graph = onnx.load(tiny_onnx).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [v.name for v in graph.input] == ["images"]
    assert [v.name for v in graph.output] == ["loc", "conf"]
    batch = dims(graph.input[0])[0]
    assert isinstance(batch, str) and batch  # symbolic, not a number
    assert dims(graph.input[0]) == [batch, 3, 128, 128]
    assert dims(graph.output[0]) == [batch, 1524, 4]
    assert dims(graph.output[1]) == [batch, 1524, len(NAMES)]


@pytest.mark.slow
def test_ssd300_exports_too(tmp_path):
    torch.manual_seed(2)
    model = as_if_trained(build_ssd("ssd300", 4), seed=3)
    runner = OnnxSSD(export_onnx(model, tmp_path / "ssd300.onnx"))
    assert runner.class_names == ("class 0", "class 1", "class 2", "class 3")  # none given
    assert_same_outputs(model, runner, batch_sizes=(1, 2))


def opsets(proto: onnx.ModelProto) -> dict[str, int]:
    """Operator set version by domain (``""``: the standard ONNX operators)."""
    return {entry.domain: entry.version for entry in proto.opset_import}


def test_metadata_holds_what_running_the_file_alone_needs(tiny, tiny_onnx):
    proto = onnx.load(tiny_onnx)
    assert opsets(proto)[""] == DEFAULT_OPSET
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(metadata["class_names"]) == list(NAMES)
    assert metadata["image_size"] == "128" and metadata["architecture"] == "ssd_tiny"
    assert json.loads(metadata["image_mean"]) == list(tiny.image_mean)
    assert json.loads(metadata["anchor_config"])["feature_maps"] == [16, 8, 4, 2, 1]

    runner = OnnxSSD(tiny_onnx)
    assert runner.config == tiny.config
    assert torch.equal(default_boxes(runner.config), default_boxes(tiny.config))
    assert runner.class_names == NAMES and runner.num_classes == len(NAMES)
    assert (runner.image_mean, runner.image_std) == (tiny.image_mean, tiny.image_std)
    assert runner.architecture == "ssd_tiny"


def test_a_custom_model_round_trips_its_config_and_normalisation(tmp_path):
    config = config_from_scales(
        "custom", 128, (16, 8, 4, 2, 1), (0.13, 0.27, 0.41, 0.6, 0.77, 0.95),
        ((3,), (1.5, 2.5), (2,), (2,), (3,)),
    )  # fmt: skip
    model = SSD(tiny_features(), config, 5, TORCHVISION_MEAN, TORCHVISION_STD)
    # built by hand, so never trained: the flag says that is intended
    path = export_onnx(model, tmp_path / "custom.onnx", list("abcd"), allow_untrained=True)
    assert model.training  # exported in eval mode, its mode restored
    runner = OnnxSSD(path)
    assert runner.config == config
    assert torch.equal(default_boxes(runner.config), default_boxes(config))
    assert runner.image_mean == TORCHVISION_MEAN and runner.image_std == TORCHVISION_STD
    assert runner.architecture is None
    assert runner.class_names == ("background", "a", "b", "c", "d")  # background added
    assert_same_outputs(model.eval(), runner, batch_sizes=(2,))


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A synthetic-shapes picture that is neither square nor the network's size."""
    image, _ = SyntheticShapes(1, image_size=(90, 150), seed=5)[0]
    return image.permute(1, 2, 0).numpy()


def test_detector_on_the_onnx_model_finds_what_it_finds_on_pytorch(tiny, tiny_onnx, picture):
    expected = Detector(tiny, NAMES, conf_threshold=0.05)([picture, picture[:60]])
    found = Detector.from_onnx(tiny_onnx, conf_threshold=0.05)([picture, picture[:60]])
    assert sum(len(r.boxes) for r in expected) > 10
    for a, b in zip(found, expected):
        assert a.names == b.names and a.image_size == b.image_size
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=1e-3)  # pixels


def test_detector_takes_the_onnx_model_with_its_own_class_names(tiny_onnx, picture):
    runner = OnnxSSD(tiny_onnx)
    renamed = Detector(runner, ["ball", "box"], conf_threshold=0.05)(picture)
    default = Detector.from_onnx(tiny_onnx, conf_threshold=0.05)(picture)
    assert renamed.names == [{"circle": "ball", "square": "box"}[n] for n in default.names]
    with pytest.raises(ValueError, match=r"onnxruntime providers.* got 'cuda'"):
        Detector(runner, NAMES, device="cuda")


def test_an_untrained_model_is_refused_without_the_flag(tmp_path):
    path = tmp_path / "untrained.onnx"
    with pytest.raises(ValueError, match=r"never trained .* pass allow_untrained=True"):
        export_onnx(build_ssd("ssd_tiny", 3), path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (None, {"opset": 17}, "opset must be 18 or later .* got 17"),
        (None, {"opset": 99}, r"could not write opset 99 \(it wrote 18; .* knows opsets up to"),
        (None, {"class_names": ["a", "b", "c", "d"]}, "name the model's 3 classes .* got 4"),
        ("half", {}, r"float32 model \(model.float\(\)\), got parameters in torch.float16"),
    ],
)
def test_bad_export_arguments_are_named(tiny, tmp_path, change, kwargs, message):
    model = copy.deepcopy(tiny).half() if change == "half" else tiny
    with pytest.raises(ValueError, match=message):
        export_onnx(model, tmp_path / "bad.onnx", **kwargs)


def test_a_missing_or_foreign_file_is_named(tiny_onnx, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ONNX file at .*none\.onnx"):
        OnnxSSD(tmp_path / "none.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"notes\.onnx is not a readable ONNX model"):
        OnnxSSD(text)

    proto = onnx.load(tiny_onnx)
    del proto.metadata_props[:]  # an ONNX file from elsewhere: the network only
    onnx.save(proto, tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match=r"plain\.onnx has no ssd_tutorial metadata"):
        OnnxSSD(tmp_path / "plain.onnx")

    proto = onnx.load(tiny_onnx)
    next(e for e in proto.metadata_props if e.key == FORMAT_KEY).value = "99"
    onnx.save(proto, tmp_path / "future.onnx")
    with pytest.raises(ValueError, match=r"metadata version '99', .* reads '1'"):
        OnnxSSD(tmp_path / "future.onnx")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(1, 3, 300, 300), r"\[B, 3, 128, 128\] .* got \[1, 3, 300, 300\]"),
        (torch.zeros(3, 128, 128), r"\[B, 3, 128, 128\] .* got \[3, 128, 128\]"),
        (torch.zeros(2, 3, 128, 128, dtype=torch.uint8), "floating point and normalised"),
    ],
)
def test_the_runner_rejects_images_it_was_not_exported_for(tiny_onnx, x, message):
    with pytest.raises(ValueError, match=message):
        OnnxSSD(tiny_onnx)(x)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``ssd-tutorial ARGS`` in this process: exit code, stdout, stderr."""
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_exports_a_checkpoint_and_detects_with_it(tmp_path, capsys, picture):
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "--data", "synthetic", "--train-size", "4", "--batch-size", "4",
        "--max-steps", "1", "--no-eval", "--workers", "0", "--quiet", "--out", run_dir,
    )  # fmt: skip
    assert code == 0, err
    checkpoint = run_dir / "last.pt"

    onnx_file = tmp_path / "model.onnx"
    code, out, err = run(
        capsys, "export", "--checkpoint", checkpoint, "--output", onnx_file, "--opset", "20"
    )
    assert code == 0, err
    assert f"-> {onnx_file} (opset 20)" in out and "loc [B, 1524, 4]" in out
    assert opsets(onnx.load(onnx_file))[""] == 20
    model, class_names = load_model(checkpoint)
    assert OnnxSSD(onnx_file).class_names == class_names
    # one training step is enough for export_onnx to see trained heads, without the flag
    export_onnx(model, tmp_path / "python.onnx", class_names)

    image = tmp_path / "shapes.png"
    Image.fromarray(picture).save(image)
    code, _, err = run(
        capsys, "detect", image, "--onnx", onnx_file, "--out", tmp_path / "found",
        "--threshold", "0.01",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "found" / "detections.json").read_text())[str(image)]
    expected = Detector(model, class_names, conf_threshold=0.01)(image).to_dicts()
    assert len(report["detections"]) == len(expected) > 0
    for got, want in zip(report["detections"], expected):
        assert (got["name"], got["label"]) == (want["name"], want["label"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["box"] == pytest.approx(want["box"], abs=1e-3)

    code, out, _ = run(capsys, "export", "--checkpoint", checkpoint)  # default output name
    assert code == 0 and (run_dir / "last.onnx").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_onnx):
    code, _, err = run(capsys, "export", "--output", tmp_path / "x.onnx")
    assert code == 2 and "arguments are required: --checkpoint" in err
    code, _, err = run(capsys, "export", "--checkpoint", tmp_path / "none.pt")
    assert code == 1 and err == f"ssd-tutorial export: error: no checkpoint at {tmp_path}/none.pt\n"
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    code, _, err = run(capsys, "detect", image, "--onnx", tmp_path / "none.onnx")
    assert code == 1 and "error: no ONNX file at" in err
    code, _, err = run(capsys, "detect", image, "--onnx", image)
    assert code == 1 and "is not a readable ONNX model" in err
    code, _, err = run(capsys, "detect", image, "--onnx", tiny_onnx, "--device", "cuda")
    assert code == 1 and "device must be None or cpu" in err
