"""COCO's metrics from pycocotools, on the same per-image inputs as :mod:`ssd_tutorial.metrics`.

The inputs (see :mod:`ssd_tutorial.eval_inputs`) become in-memory COCO datasets that the official
``COCOeval`` scores; nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssd_tutorial.checks import require_extra
from ssd_tutorial.eval_inputs import collect

#: Names of pycocotools' twelve summary numbers, in its order.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def coco_metrics(
    detections: Sequence[Any],
    targets: Sequence[Any],
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """COCO's twelve summary metrics, computed by pycocotools (see :func:`run_cocoeval`).

    Size buckets use COCO's absolute thresholds (32², 96² pixels²): boxes must be in pixels of
    the original image, or relative with ``image_sizes`` (``(height, width)`` per image).

    Returns:
        dict: ``AP`` (IoU 0.5:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
        ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``. As in pycocotools, -1.0 means that no
        class has ground truth in that bucket.
    """
    evaluator = run_cocoeval(detections, targets, image_sizes=image_sizes, num_classes=num_classes)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def run_cocoeval(
    detections: Sequence[Any],
    targets: Sequence[Any],
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    num_classes: int | None = None,
    iou_thresholds: Sequence[float] | None = None,
) -> Any:
    """pycocotools' ``COCOeval`` on our inputs, evaluated and accumulated, quietly.

    The inputs become in-memory COCO datasets: image ids are positions in the lists, category
    ids are labels, ``bbox`` is ``[x, y, w, h]`` and ``area`` the box area (what ``loadRes`` sets
    for detections). Ground truth marked ``difficult`` or ``iscrowd`` becomes a COCO crowd
    region: ignored, and overlapped as intersection / detection area. COCOeval keeps the 100
    highest-scoring detections per image and class.

    ``iou_thresholds`` replaces COCO's ten (0.5:0.05:0.95); ``summarize()`` needs the ten.

    Returns:
        pycocotools.cocoeval.COCOeval: ``.eval["precision"]`` is ``[T, R, K, A, M]`` (IoU
        thresholds, 101 recall points, classes, areas all/small/medium/large, max
        detections 1/10/100); call ``.summarize()`` for the printed table.
    """
    # Imported here, not at the top: evaluate.py re-exports this module, and the VOC metrics
    # work without the extra.
    COCO = require_extra("pycocotools.coco", "coco").COCO
    COCOeval = require_extra("pycocotools.cocoeval", "coco").COCOeval

    dets, gts = collect(detections, targets, num_classes, False, image_sizes)
    if num_classes is not None:
        classes = list(range(1, num_classes))
    else:
        classes = sorted(set(gts.labels.tolist()) | set(dets.labels.tolist()))
    images = [{"id": i} for i in range(dets.num_images)]
    categories = [{"id": c} for c in classes]

    def dataset(annotations: list[dict[str, Any]]) -> COCO:
        coco = COCO()
        coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
        coco.createIndex()
        return coco

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(
            dataset(_coco_annotations(gts.boxes, gts.labels, gts.image, gts.ignore_region)),
            dataset(_coco_annotations(dets.boxes, dets.labels, dets.image, scores=dets.scores)),
            iouType="bbox",
        )
        if iou_thresholds is not None:
            evaluator.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _coco_annotations(
    boxes: Tensor,
    labels: Tensor,
    image: Tensor,
    iscrowd: Tensor | None = None,
    scores: Tensor | None = None,
) -> list[dict[str, Any]]:
    """COCO annotation dicts (``bbox`` = ``[x, y, w, h]``); ids start at 1, as COCOeval needs."""
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    crowd = iscrowd.tolist() if iscrowd is not None else [False] * len(xywh)
    annotations = [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": int(is_crowd),
        }
        for k, (i, c, b, is_crowd) in enumerate(zip(image.tolist(), labels.tolist(), xywh, crowd))
    ]
    if scores is not None:
        for annotation, score in zip(annotations, scores.tolist()):
            annotation["score"] = score
    return annotations
