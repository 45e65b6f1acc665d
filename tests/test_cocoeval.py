import random

import pytest
import torch

from conftest import A, det, random_scenes, tgt
from ssd_tutorial import cocoeval


def test_coco_metrics_of_perfect_detections():
    small, large = [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 200.0, 200.0]
    metrics = cocoeval.coco_metrics([det([small, large], [0.9, 0.8])], [tgt([small, large])])
    assert list(metrics) == list(cocoeval.COCO_STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["APm"] == -1.0  # no medium object: pycocotools' "undefined"


def test_coco_metrics_with_image_sizes_equals_pixel_boxes():
    detections, targets = random_scenes(random.Random(5), 20, pixel_size=1.0)
    size = (480, 640)
    scale = torch.tensor([640.0, 480.0, 640.0, 480.0], dtype=torch.float64)
    pixels = cocoeval.coco_metrics(
        [{**d, "boxes": d["boxes"] * scale} for d in detections],
        [{**t, "boxes": t["boxes"] * scale} for t in targets],
    )
    relative = cocoeval.coco_metrics(detections, targets, image_sizes=[size] * len(targets))
    assert relative == pytest.approx(pixels, abs=1e-12)


def test_coco_metrics_without_detections_are_zero():
    metrics = cocoeval.coco_metrics([det([], [])], [tgt([A])])
    assert metrics["AP"] == 0.0
    assert metrics["AR100"] == 0.0
