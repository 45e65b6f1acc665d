import copy
import dataclasses
import inspect
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from ssd_tutorial.anchors import config_from_scales, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.checkpoint import load_model
from ssd_tutorial.cli import main
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import collate, eval_transforms
from ssd_tutorial.detector import Detector
from ssd_tutorial.export import (
    DEFAULT_OPSET,
    DETECTION_OUTPUTS,
    FORMAT_KEY,
    OnnxSSD,
    Postprocessing,
    export_onnx,
    postprocess_graph,
)
from ssd_tutorial.model import SSD, TORCHVISION_MEAN, TORCHVISION_STD, build_ssd
from ssd_tutorial.onnx_detect import THRESHOLD_INPUTS
from ssd_tutorial.postprocess import Detections, detect
from ssd_tutorial.train import TrainConfig, Trainer

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
    assert_same_results(found, expected)


def assert_same_results(found, expected):
    """Two lists of DetectionResult agree: names, sizes and labels exactly, scores and pixel
    boxes to float32 rounding."""
    for a, b in zip(found, expected, strict=True):
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


# --- post-processing in the graph ---------------------------------------------------------------

#: Options whose caps bind on the inputs below: a few candidates per class, fewer detections.
SMALL_CAPS = Postprocessing(candidates_per_class=10, top_k=15)


def assert_same_detections(found: list[Detections], expected: list[Detections]) -> None:
    """The same detections in the same order: labels exactly, scores to 1e-5, boxes to 1e-4.

    Detections whose scores are closer than the scores' tolerance may come out in either order
    (a rounding difference between the two runtimes swaps them), so within such a run of near
    ties the detections are compared as sets.
    """
    score_tolerance = 1e-5
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=score_tolerance)
        apart = (b.scores[:-1] - b.scores[1:]).abs() > score_tolerance
        runs = torch.cat([torch.zeros(1, dtype=torch.long), apart.long().cumsum(0)])[
            : len(b.scores)
        ]
        for run in runs.unique():
            members = runs == run
            ours, theirs = (
                sorted(zip(d.labels[members].tolist(), d.boxes[members].tolist())) for d in (a, b)
            )
            assert [label for label, _ in ours] == [label for label, _ in theirs]
            torch.testing.assert_close(
                torch.tensor([box for _, box in ours]).reshape(-1, 4),
                torch.tensor([box for _, box in theirs]).reshape(-1, 4),
                rtol=0,
                atol=1e-4,
            )


def run_postprocess_graph(
    loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, settings: Postprocessing
) -> dict[str, np.ndarray]:
    """The padded outputs of :func:`postprocess_graph` run by onnxruntime."""
    return run_session(postprocess_session(priors, conf.shape[2], settings), loc, conf)


def postprocess_session(
    priors: torch.Tensor, num_classes: int, settings: Postprocessing, threshold_inputs=False
) -> onnxruntime.InferenceSession:
    proto = postprocess_graph(priors, num_classes, settings, threshold_inputs=threshold_inputs)
    return onnxruntime.InferenceSession(proto.SerializeToString())


def run_session(
    session: onnxruntime.InferenceSession,
    loc: torch.Tensor,
    conf: torch.Tensor,
    thresholds: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """The padded outputs of a post-processing graph; ``thresholds`` (score, IoU) are fed to
    one built with ``threshold_inputs``, as float32 scalars."""
    feed = {"loc": loc.numpy(), "conf": conf.numpy()}
    if thresholds is not None:
        feed |= {k: np.array(v, np.float32) for k, v in zip(THRESHOLD_INPUTS, thresholds)}
    return dict(zip(DETECTION_OUTPUTS, session.run(list(DETECTION_OUTPUTS), feed)))


def unpadded(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """Each image's first ``num_detections`` rows, after checking the rest is zeros."""
    found = []
    for image, count in enumerate(outputs["num_detections"].tolist()):
        rows = [torch.from_numpy(outputs[name][image]) for name in ("boxes", "scores", "labels")]
        assert all(not t[count:].any() for t in rows), "padding rows must be zeros"
        found.append(Detections(*(t[:count] for t in rows)))
    return found


def expected_detections(loc, conf, priors, settings: Postprocessing) -> list[Detections]:
    return detect(loc, conf, priors, *dataclasses.astuple(settings))


def random_outputs(num_priors: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Network outputs for three images: random; all background (nothing to detect); random
    with class 1 ahead of class 2, so that capping class 1's candidates changes the top-k.

    Random logits: no two scores are equal or within a few float32 steps of each other, and
    none is that close to a threshold, so the last-bit differences between PyTorch's and
    onnxruntime's softmax cannot reorder anything (equal scores: see the tie test).
    """
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(3, num_priors, 4, generator=generator) * 0.5
    conf = torch.randn(3, num_priors, len(NAMES), generator=generator) * 3
    conf[1, :, 0] += 30  # background everywhere: every score below 1e-10
    conf[2, :, 1] += 3
    return loc, conf


@pytest.mark.parametrize(
    "settings",
    [
        Postprocessing(),
        SMALL_CAPS,
        Postprocessing(0.3, 0.3, top_k=40, candidates_per_class=30, variances=(0.2, 0.3)),
    ],
)
def test_the_postprocess_graph_gives_detects_detections_on_random_outputs(tiny, settings):
    priors = default_boxes(tiny.config)
    loc, conf = random_outputs(len(priors), seed=4)
    outputs = run_postprocess_graph(loc, conf, priors, settings)
    expected = expected_detections(loc, conf, priors, settings)
    assert_same_detections(unpadded(outputs), expected)
    assert outputs["boxes"].shape == (3, settings.top_k, 4)
    assert outputs["boxes"].dtype == outputs["scores"].dtype == np.float32
    assert outputs["labels"].dtype == outputs["num_detections"].dtype == np.int64
    assert len(expected[1].labels) == 0  # the background image
    # every cap binds: more detections than top-k, and on the last image more candidates
    # of class 1 than the cap that would have made the top-k
    assert outputs["num_detections"].tolist() == [settings.top_k, 0, settings.top_k]
    uncapped = expected_detections(
        loc, conf, priors, dataclasses.replace(settings, candidates_per_class=len(priors))
    )
    assert uncapped[2].labels.tolist() != expected[2].labels.tolist()


def test_equal_scores_are_ranked_as_detect_ranks_them(tiny):
    # Ties in both runtimes: each row of logits is one of a few patterns, two of whose classes
    # tie. Equal logits give bitwise-equal scores in either runtime, but scores that are equal
    # only on paper (a pattern's logits in another order) can differ in the last bit in one
    # runtime and not in the other, and then no order is right: no pattern is another's
    # permutation.
    patterns = torch.tensor([[0.0, 2, 2, 1], [1, 3, 0, 3], [0, 1, 1, 1], [2, 0, 1, 0]])
    priors = default_boxes(tiny.config)
    generator = torch.Generator().manual_seed(5)
    conf = patterns[torch.randint(len(patterns), (2, len(priors)), generator=generator)]
    loc = torch.randn(2, len(priors), 4, generator=generator) * 0.5
    settings = Postprocessing(candidates_per_class=30, top_k=50)  # caps cut through ties
    expected = expected_detections(loc, conf, priors, settings)
    assert_same_detections(unpadded(run_postprocess_graph(loc, conf, priors, settings)), expected)
    scores = expected[0].scores.tolist()
    assert len(set(scores)) < len(scores) / 5  # mostly ties


def test_top_k_above_all_candidates_pads_every_image(tiny):
    priors = default_boxes(tiny.config)
    loc, conf = random_outputs(len(priors), seed=6)
    # more rows than the (C - 1) * P table holds: every candidate stays, then padding
    settings = Postprocessing(0.0, top_k=4000, candidates_per_class=2000)
    outputs = run_postprocess_graph(loc, conf, priors, settings)
    assert outputs["scores"].shape == (3, 4000)
    assert_same_detections(unpadded(outputs), expected_detections(loc, conf, priors, settings))


#: (score, IoU) thresholds that one graph with threshold inputs is run at: detect's defaults,
#: a stricter NMS, a higher score, none at all, and one above all scores but a few.
THRESHOLD_PAIRS = [(0.01, 0.45), (0.01, 0.1), (0.3, 0.45), (0.0, 1.0), (0.9, 0.0)]


def test_a_graph_with_threshold_inputs_gives_detects_detections_at_each_threshold(tiny, trained):
    """One graph, run at several thresholds, on random outputs (every cap binds) and on a
    trained model's (peaked scores); the options built in apply, bar the two thresholds."""
    priors = default_boxes(tiny.config)
    model, _ = trained
    with torch.no_grad():
        outputs = [random_outputs(len(priors), seed=7), model(parity_images())]
    settings = Postprocessing(0.7, 0.1, top_k=40, candidates_per_class=30)  # 0.7, 0.1 unused
    session = postprocess_session(priors, len(NAMES), settings, threshold_inputs=True)
    trained_session = postprocess_session(priors, len(CLASS_NAMES), settings, True)
    assert [i.name for i in session.get_inputs()] == ["loc", "conf", *THRESHOLD_INPUTS]
    counts = []
    for graph, (loc, conf) in zip((session, trained_session), outputs):
        for score, iou in THRESHOLD_PAIRS:
            options = dataclasses.replace(settings, conf_threshold=score, nms_threshold=iou)
            found = unpadded(run_session(graph, loc, conf, (score, iou)))
            assert_same_detections(found, expected_detections(loc, conf, priors, options))
            counts.append([len(d.labels) for d in found])
    # both thresholds fed matter: on the trained model's outputs, a stricter NMS or a higher
    # score threshold than detect's defaults finds fewer, no thresholds the most
    found = dict(zip(THRESHOLD_PAIRS, (sum(c) for c in counts[len(THRESHOLD_PAIRS) :])))
    assert found[0.0, 1.0] > found[0.01, 0.45] > max(found[0.01, 0.1], found[0.3, 0.45]) > 0


@pytest.fixture(scope="module")
def tiny_detections_onnx(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny_detections.onnx"
    return export_onnx(tiny, path, NAMES, postprocess=True)


def test_a_file_with_postprocess_gives_detects_detections(tiny, tiny_detections_onnx):
    runner = OnnxSSD(tiny_detections_onnx)
    assert runner.postprocess == Postprocessing()
    priors = default_boxes(tiny.config)
    for seed, batch in enumerate((1, 3)):
        x = images(batch, 128, seed)
        with torch.no_grad():
            expected = detect(*tiny(x), priors)
        assert sum(len(d.labels) for d in expected) > 0
        assert_same_detections(runner.detect(x), expected)


def test_the_graph_with_postprocess_has_padded_outputs_with_a_dynamic_batch_axis(
    tiny_detections_onnx,
):
    graph = onnx.load(tiny_detections_onnx).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [v.name for v in graph.input] == ["images"]
    assert [v.name for v in graph.output] == list(DETECTION_OUTPUTS)
    batch = dims(graph.input[0])[0]
    assert isinstance(batch, str) and batch
    assert [dims(v) for v in graph.output] == [[batch, 200, 4], [batch, 200], [batch, 200], [batch]]
    assert {n.op_type for n in graph.node} >= {"Softmax", "TopK", "NonMaxSuppression"}


STEPS = 30  # AdamW steps on one batch: confident scores, most boxes background


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[SSD, object]:
    """The tiny SSD after a short deterministic training on synthetic shapes, and its checkpoint.

    Unlike random weights it gives peaked scores: few candidates, mostly far below 0.01.
    """
    torch.manual_seed(0)
    data = SyntheticShapes(8, image_size=128, seed=3, transforms=eval_transforms(128))
    batch = collate([data[i] for i in range(len(data))])
    trainer = Trainer(
        build_ssd("ssd_tiny", len(CLASS_NAMES)),
        TrainConfig(optimizer="adamw", lr=3e-3),
        device="cpu",
        progress=False,
        class_names=CLASS_NAMES,
    )
    for _ in range(STEPS):
        trainer.train_step(batch)
    checkpoint = tmp_path_factory.mktemp("trained") / "last.pt"
    trainer.save_checkpoint(checkpoint)
    return trainer.model.eval(), checkpoint


def parity_images() -> torch.Tensor:
    """``[5, 3, 128, 128]``: four synthetic-shapes images and a blank one."""
    data = SyntheticShapes(4, image_size=128, seed=3, transforms=eval_transforms(128))
    return torch.cat([collate([data[i] for i in range(4)]).images, torch.zeros(1, 3, 128, 128)])


def assert_trained_parity(trained, path, settings: Postprocessing):
    """Export the trained model with ``settings``, check its detections against ``detect``'s
    on four synthetic-shapes images and a blank one; the network's outputs and those."""
    model, _ = trained
    x = parity_images()
    runner = OnnxSSD(export_onnx(model, path, postprocess=settings))
    priors = default_boxes(model.config)
    with torch.no_grad():
        loc, conf = model(x)
    expected = expected_detections(loc, conf, priors, settings)
    assert_same_detections(runner.detect(x), expected)
    return (loc, conf, priors), expected


def test_a_trained_model_with_postprocess_gives_detects_detections_caps_binding(trained, tmp_path):
    # at 0.01 the trained model has up to 20 candidates per class
    settings = Postprocessing(candidates_per_class=3, top_k=5)
    outputs, expected = assert_trained_parity(trained, tmp_path / "caps.onnx", settings)
    assert max(len(d.labels) for d in expected) == settings.top_k
    uncapped = detect(*outputs, top_k=settings.top_k)  # 200 candidates per class
    assert [d.scores.tolist() for d in uncapped] != [d.scores.tolist() for d in expected]


def test_a_trained_model_with_postprocess_finds_nothing_on_a_blank_image(trained, tmp_path):
    # The threshold goes halfway between the blank image's best score and the lowest best score
    # of the four training images (their exact values depend on the number of threads).
    model, _ = trained
    x = parity_images()
    with torch.no_grad():
        best = model(x)[1].softmax(dim=-1)[..., 1:].flatten(1).max(dim=1).values
    assert best[4] < best[:4].min()
    settings = Postprocessing(conf_threshold=float(best[4] + best[:4].min()) / 2)
    _, expected = assert_trained_parity(trained, tmp_path / "blank.onnx", settings)
    assert [len(d.labels) > 0 for d in expected] == [True] * 4 + [False]


def test_metadata_says_which_outputs_a_file_has_and_the_options_built_in(
    tiny_onnx, tiny_detections_onnx, tmp_path
):
    def metadata(path):
        return {entry.key: entry.value for entry in onnx.load(path).metadata_props}

    assert metadata(tiny_onnx)["outputs"] == "raw" and OnnxSSD(tiny_onnx).postprocess is None
    built_in = metadata(tiny_detections_onnx)
    assert built_in["outputs"] == "detections"
    assert (built_in["conf_threshold"], built_in["nms_threshold"]) == ("0.01", "0.45")
    assert (built_in["top_k"], built_in["candidates_per_class"]) == ("200", "200")
    assert json.loads(built_in["variances"]) == [0.1, 0.2]

    proto = onnx.load(tiny_onnx)
    entries = [e for e in proto.metadata_props if e.key != "outputs"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(entries)  # as written before files said their kind
    onnx.save(proto, tmp_path / "older.onnx")
    assert OnnxSSD(tmp_path / "older.onnx").postprocess is None

    proto.metadata_props.add(key="outputs", value="masks")
    onnx.save(proto, tmp_path / "masks.onnx")
    with pytest.raises(ValueError, match=r"outputs are 'masks'; .* reads 'raw' and 'detections'"):
        OnnxSSD(tmp_path / "masks.onnx")


def test_each_kind_of_file_names_the_call_it_needs(tiny_onnx, tiny_detections_onnx):
    x = images(1, 128, seed=0)
    with pytest.raises(ValueError, match=r"outputs detections .* call \.detect\(images\)"):
        OnnxSSD(tiny_detections_onnx)(x)
    with pytest.raises(
        ValueError, match=r"outputs loc and conf .* run ssd_tutorial\.postprocess\.detect"
    ):
        OnnxSSD(tiny_onnx).detect(x)
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\] .* got \[1, 3, 64, 64\]"):
        OnnxSSD(tiny_detections_onnx).detect(torch.zeros(1, 3, 64, 64))


def test_detector_on_a_file_with_postprocess_finds_what_it_finds_on_pytorch(
    tiny, tiny_detections_onnx, picture
):
    for options in ({"conf_threshold": 0.05}, {"conf_threshold": 0.2, "top_k": 7}):
        expected = Detector(tiny, NAMES, **options)([picture, picture[:60]])
        found = Detector.from_onnx(tiny_detections_onnx, **options)([picture, picture[:60]])
        assert sum(len(r.boxes) for r in expected) > 5
        assert_same_results(found, expected)


def test_detector_takes_its_defaults_from_the_options_built_in(tiny, tmp_path):
    settings = Postprocessing(conf_threshold=0.4, nms_threshold=0.5, top_k=20)
    path = export_onnx(tiny, tmp_path / "built_in.onnx", postprocess=settings)
    detector = Detector.from_onnx(path)
    assert (detector.conf_threshold, detector.nms_threshold, detector.top_k) == (0.4, 0.5, 20)
    runner = OnnxSSD(path)
    for options, message in [
        ({"conf_threshold": 0.3}, r"conf_threshold must be at least 0.4, .* got 0.3"),
        ({"conf_threshold": 0.5}, r"nms_threshold must be 0.5, .* runs the NMS\), got 0.45"),
        ({"conf_threshold": 0.5, "nms_threshold": 0.5}, r"top_k must be at most 20, .* got 200"),
    ]:
        with pytest.raises(ValueError, match=message):
            Detector(runner, NAMES, **options)


def test_postprocessing_defaults_are_those_of_detect():
    defaults = inspect.signature(detect).parameters
    for name, value in vars(Postprocessing()).items():
        assert value == defaults[name].default, name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conf_threshold": 1.0}, r"conf_threshold must be in \[0, 1\), got 1.0"),
        ({"nms_threshold": -0.1}, r"nms_threshold must be in \[0, 1\], got -0.1"),
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"candidates_per_class": 0}, "candidates_per_class must be at least 1, got 0"),
    ],
)
def test_postprocess_options_out_of_range_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Postprocessing(**options)


def test_an_opset_that_onnxruntime_cannot_run_is_named(tiny, tmp_path, monkeypatch):
    def older_onnxruntime(model, providers):
        raise RuntimeError("Opset 20 is under development and support for this is limited")

    monkeypatch.setattr(onnxruntime, "InferenceSession", older_onnxruntime)
    path = tmp_path / "new.onnx"
    with pytest.raises(ValueError, match=r"onnxruntime .* cannot run .* at opset 20 \(Opset 20 is"):
        export_onnx(tiny, path, opset=20, postprocess=True)
    assert not path.exists()


def test_cli_exports_both_kinds_and_detects_with_either(trained, tmp_path, capsys, picture):
    model, checkpoint = trained
    image = tmp_path / "shapes.png"
    Image.fromarray(picture).save(image)
    expected = Detector(model, CLASS_NAMES, conf_threshold=0.05)(image).to_dicts()
    assert len(expected) > 0
    for kind, flags, outputs in [
        ("raw", [], "loc [B, 1524, 4], conf [B, 1524, 9]"),
        ("detections", ["--with-postprocess"], "boxes [B, 200, 4], scores [B, 200], labels"),
    ]:
        onnx_file = tmp_path / f"{kind}.onnx"
        code, out, err = run(
            capsys, "export", "--checkpoint", checkpoint, "--output", onnx_file, *flags
        )
        assert code == 0, err
        assert f"-> {onnx_file} (opset 18): images [B, 3, 128, 128] -> {outputs}" in out
        assert OnnxSSD(onnx_file).class_names == CLASS_NAMES
        found = tmp_path / f"found_{kind}"
        code, _, err = run(
            capsys, "detect", image, "--onnx", onnx_file, "--out", found, "--threshold", "0.05"
        )
        assert code == 0, err
        report = json.loads((found / "detections.json").read_text())[str(image)]["detections"]
        assert len(report) == len(expected)
        for got, want in zip(report, expected):
            assert (got["name"], got["label"]) == (want["name"], want["label"])
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            assert got["box"] == pytest.approx(want["box"], abs=1e-3)
