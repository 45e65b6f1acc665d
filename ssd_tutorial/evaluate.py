"""Evaluation: Pascal VOC mAP, COCO metrics and AP by object size.

A detector's output is scored one class at a time. All detections of the class, from every
image, are ranked by score. Walking down the ranking, each detection either finds a ground-truth
box of its class in its image with IoU >= ``iou_threshold`` that no higher-ranked detection took
(a true positive) or not (a false positive: a miss, or a duplicate of a found object). After
``n`` detections, ``precision = TP / n`` and ``recall = TP / (number of objects)``. Average
precision (AP) summarises that precision-recall curve in one number, after replacing each
precision by the best precision at any higher recall (the *envelope*, which makes the curve
monotone):

* ``"voc07"``: the mean of the envelope at the 11 recalls 0, 0.1, ..., 1 (VOC2007 devkit; the
  metric of the SSD paper and of ``amdegroot/ssd.pytorch`` on VOC2007 test);
* ``"voc2010"``: the exact area under the envelope (the VOC devkit from 2010 on);
* ``"coco101"``: the mean of the envelope at the 101 recalls 0, 0.01, ..., 1 (pycocotools).

mAP is the mean of the per-class APs. Inputs are per image, a sequence with one entry per image:

* detections: ``boxes`` (``[N, 4]``, corner form ``(x1, y1, x2, y2)``), ``scores`` (``[N]``) and
  ``labels`` (``[N]``, class ids ``1..C-1``);
* targets: ``boxes`` (``[M, 4]``), ``labels`` (``[M]``), and optionally ``difficult``
  and/or ``iscrowd`` (``[M]`` booleans).

An entry is a mapping (``{"boxes": ..., ...}``, as torchvision's targets) or any object with
these attributes (a NamedTuple such as the post-processing's detections); values are tensors,
numpy arrays or lists. Boxes may be in pixels or relative to the image, as long as detections
and targets agree; only :func:`ap_by_size` and :func:`coco_metrics` look at absolute sizes.

How the details compare with the reference implementations (the tests check both):

* ``matching="voc"`` follows the VOC devkit (``VOCevaldet.m``): a detection looks only at the
  object it overlaps most; ``matching="coco"`` follows pycocotools (``COCOeval.evaluateImg``)
  and looks at the best object still free. ``"coco101"`` with ``"coco"`` matching equals
  pycocotools' AP at the same IoU threshold, except that COCOeval first keeps only the 100
  best detections per image and class, and overlaps crowd regions differently.
* A match needs IoU >= the threshold, as in the devkit and pycocotools (py-faster-rcnn's
  ``voc_eval.py``, used by ``amdegroot/ssd.pytorch``, asks for >; that differs only at an IoU of
  exactly 0.5). Equal IoUs go to the first object.
* Equal scores keep the input order (image, then position in the image), like MATLAB's sort
  and pycocotools' mergesort.
* VOC07's recall points are exactly k / 10; py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` puts
  three of them a hair higher (0.30000000000000004, 0.6000000000000001, 0.7000000000000001).
* Coordinates are continuous by default; ``inclusive_pixels=True`` gives the devkit's "+1" pixel
  widths for integer pixel boxes.
* A class without any object to find gets no AP and stays out of the mean (the devkit would
  divide by zero; pycocotools reports -1 and leaves it out too).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.boxes import box_area, check_boxes, pairwise_iou
from ssd_tutorial.postprocess import Detections, detect

Interpolation = Literal["voc07", "voc2010", "coco101"]
Matching = Literal["voc", "coco"]

#: Recall points of the interpolated APs. VOC07's are exactly k / 10, so a recall of 3/10
#: counts at the point 0.3. COCO's are the very values pycocotools uses (``numpy.linspace``),
#: so ``"coco101"`` reproduces it to the last bit.
RECALL_POINTS: dict[str, Tensor] = {
    "voc07": torch.tensor([k / 10 for k in range(11)], dtype=torch.float64),
    "coco101": torch.from_numpy(np.linspace(0.0, 1.0, 101)),
}

#: COCO's object-size buckets, in pixels² of box area, both ends inclusive as in pycocotools (a
#: box of exactly 32² is both small and medium). pycocotools closes "large" at 1e10.
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}

#: Names of pycocotools' twelve summary numbers, in its order.
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

#: Per-object flags of the targets that mark ground truth to ignore.
IGNORE_FLAGS: tuple[str, ...] = ("difficult", "iscrowd")

# Upper bound on the elements of one padded [groups, detections, objects] IoU block (float64).
_BLOCK_ELEMENTS = 2**18


@dataclass(frozen=True)
class VOCResult:
    """Pascal VOC-style evaluation at one IoU threshold.

    Only classes with at least one ground-truth object that is not ignored (not ``difficult``,
    not ``iscrowd``, inside the size bucket) are evaluated: a class without any has no recall and
    no AP, so it is absent from every dict below and from the mean. Its detections, all false
    positives, change nothing.

    Attributes:
        map: mean of ``ap_per_class``.
        ap_per_class: class id -> AP in ``[0, 1]``.
        precision: class id -> ``Tensor[K]`` (float64), precision after each of the class's
            ``K`` ranked detections (ignored ones left out), before the envelope.
        recall: class id -> ``Tensor[K]``, recall after each ranked detection.
        scores: class id -> ``Tensor[K]``, the detections' scores, highest first.
        num_positives: class id -> number of ground-truth objects that count.
        iou_threshold: the IoU a detection needs to match an object.
        interpolation: ``"voc07"``, ``"voc2010"`` or ``"coco101"``.
    """

    map: float
    ap_per_class: dict[int, float]
    precision: dict[int, Tensor]
    recall: dict[int, Tensor]
    scores: dict[int, Tensor]
    num_positives: dict[int, int]
    iou_threshold: float
    interpolation: str


def voc_map(
    detections: Sequence[Any],
    targets: Sequence[Any],
    *,
    iou_threshold: float = 0.5,
    interpolation: Interpolation = "voc07",
    matching: Matching = "voc",
    inclusive_pixels: bool = False,
    num_classes: int | None = None,
) -> VOCResult:
    """Pascal VOC mean average precision.

    Ground truth marked ``difficult`` (or ``iscrowd``) is ignored: it is not counted among the
    objects to find, and a detection that matches it is neither a true nor a false positive.

    Args:
        detections: one entry per image with ``boxes[N, 4]``, ``scores[N]``, ``labels[N]``.
        targets: one entry per image with ``boxes[M, 4]``, ``labels[M]`` and optionally
            ``difficult[M]`` / ``iscrowd[M]``. Same coordinates as the detections.
        iou_threshold: a match needs IoU >= this (in ``(0, 1]``).
        interpolation: ``"voc07"`` (11 points), ``"voc2010"`` (area) or ``"coco101"``.
        matching: how a detection picks its ground truth, scanning detections by score.
            ``"voc"`` (the VOC devkit): the object of highest IoU, taken or not; if a higher
            detection took it already, this one is a false positive (a duplicate), even if
            another free object overlaps it enough. ``"coco"`` (pycocotools): the free object of
            highest IoU, preferring objects that count over ignored ones.
        inclusive_pixels: boxes are inclusive integer pixel indices, as in VOC's XML files
            and devkit: a box covers ``x2 - x1 + 1`` pixels. Off (the default), coordinates are
            continuous and a box is ``x2 - x1`` wide.
        num_classes: if given, labels must be in ``1..num_classes - 1``.

    Returns:
        VOCResult: mAP, per-class AP and the precision-recall curves.

    Raises:
        ValueError: malformed inputs (named with the image index), or no ground truth to find.
    """
    _check_options(iou_threshold, interpolation, matching)
    dets, gts = _collect(detections, targets, num_classes, inclusive_pixels)
    tp, ignored = _match(dets, gts, _pair(dets, gts), gts.ignore_region, iou_threshold, matching)
    result = _result(
        dets, gts.labels[~gts.ignore_region], tp, ignored, iou_threshold, interpolation
    )
    if result is None:
        raise ValueError(
            "targets contain no ground-truth object that counts (all are difficult/iscrowd, or "
            "there are none): mAP is undefined"
        )
    return result


def ap_by_size(
    detections: Sequence[Any],
    targets: Sequence[Any],
    *,
    area_ranges: Mapping[str, tuple[float, float]] = COCO_AREA_RANGES,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    iou_threshold: float = 0.5,
    interpolation: Interpolation = "voc07",
    matching: Matching = "voc",
    inclusive_pixels: bool = False,
    num_classes: int | None = None,
) -> dict[str, VOCResult]:
    """VOC-style mAP restricted to objects of one size, for each size bucket.

    A bucket is a range ``[low, high]`` of box area (``(x2 - x1) * (y2 - y1)``, ends inclusive).
    Within a bucket, as in pycocotools: ground truth outside the range is ignored like a
    difficult object (not counted, and a detection matching it is ignored), and a detection
    that matches nothing is ignored if its own area is outside the range (it is a false
    positive of another bucket), otherwise it is a false positive. With ``matching="voc"`` an
    ignored object absorbs any number of detections, as a difficult one does in the devkit;
    with ``matching="coco"`` it takes one, and ``interpolation="coco101"`` then equals
    pycocotools' AP per area range at the same IoU threshold.

    The default buckets are COCO's, in pixels² (small <= 32², medium 32²..96², large >= 96²).
    They mean what COCO means only for boxes in pixels of the original image: pass pixel boxes,
    or relative boxes with ``image_sizes``, or ranges in your own unit (for relative boxes,
    fractions of the image area, e.g. ``(0, 0.01)``).

    Args:
        detections, targets, iou_threshold, interpolation, matching, inclusive_pixels,
        num_classes: as in :func:`voc_map`.
        area_ranges: bucket name -> ``(low, high)`` box area.
        image_sizes: ``(height, width)`` of each image; when given, boxes are relative in
            ``[0, 1]`` and are scaled to pixels first.

    Returns:
        dict[str, VOCResult]: one result per bucket that holds ground truth; buckets without
        any are left out.
    """
    _check_options(iou_threshold, interpolation, matching)
    for name, bounds in area_ranges.items():
        if len(bounds) != 2 or not bounds[0] <= bounds[1]:
            raise ValueError(
                f"area_ranges[{name!r}] must be (low, high) with low <= high, got {bounds}"
            )
    dets, gts = _collect(detections, targets, num_classes, inclusive_pixels, image_sizes)
    det_area, gt_area = box_area(dets.boxes), box_area(gts.boxes)
    blocks = _pair(dets, gts)
    results = {}
    for name, (low, high) in area_ranges.items():
        gt_ignored = gts.ignore_region | (gt_area < low) | (gt_area > high)
        tp, ignored = _match(dets, gts, blocks, gt_ignored, iou_threshold, matching)
        ignored |= ~tp & ((det_area < low) | (det_area > high))
        result = _result(dets, gts.labels[~gt_ignored], tp, ignored, iou_threshold, interpolation)
        if result is not None:
            results[name] = result
    return results


def average_precision(
    precision: Tensor, recall: Tensor, interpolation: Interpolation = "voc07"
) -> float:
    """Area under a precision-recall curve, VOC07 / VOC2010 / COCO style.

    Args:
        precision (Tensor[K]): precision after each ranked detection.
        recall (Tensor[K]): recall after each ranked detection (non-decreasing, in ``[0, 1]``).
        interpolation: ``"voc07"``, ``"voc2010"`` or ``"coco101"`` (see the module docstring).

    Returns:
        float: AP in ``[0, 1]``; 0 for an empty curve.
    """
    _check_interpolation(interpolation)
    if precision.ndim != 1 or precision.shape != recall.shape:
        raise ValueError(
            "precision and recall must be 1-D and of equal length, got shapes "
            f"{list(precision.shape)} and {list(recall.shape)}"
        )
    if recall.numel() and (bool((recall.diff() < 0).any()) or recall[0] < 0 or recall[-1] > 1):
        raise ValueError("recall must be non-decreasing and within [0, 1]")
    return _average_precision(precision.double(), recall.double(), interpolation)


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
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO metrics need pycocotools: pip install pycocotools") from error

    dets, gts = _collect(detections, targets, num_classes, False, image_sizes)
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
    iou_threshold: float = 0.5,
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


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Detections:
    """Detections of every image, sorted by score (highest first; ties keep image order, then
    the order within the image); ``image`` holds each one's image index."""

    boxes: Tensor  # [N, 4] float64
    scores: Tensor  # [N] float64
    labels: Tensor  # [N] int64
    image: Tensor  # [N] int64
    num_images: int


@dataclass(frozen=True)
class _Targets:
    """Ground truth of every image concatenated; ``ignore_region`` = difficult | iscrowd."""

    boxes: Tensor  # [M, 4] float64
    labels: Tensor  # [M] int64
    ignore_region: Tensor  # [M] bool
    image: Tensor  # [M] int64


def _check_options(iou_threshold: float, interpolation: str, matching: str) -> None:
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    _check_interpolation(interpolation)
    if matching not in ("voc", "coco"):
        raise ValueError(f"matching must be 'voc' or 'coco', got {matching!r}")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in ("voc07", "voc2010", "coco101"):
        raise ValueError(
            f"interpolation must be 'voc07', 'voc2010' or 'coco101', got {interpolation!r}"
        )


def _collect(
    detections: Sequence[Any],
    targets: Sequence[Any],
    num_classes: int | None,
    inclusive_pixels: bool,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[_Detections, _Targets]:
    """Validate the per-image inputs and concatenate them (float64 boxes on the CPU)."""
    if len(detections) != len(targets):
        raise ValueError(
            "detections and targets must have one entry per image, got "
            f"{len(detections)} detections and {len(targets)} targets"
        )
    if len(targets) == 0:
        raise ValueError("detections and targets are empty: there is nothing to evaluate")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
    det_parts = [
        _read_detections(record, f"detections[{i}]") for i, record in enumerate(detections)
    ]
    gt_parts = [_read_targets(record, f"targets[{i}]") for i, record in enumerate(targets)]
    det_boxes, det_image = _concat_boxes([p[0] for p in det_parts], "detections")
    gt_boxes, gt_image = _concat_boxes([p[0] for p in gt_parts], "targets")
    det_labels = _concat_labels([p[2] for p in det_parts], det_image, "detections", num_classes)
    gt_labels = _concat_labels([p[1] for p in gt_parts], gt_image, "targets", num_classes)
    scores = torch.cat([p[1] for p in det_parts])
    if not bool(torch.isfinite(scores).all()):
        first = int((~torch.isfinite(scores)).nonzero()[0, 0])
        raise ValueError(
            f"detections[{int(det_image[first])}].scores must be finite, got {float(scores[first])}"
        )
    if image_sizes is not None:
        scale = _pixel_scale(image_sizes, len(targets))
        det_boxes, gt_boxes = det_boxes * scale[det_image], gt_boxes * scale[gt_image]
    if inclusive_pixels:
        one_pixel = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
        det_boxes, gt_boxes = det_boxes + one_pixel, gt_boxes + one_pixel
    ignore_region = torch.cat([p[2] for p in gt_parts])
    # One stable sort ranks every class, as in the devkit and pycocotools (mergesort).
    order = torch.sort(scores, descending=True, stable=True).indices
    return (
        _Detections(
            det_boxes[order], scores[order], det_labels[order], det_image[order], len(targets)
        ),
        _Targets(gt_boxes, gt_labels, ignore_region, gt_image),
    )


def _read_detections(record: Any, name: str) -> tuple[Tensor, Tensor, Tensor]:
    boxes = _as_boxes(_field(record, "boxes", name), f"{name}.boxes")
    scores = _as_vector(_field(record, "scores", name), f"{name}.scores", torch.float64)
    labels = _as_vector(_field(record, "labels", name), f"{name}.labels", torch.int64)
    _check_lengths(name, boxes=boxes, scores=scores, labels=labels)
    return boxes, scores, labels


def _read_targets(record: Any, name: str) -> tuple[Tensor, Tensor, Tensor]:
    boxes = _as_boxes(_field(record, "boxes", name), f"{name}.boxes")
    labels = _as_vector(_field(record, "labels", name), f"{name}.labels", torch.int64)
    flags = {"boxes": boxes, "labels": labels}
    for key in IGNORE_FLAGS:
        value = _field(record, key, name, required=False)
        if value is not None:
            flags[key] = _as_vector(value, f"{name}.{key}", torch.bool)
    _check_lengths(name, **flags)
    ignore_region = torch.zeros(len(boxes), dtype=torch.bool)
    for key in IGNORE_FLAGS:
        if key in flags:
            ignore_region |= flags[key]
    return boxes, labels, ignore_region


def _field(record: Any, key: str, name: str, required: bool = True) -> Any:
    value = record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)
    if value is None and required:
        raise ValueError(
            f"{name} has no {key!r}: expected a mapping or an object with boxes, labels "
            f"(and scores for detections), got {type(record).__name__}"
        )
    return value


def _as_boxes(value: Any, name: str) -> Tensor:
    boxes = torch.as_tensor(value, device="cpu").detach()
    if boxes.numel() == 0:
        return torch.zeros(0, 4, dtype=torch.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {list(boxes.shape)}")
    return boxes.double()


def _as_vector(value: Any, name: str, dtype: torch.dtype) -> Tensor:
    vector = torch.as_tensor(value, device="cpu").detach()
    if vector.numel() == 0:
        return torch.zeros(0, dtype=dtype)
    if vector.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(vector.shape)}")
    if dtype != torch.float64 and vector.is_floating_point():
        raise ValueError(f"{name} must hold integers or booleans, got {vector.dtype}")
    return vector.to(dtype)


def _check_lengths(name: str, **parts: Tensor) -> None:
    lengths = {key: value.shape[0] for key, value in parts.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise ValueError(f"{name} must have one row per box in every field, got {listed}")


def _concat_boxes(parts: list[Tensor], kind: str) -> tuple[Tensor, Tensor]:
    """All boxes of one kind, validated, and the image index of each."""
    boxes = torch.cat(parts)
    try:
        check_boxes(boxes, f"{kind} boxes")
    except ValueError:
        for i, part in enumerate(parts):  # name the first offending image
            check_boxes(part, f"{kind}[{i}].boxes")
        raise
    counts = torch.tensor([len(p) for p in parts])
    return boxes, torch.repeat_interleave(torch.arange(len(parts)), counts)


def _concat_labels(
    parts: list[Tensor], image: Tensor, kind: str, num_classes: int | None
) -> Tensor:
    labels = torch.cat(parts)
    bad = labels < 1 if num_classes is None else (labels < 1) | (labels >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        expected = "class ids >= 1" if num_classes is None else f"class ids in 1..{num_classes - 1}"
        raise ValueError(
            f"{kind}[{int(image[first])}].labels must be {expected} (0 is background), "
            f"got {int(labels[first])}"
        )
    return labels


def _pixel_scale(image_sizes: Sequence[tuple[int, int]], num_images: int) -> Tensor:
    """``[I, 4]`` factors ``(w, h, w, h)`` that turn relative boxes into pixels."""
    sizes = torch.as_tensor(image_sizes, dtype=torch.float64)
    if sizes.shape != (num_images, 2) or not bool((sizes > 0).all()):
        raise ValueError(
            f"image_sizes must hold one positive (height, width) per image ({num_images}), "
            f"got shape {list(sizes.shape)}"
        )
    return sizes[:, [1, 0, 1, 0]]


# --- matching ---------------------------------------------------------------------------------


def _pair(dets: _Detections, gts: _Targets) -> list[tuple[Tensor, Tensor]]:
    """Which detections may match which objects: tables of indices, block by block.

    Only a detection and an object of the same class in the same image can match, so boxes are
    grouped by (image, class); groups are independent. Groups without objects hold only false
    positives and groups without detections change nothing: both are left out. The others are
    sorted by size and cut into blocks, each padded to its own largest group, so that one
    crowded image does not inflate the rest.

    Returns:
        list of ``(det_index[B, D], gt_index[B, G])``: row ``b`` lists the detections (best
        first) and the objects of one group, -1 padded.
    """
    if len(gts.labels) == 0 or len(dets.labels) == 0:
        return []
    num_labels = int(torch.cat((dets.labels, gts.labels)).max()) + 1
    keys = torch.cat((dets.image * num_labels + dets.labels, gts.image * num_labels + gts.labels))
    groups, group_of = torch.unique(keys, return_inverse=True)
    det_group, gt_group = group_of[: len(dets.labels)], group_of[len(dets.labels) :]
    det_count = torch.bincount(det_group, minlength=len(groups))
    gt_count = torch.bincount(gt_group, minlength=len(groups))
    # Rank the groups that have both detections and objects by size; -1 for the others.
    matchable = ((det_count > 0) & (gt_count > 0)).nonzero().flatten()
    size = det_count[matchable] * (int(gt_count.max()) + 1) + gt_count[matchable]
    by_size = matchable[torch.sort(size, stable=True).indices]
    rank = torch.full((len(groups),), -1, dtype=torch.int64)
    rank[by_size] = torch.arange(len(by_size))
    det_rank, gt_rank = rank[det_group], rank[gt_group]
    det_order, det_offsets = _group_members(det_rank, len(by_size))
    gt_order, gt_offsets = _group_members(gt_rank, len(by_size))
    sizes = zip(det_count[by_size].tolist(), gt_count[by_size].tolist())
    return [
        (
            _block_table(det_order, det_offsets, det_rank, start, stop),
            _block_table(gt_order, gt_offsets, gt_rank, start, stop),
        )
        for start, stop in _blocks(list(sizes), _BLOCK_ELEMENTS)
    ]


def _match(
    dets: _Detections,
    gts: _Targets,
    blocks: list[tuple[Tensor, Tensor]],
    gt_ignored: Tensor,
    iou_threshold: float,
    matching: str,
) -> tuple[Tensor, Tensor]:
    """Mark each detection a true positive, ignored, or (neither) a false positive.

    Within each (image, class) group of :func:`_pair`, detections are visited best first; the
    k-th detection of every group in a block is matched in one tensor step. Objects in
    ``gt_ignored`` count for nothing; difficult/iscrowd regions (``gts.ignore_region``) may
    absorb any number of detections.

    Returns:
        tp, ignored (Tensor[N] bool): in the order of ``dets``.
    """
    tp = torch.zeros(len(dets.labels), dtype=torch.bool)
    ignored = torch.zeros_like(tp)
    for det_index, gt_index in blocks:
        det_valid, gt_valid = det_index >= 0, gt_index >= 0
        det_index, gt_index = det_index.clamp(min=0), gt_index.clamp(min=0)
        iou = pairwise_iou(dets.boxes[det_index], gts.boxes[gt_index])
        iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
        block_tp, block_ignored = _greedy_match(
            iou,
            gt_ignored[gt_index] & gt_valid,
            gts.ignore_region[gt_index] & gt_valid,
            iou_threshold,
            matching,
        )
        tp[det_index[det_valid]] = block_tp[det_valid]
        ignored[det_index[det_valid]] = block_ignored[det_valid]
    return tp, ignored


def _group_members(rank: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Indices of the boxes of groups ``0..num_groups-1`` (rank -1: none), group after group,
    in their original order within a group.

    Returns:
        order (Tensor[K]) and offsets (Tensor[num_groups + 1]): group ``g`` is
        ``order[offsets[g]:offsets[g + 1]]``.
    """
    order = torch.sort(rank, stable=True).indices
    order = order[rank[order] >= 0]
    counts = torch.bincount(rank[order], minlength=num_groups)
    return order, torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))


def _block_table(order: Tensor, offsets: Tensor, rank: Tensor, start: int, stop: int) -> Tensor:
    """``[stop - start, K]`` table of the box indices of groups ``start..stop-1``, -1 padded."""
    members = order[offsets[start] : offsets[stop]]
    group = rank[members]
    position = torch.arange(len(members)) - (offsets[group] - offsets[start])
    width = int((offsets[start + 1 : stop + 1] - offsets[start:stop]).max())
    table = torch.full((stop - start, width), -1, dtype=torch.int64)
    table[group - start, position] = members
    return table


def _blocks(sizes: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Split consecutive groups into blocks whose padded ``groups x D x G`` fits ``budget``."""
    blocks, start, most_dets, most_objects = [], 0, 0, 0
    for i, (num_dets, num_objects) in enumerate(sizes):
        most_dets, most_objects = max(most_dets, num_dets), max(most_objects, num_objects)
        if i > start and (i - start + 1) * most_dets * most_objects > budget:
            blocks.append((start, i))
            start, most_dets, most_objects = i, num_dets, num_objects
    if sizes:
        blocks.append((start, len(sizes)))
    return blocks


def _greedy_match(
    iou: Tensor, gt_ignored: Tensor, gt_reusable: Tensor, iou_threshold: float, matching: str
) -> tuple[Tensor, Tensor]:
    """Greedy matching in a block of independent groups, the k-th detections of all at once.

    Args:
        iou (Tensor[B, D, G]): IoU of each group's detections (best score first) with its
            objects; -1 for padded objects (padded detections are dropped by the caller).
        gt_ignored (Tensor[B, G]): objects that do not count.
        gt_reusable (Tensor[B, G]): ignore regions that may absorb several detections.

    Returns:
        tp, ignored (Tensor[B, D] bool).
    """
    num_groups, num_dets, _ = iou.shape
    rows = torch.arange(num_groups)
    taken = torch.zeros_like(gt_ignored)
    tp = torch.zeros(num_groups, num_dets, dtype=torch.bool)
    ignored = torch.zeros_like(tp)
    for k in range(num_dets):
        overlaps = iou[:, k]
        if matching == "voc":
            # The devkit: the best-overlapping object, whether a higher detection took it or not.
            best, gt = overlaps.max(dim=1)
            hit = best >= iou_threshold
            hit_ignored = gt_ignored[rows, gt]
            tp[:, k] = hit & ~hit_ignored & ~taken[rows, gt]
            ignored[:, k] = hit & hit_ignored
            claims = tp[:, k]
        else:
            # pycocotools: the best free object that counts; failing that, the best free ignored.
            free = ~taken | gt_reusable
            counted = overlaps.masked_fill(~free | gt_ignored, -1.0).max(dim=1)
            fallback = overlaps.masked_fill(~free | ~gt_ignored, -1.0).max(dim=1)
            tp[:, k] = counted.values >= iou_threshold
            ignored[:, k] = ~tp[:, k] & (fallback.values >= iou_threshold)
            gt = torch.where(tp[:, k], counted.indices, fallback.indices)
            claims = tp[:, k] | ignored[:, k]
        taken[rows, gt] |= claims
    return tp, ignored


# --- precision, recall, AP --------------------------------------------------------------------


def _result(
    dets: _Detections,
    positive_labels: Tensor,
    tp: Tensor,
    ignored: Tensor,
    iou_threshold: float,
    interpolation: str,
) -> VOCResult | None:
    """Rank each class's counted detections by score and compute its curve and AP.

    Returns None when no class has an object to find.
    """
    num_positives = torch.bincount(positive_labels)
    classes = num_positives.nonzero().flatten().tolist()
    if not classes:
        return None
    precision, recall, scores, ap = {}, {}, {}, {}
    for c in classes:
        ranked = ((dets.labels == c) & ~ignored).nonzero().flatten()  # dets are sorted by score
        found = torch.cumsum(tp[ranked].double(), 0)
        precision[c] = found / torch.arange(1, len(ranked) + 1, dtype=torch.float64)
        recall[c] = found / num_positives[c]
        scores[c] = dets.scores[ranked]
        ap[c] = _average_precision(precision[c], recall[c], interpolation)
    return VOCResult(
        map=sum(ap.values()) / len(ap),
        ap_per_class=ap,
        precision=precision,
        recall=recall,
        scores=scores,
        num_positives={c: int(num_positives[c]) for c in classes},
        iou_threshold=iou_threshold,
        interpolation=interpolation,
    )


def _average_precision(precision: Tensor, recall: Tensor, interpolation: str) -> float:
    # Envelope: the best precision reachable at this recall or beyond.
    envelope = precision.flip(0).cummax(0).values.flip(0)
    if interpolation == "voc2010":
        recall_gain = torch.diff(recall, prepend=recall.new_zeros(1))
        return float((recall_gain * envelope).sum())
    points = RECALL_POINTS[interpolation]
    # First detection reaching each recall point; past the end of the curve, precision 0.
    first = torch.searchsorted(recall, points, side="left")
    return float(torch.cat((envelope, envelope.new_zeros(1)))[first].mean())


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
