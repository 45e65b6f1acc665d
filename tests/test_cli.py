import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import online
from ssd_tutorial import cli
from ssd_tutorial.data.loading import default_num_workers
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.photos import chelsea


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssd_tutorial.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_anchors_prints_the_table():
    result = run_cli("anchors", "--config", "SSD512")
    assert result.returncode == 0, result.stderr
    assert "24564 default boxes" in result.stdout
    assert "64x64" in result.stdout


def test_unknown_config_is_a_clear_error():
    result = run_cli("anchors", "--config", "SSD999")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(
    "command", [[], ["anchors"], ["train"], ["evaluate"], ["detect"], ["export"]]
)
def test_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: ssd-tutorial" in result.stdout


SMALL_RUN = ("--data", "synthetic", "--batch-size", "4", "--workers", "0", "--quiet")
TRAIN_RUN = (*SMALL_RUN, "--log-every", "1", "--train-size", "8", "--val-size", "8")


@pytest.mark.slow
def test_train_resume_and_evaluate_a_tiny_model(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", *TRAIN_RUN, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "mAP@0.5" in result.stdout
    assert (out / "last.pt").is_file() and (out / "train.csv").is_file()
    assert (out / "eval.csv").read_text().startswith("epoch,step,map,map_area")

    result = run_cli(
        "train", *TRAIN_RUN, "--epochs", "2", "--out", str(out),
        "--resume", str(out / "last.pt"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "at epoch 1, step 2" in result.stdout
    assert len((out / "eval.csv").read_text().splitlines()) == 3  # header + two epochs

    metrics = tmp_path / "metrics.json"
    result = run_cli(
        "evaluate", str(out / "last.pt"), *SMALL_RUN, "--val-size", "8", "--json", str(metrics)
    )
    assert result.returncode == 0, result.stderr
    assert "mAP (VOC07 11-point)" in result.stdout
    assert 0 <= json.loads(metrics.read_text())["map"] <= 1

    image = tmp_path / "shapes.png"
    Image.fromarray(SyntheticShapes(1, image_size=(90, 150))[0][0].permute(1, 2, 0).numpy()).save(
        image
    )
    detected = tmp_path / "detected"
    result = run_cli(
        "detect", str(image), "--checkpoint", str(out / "last.pt"), "--out", str(detected),
        "--threshold", "0.01",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((detected / "detections.json").read_text())[str(image)]
    assert report["image_size"] == [90, 150]
    assert report["detections"], "an untrained model passes a 0.01 threshold everywhere"
    for found in report["detections"]:
        assert found["name"] in CLASS_NAMES and found["score"] >= 0.01
        x1, y1, x2, y2 = found["box"]
        assert -150 < x1 < x2 < 300 and -90 < y1 < y2 < 180  # pixels, not relative
    assert Image.open(detected / "shapes.png").size == (150, 90)


def detect_the_cat_with_torchvision_weights(tmp_path):
    image = tmp_path / "cat.png"
    Image.fromarray(chelsea().image).save(image)
    result = run_cli("detect", str(image), "--torchvision-coco", "--out", str(tmp_path / "out"))
    return image, result


@pytest.mark.internet
def test_detect_with_torchvision_weights_finds_the_cat(tmp_path):
    image, result = detect_the_cat_with_torchvision_weights(tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detections.json").read_text())[str(image)]
    assert "cat" in [found["name"] for found in report["detections"]]


@pytest.mark.skipif(online(), reason="online: the download succeeds (the internet test runs)")
def test_detect_with_torchvision_weights_offline_says_why(tmp_path):
    _, result = detect_the_cat_with_torchvision_weights(tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not download" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect", "x.png", "--torchvision-coco", "--threshold", "1.5"], "must be in [0, 1)"),
        (["train", "--batch-size", "0", "--no-eval"], "the batch size must be >= 1, got 0"),
        (["train", "--milestones", "200", "100", "--no-eval"], "milestones must be increasing"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, args, message):
    result = run_cli(*args, "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.slow
def test_a_diverging_run_exits_naming_the_step(tmp_path):
    # AdamW at a rate of 1e8 sends the predictions to inf within a few steps.
    args = ("--train-size", "40", "--no-eval", "--epochs", "1", "--lr", "1e8")
    result = run_cli("train", *SMALL_RUN, *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"error: non-finite (loss|predictions) at step \d+ \(epoch 1\)", result.stderr)
    assert "lower the learning rate" in result.stderr
    assert not (tmp_path / "out" / "last.pt").exists()


def test_missing_files_are_clear_errors(tmp_path):
    result = run_cli("evaluate", str(tmp_path / "none.pt"))
    assert result.returncode == 1
    assert "no checkpoint at" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--data", "voc", "--root", str(tmp_path / "VOC2007"))
    assert result.returncode == 1
    assert "is not a directory" in result.stderr
    result = run_cli("detect", str(tmp_path / "none.jpg"), "--checkpoint", str(tmp_path / "x.pt"))
    assert result.returncode == 1 and "no checkpoint at" in result.stderr


@pytest.mark.slow
def test_train_and_evaluate_own_classes_in_the_voc_layout(tmp_path):
    from test_voc import write_voc

    images = {
        f"{i:03d}": (64, 64, [("kiwi", 5, 5, 40, 40, 0), ("plum", 30, 30, 60, 62, 0)])
        for i in range(4)
    }
    root = write_voc(tmp_path / "fruit", images=images, split="trainval")
    (root / "classes.txt").write_text("plum\nkiwi\n")
    data = ["--data", "voc", "--root", str(root), "--batch-size", "2", "--workers", "0"]
    out = tmp_path / "run"
    result = run_cli(
        "train", *data, "--classes", str(root / "classes.txt"), "--train-split", "trainval",
        "--val-split", "trainval", "--max-steps", "1", "--epochs", "1", "--out", str(out),
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # evaluate reads the annotations with the classes the checkpoint was trained on
    result = run_cli("evaluate", str(out / "last.pt"), *data, "--split", "trainval", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "plum" in result.stdout and "kiwi" in result.stdout
    result = run_cli("train", *data, "--classes", "plum,plum", "--out", str(out))
    assert result.returncode == 1 and "names a class twice" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ssd512", "ssdlite320"])
def test_the_other_architectures_train_and_evaluate_through_the_same_commands(tmp_path, model):
    run = (
        "--data",
        "synthetic",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--quiet",
        "--val-size",
        "2",
    )
    out = tmp_path / model
    result = run_cli(
        "train", *run, "--model", model, "--train-size", "2", "--max-steps", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    result = run_cli("evaluate", str(out / "last.pt"), *run)
    assert result.returncode == 0, result.stderr
    assert "mAP (VOC07 11-point)" in result.stdout


def test_the_loading_options_reach_the_loader():
    args = cli.build_parser().parse_args(
        ["evaluate", "x.pt", "--batch-size", "3", "--workers", "1", "--no-persistent-workers"]
    )
    data = list(range(6))
    loader = cli._loader(data, args, torch.device("cpu"))
    assert (loader.batch_size, loader.num_workers) == (3, 1)
    assert (loader.pin_memory, loader.persistent_workers) == (False, False)
    args = cli.build_parser().parse_args(["evaluate", "x.pt", "--pin-memory"])
    loader = cli._loader(data, args, torch.device("cpu"))
    assert loader.pin_memory and loader.num_workers == default_num_workers(1)
    assert loader.persistent_workers == (loader.num_workers > 0)
