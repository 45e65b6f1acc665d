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

mAP is the mean of the per-class APs. :func:`voc_map` and :func:`ap_by_size` take one entry per
image, detections (``boxes``, ``scores``, ``labels``) and targets (``boxes``, ``labels``,
optionally ``difficult``/``iscrowd``), as mappings or objects with those attributes; see
:mod:`ssd_tutorial.eval_inputs`. Boxes may be in pixels or relative to the image, as long as
detections and targets agree; only :func:`ap_by_size` looks at absolute sizes.

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

The module is longer than most (about 470 lines) because AP and the matching rules that decide
its true positives are one algorithm: the batched greedy matching is most of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ssd_tutorial.boxes import IOU_THRESHOLD, box_area, pairwise_iou
from ssd_tutorial.checks import check_iou_threshold
from ssd_tutorial.eval_inputs import GroundTruth, RankedDetections, collect

Interpolation = Literal["voc07", "voc2010", "coco101"]
MatchingRule = Literal["voc", "coco"]

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
    iou_threshold: float = IOU_THRESHOLD,
    interpolation: Interpolation = "voc07",
    matching: MatchingRule = "voc",
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
    dets, gts = collect(detections, targets, num_classes, inclusive_pixels)
    tp, ignored = _mark_detections(
        dets, gts, _pair(dets, gts), gts.ignore_region, iou_threshold, matching
    )
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
    iou_threshold: float = IOU_THRESHOLD,
    interpolation: Interpolation = "voc07",
    matching: MatchingRule = "voc",
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
    dets, gts = collect(detections, targets, num_classes, inclusive_pixels, image_sizes)
    det_area, gt_area = box_area(dets.boxes), box_area(gts.boxes)
    blocks = _pair(dets, gts)
    results = {}
    for name, (low, high) in area_ranges.items():
        gt_ignored = gts.ignore_region | (gt_area < low) | (gt_area > high)
        tp, ignored = _mark_detections(dets, gts, blocks, gt_ignored, iou_threshold, matching)
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


def _check_options(iou_threshold: float, interpolation: str, matching: str) -> None:
    check_iou_threshold(iou_threshold)
    _check_interpolation(interpolation)
    if matching not in ("voc", "coco"):
        raise ValueError(f"matching must be 'voc' or 'coco', got {matching!r}")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in ("voc07", "voc2010", "coco101"):
        raise ValueError(
            f"interpolation must be 'voc07', 'voc2010' or 'coco101', got {interpolation!r}"
        )


# --- matching ---------------------------------------------------------------------------------


def _pair(dets: RankedDetections, gts: GroundTruth) -> list[tuple[Tensor, Tensor]]:
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


def _mark_detections(
    dets: RankedDetections,
    gts: GroundTruth,
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
    dets: RankedDetections,
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
