"""Evaluating a model: run it over a data set, then score its detections.

:func:`predict` runs an SSD and its post-processing over a data loader and keeps, per image,
the detections and the ground truth; :func:`evaluate_model` turns them into the VOC mAP that
training logs. The metrics themselves live in :mod:`ssd_tutorial.metrics` (VOC and COCO-style
AP, AP by object size) and :mod:`ssd_tutorial.cocoeval` (pycocotools); the book calls them
through this module (``evaluate.voc_map``), so their names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.boxes import IOU_THRESHOLD
from ssd_tutorial.cocoeval import COCO_STAT_NAMES, coco_metrics, run_cocoeval
from ssd_tutorial.eval_inputs import IGNORE_FLAGS
from ssd_tutorial.metrics import (
    COCO_AREA_RANGES,
    RECALL_POINTS,
    VOCResult,
    ap_by_size,
    average_precision,
    voc_map,
)
from ssd_tutorial.postprocess import Detections, detect

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_STAT_NAMES",
    "RECALL_POINTS",
    "VOCResult",
    "ap_by_size",
    "average_precision",
    "coco_metrics",
    "evaluate_model",
    "predict",
    "run_cocoeval",
    "voc_map",
]


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    **detect_options: Any,
) -> tuple[list[Detections], list[dict[str, Tensor]]]:
    """Run an SSD over a data loader and keep what evaluation needs, on the CPU.

    Args:
        model: an SSD (``forward`` gives ``loc``, ``conf``; has ``config``).
        loader: batches of :class:`ssd_tutorial.data.transforms.Batch` (``eval_transforms``
            and ``collate``).
        device: where to run (default: the model's device).
        detect_options: passed to :func:`ssd_tutorial.postprocess.detect` (thresholds, top-k).

    Returns:
        ``(detections, targets)``, one entry per image: the post-processed detections and the
        ground truth (``boxes``, ``labels`` and ``difficult``/``iscrowd`` when the data has
        them), both with boxes relative to the image.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    priors = default_boxes(model.config, device=device)
    model.eval()
    detections: list[Detections] = []
    targets: list[dict[str, Tensor]] = []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        loc, conf = model(batch.images.to(device))
        for found in detect(loc.float(), conf.float(), priors, **detect_options):
            detections.append(Detections(*(t.cpu() for t in found)))
        for i, (boxes, labels) in enumerate(zip(batch.boxes, batch.labels)):
            target = {"boxes": boxes, "labels": labels}
            target.update({k: batch.extra[k][i] for k in IGNORE_FLAGS if k in batch.extra})
            targets.append(target)
    return detections, targets


def evaluate_model(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    class_names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    progress: bool = True,
    **detect_options: Any,
) -> dict[str, float]:
    """VOC mAP of a model on a data loader (see :func:`predict`), as a flat dict for logs.

    Returns:
        ``map`` (VOC07 11-point), ``map_area`` (all-point area, VOC2010 on) and ``ap/NAME``
        per class (11-point) for the classes that have objects; ``NAME`` is the class name, or
        its label when ``class_names`` (background first) is not given.
    """
    detections, targets = predict(model, loader, device=device, progress=progress, **detect_options)
    voc07 = voc_map(detections, targets, iou_threshold=iou_threshold, num_classes=model.num_classes)
    # The area AP of the same precision-recall curves: no second matching.
    area = [average_precision(voc07.precision[c], voc07.recall[c], "voc2010") for c in voc07.recall]
    metrics = {"map": voc07.map, "map_area": sum(area) / len(area)}
    for label, ap in sorted(voc07.ap_per_class.items()):
        metrics[f"ap/{class_names[label] if class_names else label}"] = ap
    return metrics
