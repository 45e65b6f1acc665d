"""Inference: from the network's raw outputs to a short list of detections per image.

For each of its ``P`` default boxes the network predicts four offsets and ``C`` class logits.
:func:`detect` turns them into detections in the stages the book's inference chapter follows:

1. **Decode** the offsets into boxes (:func:`ssd_tutorial.boxes.decode`), corner form relative
   to the image, and clamp them to the image ``[0, 1]``.
2. **Score** each default box with the softmax over the ``C`` classes and drop the background
   column: a default box becomes one candidate per foreground class.
3. **Threshold**: keep the candidates whose score is above ``conf_threshold`` (0.01).
4. **Cap**: per image and class keep at most ``candidates_per_class`` (200) best candidates.
   NMS compares candidates pairwise, and an untrained network puts nearly all 8732 boxes above
   0.01 in every class; without the cap post-processing would take seconds per batch.
5. **Non-maximum suppression, class by class** (:func:`nms`): take the best box, keep it, drop
   the boxes of the same class that overlap it with IoU > ``nms_threshold`` (0.45), repeat
   with the best box left. Boxes of different classes never suppress each other.
6. **Top-k**: keep the ``top_k`` (200) best detections of each image, all classes together,
   highest score first.

**Batched.** :func:`nms` is the algorithm as the book explains it, for one set of boxes.
:func:`detect` runs the same greedy procedure for every (image, class) group at once: the
candidates form a ``[G, K]`` table, one row per group sorted by score, and NMS advances rank by
rank through the table, keeping the ``r``-th box of every row unless a box kept before it in
its row overlaps it. The ranks go in blocks of eight, so a few dozen vector operations decide
all ``G`` rows, with no loop over images or classes, and the result is exactly that of
:func:`nms` on each group.

**Ties** are broken by position, like a stable sort: among equal scores the default box with
the lower index comes first (also when equal scores compete for the last candidate places), and
:func:`nms` visits equal scores in input order, as ``torchvision.ops.nms`` does.

**Differences from torchvision's** ``SSD.postprocess_detections``, all intended:

* torchvision clamps the size offsets ``dw, dh`` at ``log(1000 / 16)`` before the exponential,
  so a box is at most 62.5 times its default box; here a huge offset gives a huge box, which
  the clamp to the image then cuts (the same detections whenever the offsets are in a sane
  range, as the tests check).
* torchvision keeps ``topk_candidates = 400`` candidates per class; the default here is 200
  (``candidates_per_class``), like the reference implementation. Equal settings give equal
  detections.
* torchvision clips the boxes to the network's input in pixels and maps them to the original
  image in its transform; here boxes stay relative to the image, clamped to ``[0, 1]``
  (:class:`ssd_tutorial.detector.Detector` scales them to the original image's pixels).
* torchvision's ``topk`` picks an arbitrary subset of candidates tied for the last places;
  here ties are broken by default-box index (above).
* Bad input (mismatched shapes, NaN, thresholds out of range) raises a ``ValueError`` that says
  what was expected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssd_tutorial.boxes import VARIANCES, check_boxes, decode, pairwise_iou
from ssd_tutorial.checks import check_num_classes, non_finite_rows

#: Defaults of :func:`detect`, those of the SSD paper's evaluation and of its reference code:
#: minimum class score, NMS overlap, detections kept per image and candidates per class.
CONF_THRESHOLD: float = 0.01
NMS_THRESHOLD: float = 0.45
TOP_K: int = 200
CANDIDATES_PER_CLASS: int = 200


class Detections(NamedTuple):
    """The detections of one image, highest score first.

    Attributes:
        boxes (Tensor[N, 4]): corner form ``(x1, y1, x2, y2)``, relative to the image, in
            ``[0, 1]``.
        scores (Tensor[N]): class probabilities, above the confidence threshold, non-increasing.
        labels (Tensor[N]): ``int64`` classes in ``1..C-1``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def detect(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    conf_threshold: float = CONF_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    top_k: int = TOP_K,
    candidates_per_class: int = CANDIDATES_PER_CLASS,
    variances: tuple[float, float] = VARIANCES,
) -> list[Detections]:
    """Turn a batch of network outputs into detections (see the module docstring).

    Args:
        loc (Tensor[B, P, 4]): predicted offsets ``(dcx, dcy, dw, dh)`` from the default boxes.
        conf (Tensor[B, P, C]): raw class logits, class 0 being the background.
        priors (Tensor[P, 4]): default boxes, centre form ``(cx, cy, w, h)``, relative.
        conf_threshold: a candidate needs a score above this, in ``[0, 1)``.
        nms_threshold: boxes of one class overlapping a better one with IoU above this are
            dropped, in ``[0, 1]``.
        top_k: at most this many detections per image.
        candidates_per_class: at most this many best candidates per image and class enter NMS.
        variances: the scales the offsets were encoded with.

    Returns:
        One :class:`Detections` per image, boxes relative to the image and clamped to it.

    Raises:
        ValueError: for mismatched shapes, fewer than two classes, non-finite values or
            options out of range.
    """
    _check_detect_inputs(loc, conf, priors)
    check_options(conf_threshold, nms_threshold, top_k, candidates_per_class)
    num_images, num_priors, num_classes = conf.shape
    if num_images == 0:
        return []
    # One row per (image, foreground class) group: [B * (C - 1), P].
    scores = F.softmax(conf, dim=-1)[..., 1:].transpose(1, 2).reshape(-1, num_priors)
    scores, prior_index, counts = _best_candidates(scores, conf_threshold, candidates_per_class)
    image = torch.arange(num_images, device=loc.device).repeat_interleave(num_classes - 1)
    boxes = decode(loc[image[:, None], prior_index], priors[prior_index], variances).clamp(0, 1)
    keep = _nms_rank_by_rank(boxes, counts, nms_threshold)
    return _best_per_image(boxes, scores, keep, num_images, top_k)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, one step per kept box.

    Sort the boxes by score; keep the best; drop every box that overlaps it with IoU above
    ``iou_threshold``; repeat with the best of those left. Equal scores are visited in input
    order, so the result is that of ``torchvision.ops.nms``.

    Args:
        boxes (Tensor[N, 4]): corner form ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): one score per box.
        iou_threshold: in ``[0, 1]``.

    Returns:
        Tensor[K]: ``int64`` indices of the kept boxes, highest score first.
    """
    check_boxes(boxes)
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"boxes must be [N, 4] and scores [N], got {list(boxes.shape)} and {list(scores.shape)}"
        )
    if scores.isnan().any():
        raise ValueError("scores contains NaN")
    _check_fraction(iou_threshold, "iou_threshold", upper_inclusive=True)
    order = scores.argsort(descending=True, stable=True)
    kept = []
    while len(order) > 0:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap = pairwise_iou(boxes[best][None], boxes[rest])[0]
        order = rest[overlap <= iou_threshold]
    return torch.tensor(kept, dtype=torch.int64, device=boxes.device)


def check_options(
    conf_threshold: float, nms_threshold: float, top_k: int, candidates_per_class: int
) -> None:
    """Raise a ``ValueError`` naming the first of :func:`detect`'s options out of its range."""
    _check_fraction(conf_threshold, "conf_threshold", upper_inclusive=False)
    _check_fraction(nms_threshold, "nms_threshold", upper_inclusive=True)
    for name, value in (("top_k", top_k), ("candidates_per_class", candidates_per_class)):
        if not value >= 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _best_candidates(scores: Tensor, threshold: float, cap: int) -> tuple[Tensor, Tensor, Tensor]:
    """The at most ``cap`` best candidates above ``threshold`` of each row, best first.

    Args:
        scores (Tensor[G, P]): one row of scores in ``[0, 1]`` per group.

    Returns:
        scores (Tensor[G, K]), index (Tensor[G, K]) into ``P``, counts (Tensor[G]): row ``g``
        holds its ``counts[g]`` candidates first, then filler; ``K`` is the largest count.
        Equal scores are in index order.
    """
    candidate = scores > threshold
    # Counting into int32: a bool sum into int64 is ten times slower on the CPU.
    full = (candidate.sum(dim=1, dtype=torch.int32) > cap).nonzero()[:, 0]
    if len(full) > 0:
        # A row with too many candidates keeps those from its cap-th best score up: its ties
        # for the last places included, the stable sort below puts them in index order.
        cut = torch.zeros(len(scores), 1, dtype=scores.dtype, device=scores.device)
        cut[full] = scores[full].topk(cap, dim=1).values[:, -1:]
        candidate &= scores >= cut
    row, index = candidate.nonzero().unbind(dim=1)
    # Each row's candidates left-aligned in index order, then sorted by score: the stable sort
    # keeps equal scores in index order. Filler scores -1 sort last.
    sizes = torch.bincount(row, minlength=len(scores))
    column = torch.arange(len(row), device=row.device) - (sizes.cumsum(0) - sizes)[row]
    width = int(sizes.max())
    table = torch.full((len(scores), width), -1.0, dtype=scores.dtype, device=scores.device)
    table[row, column] = scores[row, index]
    prior = torch.zeros_like(table, dtype=torch.int64)
    prior[row, column] = index
    table, order = table.sort(dim=1, descending=True, stable=True)
    k = min(width, cap)
    return table[:, :k], prior.gather(1, order[:, :k]), sizes.clamp(max=cap)


#: Ranks that :func:`_nms_rank_by_rank` decides together, the best of 4 to 64 at batch 1 to 32.
NMS_BLOCK = 8


def _nms_rank_by_rank(boxes: Tensor, counts: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within every row of a table of boxes, all rows at once.

    A box is kept unless a kept box before it in its row overlaps it. The ranks are decided
    in blocks of :data:`NMS_BLOCK`, first to last. For a block, the kept boxes of the earlier
    blocks (already decided) suppress what they overlap; inside the block, whether a box
    survives depends on which boxes before it in the block survive, which a few rounds of
    "keep the boxes that no kept box before them overlaps" settle (each round fixes at least
    one more rank, and usually one or two rounds suffice). Each box is compared only with the
    boxes up to its block in its own row, however long the other rows are.

    Args:
        boxes (Tensor[G, K, 4]): corner form; each row sorted by score, best first.
        counts (Tensor[G]): row ``g``'s boxes are its first ``counts[g]``, the rest is filler.

    Returns:
        Tensor[G, K]: bool, the kept boxes (never the filler).
    """
    # Rows sorted by count: the rows that have boxes in a block are a prefix.
    order = counts.argsort(descending=True, stable=True)
    counts = counts[order]
    # Corners as [2, G, K] tables, x then y: every step below works on both coordinates at once.
    corners = boxes[order].permute(2, 0, 1)
    top_left, bottom_right = corners[:2].contiguous(), corners[2:].contiguous()
    area = (corners[2] - corners[0]) * (corners[3] - corners[1])
    width = boxes.shape[1]
    ranks = torch.arange(width, device=boxes.device)
    keep = ranks < counts[:, None]
    starts = ranks[::NMS_BLOCK]
    rows_from = (counts > starts[:, None]).sum(dim=1).tolist()
    earlier = ranks[:NMS_BLOCK, None] > ranks[:NMS_BLOCK]  # [j, i]: rank i comes before rank j
    for start, rows in zip(starts.tolist(), rows_from):
        if rows == 0:
            break
        stop = min(start + NMS_BLOCK, width)
        block, upto = slice(start, stop), slice(0, stop)
        # IoU of each box j of the block with each box i up to the block: [rows, j, i].
        low = torch.maximum(top_left[:, :rows, block, None], top_left[:, :rows, None, upto])
        high = torch.minimum(
            bottom_right[:, :rows, block, None], bottom_right[:, :rows, None, upto]
        )
        size = (high - low).clamp_(min=0)
        inter = size[0] * size[1]
        # As torchvision's kernel: the IoU of two empty boxes is 0 / 0, NaN, never above.
        overlap = inter / (area[:rows, block, None] + area[:rows, None, upto] - inter)
        overlaps = overlap > iou_threshold
        decided = keep[:rows, None, :start]
        candidates = keep[:rows, block] & ~(overlaps[..., :start] & decided).any(dim=-1)
        inside = overlaps[..., start:] & earlier[: stop - start, : stop - start]
        kept = candidates
        while True:
            settled = candidates & ~(inside & kept[:, None, :]).any(dim=-1)
            if torch.equal(settled, kept):
                break
            kept = settled
        keep[:rows, block] = kept
    result = torch.empty_like(keep)
    result[order] = keep
    return result


def _best_per_image(
    boxes: Tensor, scores: Tensor, keep: Tensor, num_images: int, top_k: int
) -> list[Detections]:
    """The ``top_k`` best kept candidates of each image, all classes together.

    Args:
        boxes (Tensor[G, K, 4]), scores (Tensor[G, K]), keep (Tensor[G, K]): the candidates
            of the ``G = B * (C - 1)`` groups, image by image, class by class.
    """
    k = scores.shape[1]
    per_image = scores.shape[0] // num_images * k
    # Dropped candidates get score -1, below every probability, so they sort last.
    ranked, position = (
        torch.where(keep, scores, -1.0)
        .reshape(num_images, per_image)
        .sort(dim=1, descending=True, stable=True)
    )
    ranked, position = ranked[:, :top_k], position[:, :top_k]
    found = ranked >= 0
    boxes = boxes.reshape(num_images, per_image, 4).gather(1, position[..., None].expand(-1, -1, 4))
    labels = position.div(k, rounding_mode="floor") + 1
    sizes = found.sum(dim=1).tolist()
    parts = (t[found].split(sizes) for t in (boxes, ranked, labels))
    return [Detections(*image) for image in zip(*parts)]


def _check_detect_inputs(loc: Tensor, conf: Tensor, priors: Tensor) -> None:
    shapes = f"loc {list(loc.shape)}, conf {list(conf.shape)}, priors {list(priors.shape)}"
    if loc.ndim != 3 or loc.shape[2] != 4 or conf.ndim != 3 or priors.ndim != 2:
        raise ValueError(f"expected loc [B, P, 4], conf [B, P, C] and priors [P, 4], got {shapes}")
    if priors.shape[1] != 4 or loc.shape[:2] != conf.shape[:2] or loc.shape[1] != len(priors):
        raise ValueError(
            f"loc [B, P, 4], conf [B, P, C] and priors [P, 4] must agree on B and P, got {shapes}"
        )
    check_num_classes(conf.shape[2], "conf")
    for name, t in (("loc", loc), ("conf", conf), ("priors", priors)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        if non_finite_rows(t) is not None:
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def _check_fraction(value: float, name: str, upper_inclusive: bool) -> None:
    inside = 0 <= value <= 1 if upper_inclusive else 0 <= value < 1
    if not inside:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")
