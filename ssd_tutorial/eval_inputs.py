"""What the metrics read: per-image detections and ground truth, validated and concatenated.

Inputs are per image, a sequence with one entry per image:

* detections: ``boxes`` (``[N, 4]``, corner form ``(x1, y1, x2, y2)``), ``scores`` (``[N]``) and
  ``labels`` (``[N]``, class ids ``1..C-1``);
* targets: ``boxes`` (``[M, 4]``), ``labels`` (``[M]``), and optionally ``difficult``
  and/or ``iscrowd`` (``[M]`` booleans).

An entry is a mapping (``{"boxes": ..., ...}``, as torchvision's targets) or any object with
these attributes (a NamedTuple such as :class:`ssd_tutorial.postprocess.Detections`); values are
tensors, numpy arrays or lists. :func:`collect` checks them all, names the first bad image, and
gives every image's boxes in one float64 tensor on the CPU, detections ranked by score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssd_tutorial.boxes import check_boxes
from ssd_tutorial.checks import check_num_classes, invalid_labels, non_finite_rows

#: Per-object flags of the targets that mark ground truth to ignore.
IGNORE_FLAGS: tuple[str, ...] = ("difficult", "iscrowd")


@dataclass(frozen=True)
class RankedDetections:
    """Detections of every image, sorted by score (highest first; ties keep image order, then
    the order within the image); ``image`` holds each one's image index."""

    boxes: Tensor  # [N, 4] float64
    scores: Tensor  # [N] float64
    labels: Tensor  # [N] int64
    image: Tensor  # [N] int64
    num_images: int


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of every image concatenated; ``ignore_region`` = difficult | iscrowd."""

    boxes: Tensor  # [M, 4] float64
    labels: Tensor  # [M] int64
    ignore_region: Tensor  # [M] bool
    image: Tensor  # [M] int64


def collect(
    detections: Sequence[Any],
    targets: Sequence[Any],
    num_classes: int | None,
    inclusive_pixels: bool,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[RankedDetections, GroundTruth]:
    """Validate the per-image inputs and concatenate them (float64 boxes on the CPU)."""
    if len(detections) != len(targets):
        raise ValueError(
            "detections and targets must have one entry per image, got "
            f"{len(detections)} detections and {len(targets)} targets"
        )
    if len(targets) == 0:
        raise ValueError("detections and targets are empty: there is nothing to evaluate")
    if num_classes is not None:
        check_num_classes(num_classes, "num_classes")
    det_parts = [
        _read_detections(record, f"detections[{i}]") for i, record in enumerate(detections)
    ]
    gt_parts = [_read_targets(record, f"targets[{i}]") for i, record in enumerate(targets)]
    det_boxes, det_image = _concat_boxes([p[0] for p in det_parts], "detections")
    gt_boxes, gt_image = _concat_boxes([p[0] for p in gt_parts], "targets")
    det_labels = _concat_labels([p[2] for p in det_parts], det_image, "detections", num_classes)
    gt_labels = _concat_labels([p[1] for p in gt_parts], gt_image, "targets", num_classes)
    scores = torch.cat([p[1] for p in det_parts])
    bad_scores = non_finite_rows(scores[:, None])
    if bad_scores is not None:
        first = int(bad_scores.nonzero()[0, 0])
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
        RankedDetections(
            det_boxes[order], scores[order], det_labels[order], det_image[order], len(targets)
        ),
        GroundTruth(gt_boxes, gt_labels, ignore_region, gt_image),
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
    bad = invalid_labels(labels, num_classes)
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
