"""Boxes: the two formats SSD uses, areas, IoU, and the offset encoding.

Two formats appear everywhere in this package:

* **corner form** ``(x1, y1, x2, y2)``: ground truth and detections;
* **centre form** ``(cx, cy, w, h)``: default boxes (priors).

Inside the training pipeline coordinates are relative to the image, in ``[0, 1]``.
Every function works on any number of leading dimensions (``[..., 4]``), on any device and
floating dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssd_tutorial.checks import non_finite_rows

#: Scale factors of the offset encoding: 0.1 for the centre, 0.2 for the size, as in the
#: reference implementation (they make the regression targets roughly unit variance).
VARIANCES: tuple[float, float] = (0.1, 0.2)

#: The overlap at which two boxes count as the same object: a default box matches an object
#: (training, the SSD paper) and a detection finds one (evaluation, Pascal VOC) at IoU >= 0.5.
IOU_THRESHOLD: float = 0.5


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError`` unless ``boxes`` is a valid corner-form box tensor.

    Valid means: a floating tensor of shape ``[..., 4]`` with finite values and
    ``x2 >= x1``, ``y2 >= y1``. ``name`` appears in the error message.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have shape [..., 4] (x1, y1, x2, y2), got {list(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if non_finite_rows(boxes) is not None:
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bool(inverted.any()):
        first = boxes.reshape(-1, 4)[inverted.reshape(-1).nonzero()[0, 0]].tolist()
        raise ValueError(
            f"{name} must satisfy x2 >= x1 and y2 >= y1 (corner form); "
            f"{int(inverted.sum())} box(es) do not, e.g. {first}"
        )


def corners_to_center(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``. Shape ``[..., 4]`` -> ``[..., 4]``."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim=-1)


def center_to_corners(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``. Shape ``[..., 4]`` -> ``[..., 4]``."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((center - size / 2, center + size / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of corner-form boxes. Shape ``[..., 4]`` -> ``[...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Jaccard overlap (intersection over union) of every pair of boxes.

    Args:
        boxes1 (Tensor[..., N, 4]): corner form.
        boxes2 (Tensor[..., M, 4]): corner form, same leading dimensions as ``boxes1``
            (or broadcastable to them).

    Returns:
        Tensor[..., N, M]: IoU in ``[0, 1]``. Two boxes of zero area have IoU 0.

    Raises:
        ValueError: if either input is not a valid corner-form box tensor.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    return pairwise_iou(boxes1, boxes2)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """:func:`box_iou` without input validation, for hot paths that validated already."""
    # Intersection rectangle of every pair: the largest top-left, the smallest bottom-right.
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - intersection
    # A zero union only happens for two empty boxes; their intersection is 0 too.
    return intersection / torch.where(union > 0, union, torch.ones_like(union))


def encode(
    matched_corners: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES
) -> Tensor:
    """Offsets that move each default box onto its matched ground-truth box.

    ``g_cx = (cx - p_cx) / (v0 * p_w)``, ``g_w = log(w / p_w) / v1``, and the same for y/h.

    Args:
        matched_corners (Tensor[..., P, 4]): the ground-truth box of each default box,
            corner form, relative coordinates.
        priors (Tensor[P, 4]): default boxes, centre form, relative coordinates.
        variances: scale of the centre and size offsets.

    Returns:
        Tensor[..., P, 4]: offsets ``(dcx, dcy, dw, dh)``.
    """
    matched = corners_to_center(matched_corners)
    center_offset = (matched[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
    size_offset = torch.log(matched[..., 2:] / priors[..., 2:]) / variances[1]
    return torch.cat((center_offset, size_offset), dim=-1)


def decode(offsets: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Inverse of :func:`encode`: apply predicted offsets to the default boxes.

    Args:
        offsets (Tensor[..., P, 4]): ``(dcx, dcy, dw, dh)`` as predicted by the network.
        priors (Tensor[P, 4]): default boxes, centre form, relative coordinates.
        variances: the same scales that were used to encode.

    Returns:
        Tensor[..., P, 4]: boxes in corner form, relative coordinates.
    """
    center = priors[..., :2] + offsets[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(offsets[..., 2:] * variances[1])
    return torch.cat((center - size / 2, center + size / 2), dim=-1)
