"""Matching: which ground-truth object, if any, each default box has to predict.

SSD turns a list of labelled boxes into one training target per default box in two steps:

1. **Every object takes its best default box**, the one with the highest IoU, even when that
   IoU is below the threshold, so that no object is left without a positive. If two objects of
   one image pick the same default box, **the object listed later wins** (the higher index in
   ``gt_boxes[i]``), which is what both ``amdegroot/ssd.pytorch`` (a loop over the objects) and
   torchvision's ``SSDMatcher`` (an indexed assignment, whose repeated writes land in order on
   the CPU) end up doing. The earlier object then keeps only the default boxes it gets in
   step 2.
2. **Every other default box whose best IoU reaches the threshold takes that best object**:
   IoU ``>= iou_threshold``, as in torchvision's ``Matcher`` and the reference code (the paper
   writes "> 0.5"; the two differ only for an IoU of exactly 0.5). When several objects tie for
   a default box's best IoU, the first one listed wins (``max`` returns the first maximum, in
   torchvision too).

All other default boxes are background (label 0).

The whole batch is matched at once, without a Python loop over images or boxes. The objects of
all images are concatenated into one ``[G, 4]`` tensor (``G`` objects in the batch, no padding)
and compared with all ``P`` default boxes in a single ``[G, P]`` IoU. Step 2 only concerns the
few pairs with IoU above the threshold (a few per object, against millions of pairs), so it
works on that short list of pairs and resolves each default box's competition with scatter
reductions keyed by ``(image, default box)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ssd_tutorial.boxes import IOU_THRESHOLD, VARIANCES, center_to_corners, encode
from ssd_tutorial.checks import check_iou_threshold, describe, invalid_labels, non_finite_rows


class Matches(NamedTuple):
    """The matching of a batch, in terms of the batch's concatenated ground truth.

    Attributes:
        object_index (Tensor[B, P], int64): for each image and default box, the index of its
            object in ``boxes``/``labels``, or -1 for background.
        boxes (Tensor[G, 4]): the ground-truth boxes of all images, concatenated in order,
            corner form, relative, in the dtype and on the device of the default boxes.
        labels (Tensor[G], int64): their labels, concatenated the same way.
        first_object (Tensor[B], int64): index in ``boxes`` of each image's first object.
    """

    object_index: Tensor
    boxes: Tensor
    labels: Tensor
    first_object: Tensor

    @property
    def positive(self) -> Tensor:
        """Tensor[B, P], bool: the default boxes that have an object."""
        return self.object_index >= 0

    def prior_labels(self) -> Tensor:
        """Tensor[B, P], int64: the label of each default box's object, 0 for background."""
        with_background = torch.cat((self.labels, self.labels.new_zeros(1)))
        return with_background[self._index_or(len(self.labels))]

    def matched_boxes(self, priors: Tensor) -> Tensor:
        """Tensor[B, P, 4]: each default box's object box (corner form, relative).

        A background default box gets its own box, so that its encoded offsets are zero.
        """
        own_boxes = center_to_corners(priors).expand(*self.object_index.shape, 4)
        with_own = torch.cat((self.boxes, own_boxes.new_zeros(1, 4)))
        boxes = with_own[self._index_or(len(self.boxes))]
        return torch.where(self.positive.unsqueeze(-1), boxes, own_boxes)

    def positive_offsets(
        self, priors: Tensor, variances: tuple[float, float] = VARIANCES
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The regression targets, for the positive default boxes only.

        Returns:
            image (Tensor[N], int64), prior (Tensor[N], int64): the ``N`` positives, as
                (image index, default box index) pairs in row-major order.
            offsets (Tensor[N, 4]): :func:`~ssd_tutorial.boxes.encode` of each positive's
                object box relative to its default box.
        """
        image, prior = self.positive.nonzero(as_tuple=True)
        objects = self.boxes[self.object_index[image, prior]]
        return image, prior, encode(objects, priors[prior], variances)

    def image_object_index(self) -> Tensor:
        """Tensor[B, P], int64: the object index within its own image (``gt_boxes[i]``), or -1."""
        return _within_image(self.object_index, self.first_object)

    def _index_or(self, background: int) -> Tensor:
        return torch.where(self.positive, self.object_index, background)


def match(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[Tensor, Tensor]:
    """Training targets of a batch: the object box and the label of every default box.

    Args:
        gt_boxes (list of Tensor[n_i, 4]): per image, the objects' boxes, corner form
            ``(x1, y1, x2, y2)``, relative to the image (inside ``[0, 1]``, positive width and
            height). ``n_i`` may be 0.
        gt_labels (list of Tensor[n_i], integer): per image, the objects' labels, ``>= 1``.
        priors (Tensor[P, 4]): default boxes, centre form ``(cx, cy, w, h)``, relative.
        iou_threshold: step 2 makes a default box positive when its best IoU is ``>=`` this.

    Returns:
        matched_boxes (Tensor[B, P, 4]): each default box's object box, corner form, relative;
            a background default box gets its own box (its offsets encode to zero).
        labels (Tensor[B, P], int64): each default box's object label, 0 for background.

    Raises:
        ValueError: naming the image and the box for malformed ground truth (see
            :func:`match_objects`).
    """
    matches = match_objects(gt_boxes, gt_labels, priors, iou_threshold)
    return matches.matched_boxes(priors), matches.prior_labels()


def match_indices(
    gt_boxes: Sequence[Tensor], priors: Tensor, iou_threshold: float = IOU_THRESHOLD
) -> Tensor:
    """For each default box, the index of its object within its image, or -1 for background.

    The same result as torchvision's ``box_iou`` + ``SSDMatcher`` applied to each image on the
    same coordinates, for the whole batch. (Matching the same boxes in pixels can differ: an
    object inside several equal default boxes has exactly equal IoU with them, and rounding in
    pixels breaks such ties differently.)

    Args:
        gt_boxes (list of Tensor[n_i, 4]): as in :func:`match`.
        priors (Tensor[P, 4]): default boxes, centre form, relative.
        iou_threshold: as in :func:`match`.

    Returns:
        Tensor[B, P], int64: index into ``gt_boxes[i]`` for image ``i``, -1 for background.
    """
    _check_priors_and_threshold(priors, iou_threshold)
    boxes, first_object = _concatenate_boxes(gt_boxes, priors)
    object_index = _match_concatenated(boxes, first_object, priors, iou_threshold)
    return _within_image(object_index, first_object)


def match_objects(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
    num_classes: int | None = None,
) -> Matches:
    """Match a batch and keep the result in terms of the concatenated ground truth.

    This is what the loss uses: the positives' boxes are gathered from ``Matches.boxes`` only
    where needed, instead of materialising ``[B, P, 4]`` boxes for every default box.

    Args:
        gt_boxes, gt_labels, priors, iou_threshold: as in :func:`match`.
        num_classes: if given, labels must also be ``<= num_classes - 1``.

    Raises:
        ValueError: if the lists differ in length, a box tensor is not ``[n, 4]``, a box is
            non-finite, outside ``[0, 1]`` or has zero width or height, the labels of an image
            do not match its boxes in number, are not integers or are out of range. The message
            names the image index (and the box index for bad values).
    """
    _check_priors_and_threshold(priors, iou_threshold)
    if len(gt_labels) != len(gt_boxes):
        raise ValueError(
            f"gt_boxes and gt_labels must have one entry per image, got {len(gt_boxes)} box "
            f"tensors and {len(gt_labels)} label tensors"
        )
    boxes, first_object = _concatenate_boxes(gt_boxes, priors)
    labels = _concatenate_labels(gt_labels, gt_boxes, first_object, num_classes, priors.device)
    object_index = _match_concatenated(boxes, first_object, priors, iou_threshold)
    return Matches(object_index, boxes, labels, first_object)


def _match_concatenated(
    boxes: Tensor, first_object: Tensor, priors: Tensor, iou_threshold: float
) -> Tensor:
    """The two matching steps on the concatenated objects ``boxes[G, 4]`` -> ``[B, P]``."""
    num_images, num_priors, num_objects = len(first_object), len(priors), len(boxes)
    if num_objects == 0:
        return torch.full((num_images, num_priors), -1, dtype=torch.int64, device=boxes.device)
    image_of_object = _image_of_object(first_object, num_objects)
    iou = _iou_with_priors(boxes, center_to_corners(priors))  # [G, P]

    # Step 2 first (step 1 overrides it): the (object, default box) pairs above the threshold.
    # Only default boxes whose best IoU in the whole batch reaches the threshold can be in one
    # (a small fraction of them); a cheap column max finds them before the search for pairs.
    candidates = (iou.amax(dim=0) >= iou_threshold).nonzero().squeeze(1)
    candidate_iou = iou.index_select(1, candidates)
    pair_object, pair_column = (candidate_iou >= iou_threshold).nonzero(as_tuple=True)
    pair_prior = candidates[pair_column]
    pair_iou = candidate_iou[pair_object, pair_column]
    # Each pair competes for one slot per (image, default box) in a flat [B * P] index.
    pair_slot = image_of_object[pair_object] * num_priors + pair_prior
    best_iou = iou.new_zeros(num_images * num_priors)
    best_iou.scatter_reduce_(0, pair_slot, pair_iou, "amax", include_self=False)
    is_best = pair_iou == best_iou[pair_slot]
    object_index = torch.full_like(best_iou, -1, dtype=torch.int64)
    # Ties for the best IoU go to the first object, as torchvision's max(dim=0) does.
    object_index.scatter_reduce_(
        0, pair_slot[is_best], pair_object[is_best], "amin", include_self=False
    )

    # Step 1: each object's best default box (max returns the first maximum); if two objects
    # of one image share it, the later object wins.
    forced_slot = image_of_object * num_priors + iou.max(dim=1).indices
    objects = torch.arange(num_objects, device=boxes.device)
    object_index.scatter_reduce_(0, forced_slot, objects, "amax", include_self=False)
    return object_index.view(num_images, num_priors)


def _iou_with_priors(boxes: Tensor, prior_corners: Tensor) -> Tensor:
    """IoU of every object with every default box: ``[G, 4]``, ``[P, 4]`` -> ``[G, P]``.

    Bit for bit the numbers of :func:`ssd_tutorial.boxes.pairwise_iou` and torchvision's
    ``box_iou`` (same operations in the same order), computed with less memory traffic: on
    contiguous coordinate planes (no ``[G, P, 2]`` intermediates) and mostly in place, with
    two ``[G, P]`` buffers and one short-lived temporary.
    """
    x1, y1, x2, y2 = boxes.T.unsqueeze(-1)  # each [G, 1]
    px1, py1, px2, py2 = prior_corners.T.contiguous()  # each [P]
    intersection = torch.minimum(x2, px2)
    scratch = torch.maximum(x1, px1)
    intersection.sub_(scratch).clamp_(min=0)  # overlap width
    height = torch.minimum(y2, py2, out=scratch)
    height.sub_(torch.maximum(y1, py1)).clamp_(min=0)
    intersection.mul_(height)
    union = torch.add((x2 - x1) * (y2 - y1), (px2 - px1) * (py2 - py1), out=height)
    return intersection.div_(union.sub_(intersection))


def _within_image(object_index: Tensor, first_object: Tensor) -> Tensor:
    """Concatenated object indices ``[B, P]`` -> indices within each image, -1 kept."""
    return torch.where(object_index >= 0, object_index - first_object.unsqueeze(1), -1)


def _image_of_object(first_object: Tensor, num_objects: int) -> Tensor:
    """Tensor[G]: the image index of each concatenated object."""
    counts = torch.diff(first_object, append=first_object.new_tensor([num_objects]))
    return torch.repeat_interleave(torch.arange(len(first_object), device=counts.device), counts)


def _check_priors_and_threshold(priors: Tensor, iou_threshold: float) -> None:
    check_iou_threshold(iou_threshold)
    if not isinstance(priors, Tensor) or priors.ndim != 2 or priors.shape[1] != 4:
        raise ValueError(f"priors must be a Tensor[P, 4] (cx, cy, w, h), got {describe(priors)}")
    if not priors.is_floating_point():
        raise ValueError(f"priors must be a floating-point tensor, got {priors.dtype}")


def _concatenate_boxes(gt_boxes: Sequence[Tensor], priors: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and concatenate: ``[G, 4]`` boxes and ``[B]`` index of each image's first box."""
    counts = []
    for i, boxes in enumerate(gt_boxes):
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"gt_boxes[{i}] must be a Tensor[n, 4] (x1, y1, x2, y2, relative), "
                f"got {describe(boxes)}"
            )
        if not boxes.is_floating_point():
            raise ValueError(f"gt_boxes[{i}] must be a floating-point tensor, got {boxes.dtype}")
        counts.append(len(boxes))
    counts_tensor = torch.tensor(counts, dtype=torch.int64, device=priors.device)
    first_object = counts_tensor.cumsum(0) - counts_tensor
    if not counts:
        return priors.new_zeros(0, 4), first_object
    boxes = torch.cat(list(gt_boxes)).to(priors)
    _check_box_values(boxes, first_object)
    return boxes, first_object


def _check_box_values(boxes: Tensor, first_object: Tensor) -> None:
    """One batched check of all boxes; on failure, name the first bad box and why."""
    x1, y1, x2, y2 = boxes.T
    non_finite = non_finite_rows(boxes)
    if non_finite is None:
        non_finite = torch.zeros_like(x1, dtype=torch.bool)
    problems = {
        "is not finite": non_finite,
        "lies outside the image [0, 1] (relative corner form expected)": (
            (boxes < 0) | (boxes > 1)
        ).any(dim=1),
        "has zero or negative width or height (x2 <= x1 or y2 <= y1)": (x2 <= x1) | (y2 <= y1),
    }
    bad = torch.stack(list(problems.values()))
    if not bool(bad.any()):
        return
    for problem, rows in problems.items():
        if bool(rows.any()):
            row = int(rows.nonzero()[0, 0])
            image = int((first_object <= row).sum()) - 1
            box = row - int(first_object[image])
            raise ValueError(
                f"gt_boxes[{image}][{box}] = {boxes[row].tolist()} {problem}; "
                f"{int(rows.sum())} box(es) in the batch have this problem"
            )


def _concatenate_labels(
    gt_labels: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    first_object: Tensor,
    num_classes: int | None,
    device: torch.device,
) -> Tensor:
    for i, (labels, boxes) in enumerate(zip(gt_labels, gt_boxes)):
        if not isinstance(labels, Tensor) or labels.ndim != 1:
            raise ValueError(
                f"gt_labels[{i}] must be a Tensor[n] of class indices, got {describe(labels)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"gt_labels[{i}] must be an integer tensor, got {labels.dtype}")
        if len(labels) != len(boxes):
            raise ValueError(
                f"gt_labels[{i}] has {len(labels)} label(s) but gt_boxes[{i}] has "
                f"{len(boxes)} box(es): one label per box expected"
            )
    if not gt_labels:
        return torch.zeros(0, dtype=torch.int64, device=device)
    labels = torch.cat(list(gt_labels)).to(device=device, dtype=torch.int64)
    out_of_range = invalid_labels(labels, num_classes)
    if bool(out_of_range.any()):
        row = int(out_of_range.nonzero()[0, 0])
        image = int((first_object <= row).sum()) - 1
        allowed = (
            "1 or more" if num_classes is None else f"in 1..{num_classes - 1} (C = {num_classes})"
        )
        raise ValueError(
            f"gt_labels[{image}][{row - int(first_object[image])}] = {int(labels[row])}: "
            f"labels must be {allowed}; 0 is reserved for background"
        )
    return labels
