"""Default boxes chosen for the data: k-means on the shapes of the ground-truth boxes.

SSD's default boxes come from a formula (scales spread evenly, aspect ratios 1, 2, 3), so they
fit the objects of a data set only as well as the formula happens to. YOLOv2 chooses its
anchor boxes from the data instead: k-means clustering of the training boxes' widths and heights,
with the distance ``d(box, centroid) = 1 - IoU(box, centroid)`` between two boxes placed at
the same centre, so that only shape and size count. Plain Euclidean distance on ``(w, h)``
would let large boxes dominate the error; ``1 - IoU`` treats a 10% miss the same at any size.

* :func:`shape_iou`: the IoU of two boxes aligned at a common centre, for all pairs;
* :func:`kmeans_shapes`: the clustering (k-means++ start, seeded, vectorised, deterministic);
* :func:`mean_best_iou`: how well a config's box shapes fit the objects (YOLOv2's "Avg IoU");
* :func:`match_quality`: the same question with the real default boxes, positions included, as
  SSD's matching sees them;
* :func:`kmeans_config`: clusters turned into an :class:`~ssd_tutorial.anchors.AnchorConfig`
  with explicit shapes, to train an SSD with: per map (grid-aware) or all at once (YOLOv3).

Shapes are relative to the image, ``(w, h)`` in ``(0, 1]``, like the default boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssd_tutorial.anchors import AnchorConfig, box_shapes, default_boxes
from ssd_tutorial.boxes import IOU_THRESHOLD, box_iou, center_to_corners
from ssd_tutorial.checks import describe, non_finite_rows
from ssd_tutorial.matching import match_indices


def shape_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of every pair of box shapes, the two boxes centred on the same point.

    One box then contains the other along each axis, so the intersection is
    ``min(w1, w2) * min(h1, h2)``.

    Args:
        wh1 (Tensor[N, 2]): widths and heights.
        wh2 (Tensor[M, 2]): widths and heights.

    Returns:
        Tensor[N, M]: IoU in ``[0, 1]``.
    """
    inter = torch.minimum(wh1[:, None, :], wh2[None, :, :]).prod(dim=-1)
    union = wh1.prod(dim=-1)[:, None] + wh2.prod(dim=-1)[None, :] - inter
    return inter / union


def kmeans_shapes(wh: Tensor, k: int, seed: int = 0, max_iter: int = 300) -> Tensor:
    """k-means of box shapes under the distance ``1 - shape_iou``.

    Starts from k-means++ (each new centre drawn with probability proportional to its squared
    distance to the nearest chosen one, from a generator seeded with ``seed``), then alternates
    assigning every box to the centre of highest IoU and moving each centre to the mean ``(w, h)``
    of its boxes (YOLOv2's update), until the assignment no longer changes or ``max_iter``
    rounds. A centre left without boxes keeps its place. Computed in float64: the same input and
    seed give the same centres.

    Args:
        wh (Tensor[N, 2]): positive widths and heights (e.g. relative to the image).
        k: number of clusters, ``1 <= k <= N``.
        seed: seeds the k-means++ start.
        max_iter: the most assignment-update rounds.

    Returns:
        Tensor[k, 2]: the centres, float64, sorted by area (smallest first; equal areas by
        width).
    """
    wh = _check_shapes(wh, "wh")
    if not 1 <= k <= len(wh):
        raise ValueError(f"k must be between 1 and the number of boxes ({len(wh)}), got {k}")
    centres = _kmeans_plus_plus(wh, k, torch.Generator().manual_seed(seed))
    assignment = None
    for _ in range(max_iter):
        new_assignment = shape_iou(wh, centres).argmax(dim=1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = torch.bincount(assignment, minlength=k).to(wh.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assignment, wh)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return _sorted_by_area(centres)


def mean_best_iou(gt_wh: Tensor, config: AnchorConfig) -> float:
    """YOLOv2's "Avg IoU": the mean over objects of the best :func:`shape_iou` with any of the
    config's box shapes, every box centred on the object.

    This is the quantity k-means maximises, and it depends on shapes only: it is what the
    default boxes could reach if one of them sat exactly on each object's centre. SSD's boxes
    sit on a grid of cell centres, so the IoU that matching really sees is lower, the more so on
    the coarse maps: :func:`match_quality` measures that one.

    Args:
        gt_wh (Tensor[N, 2]): the objects' widths and heights, relative to the image.
        config: the default boxes (their shapes on every map, clipped to the image as
            :func:`~ssd_tutorial.anchors.default_boxes` clips them).
    """
    gt_wh = _check_shapes(gt_wh, "gt_wh")
    shapes = torch.cat(box_shapes(config))
    if config.clip:
        shapes = shapes.clamp(max=1)
    return float(shape_iou(gt_wh, shapes).max(dim=1).values.mean())


def match_quality(
    gt_boxes: Sequence[Tensor], config: AnchorConfig, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, float]:
    """How well the real default boxes of ``config`` cover the objects, as matching sees them.

    Args:
        gt_boxes (list of Tensor[n_i, 4]): per image, the objects' corner-form boxes, relative
            to the image (e.g. the targets of ``shapes_data(..., augment=False)``).
        config: the default boxes.
        iou_threshold: the matching threshold (SSD's 0.5).

    Returns:
        ``mean_best_iou``: the mean over objects of the highest IoU with any default box;
        ``matched_fraction``: the fraction of objects whose best IoU reaches ``iou_threshold``
        (the others get only the one box step 1 of the matching forces on them);
        ``positives_per_object``: the mean number of default boxes matched to an object
        (:func:`~ssd_tutorial.matching.match_indices`), i.e. training examples per object.
    """
    if sum(len(b) for b in gt_boxes) == 0:
        raise ValueError("gt_boxes holds no object: match quality is undefined")
    priors = default_boxes(config, dtype=torch.float64)
    boxes = [b.to(torch.float64) for b in gt_boxes]
    objects = torch.cat(boxes)
    best = box_iou(objects, center_to_corners(priors)).max(dim=1).values
    index = match_indices(boxes, priors, iou_threshold)  # [B, P], -1 for background
    first = torch.tensor([0, *[len(b) for b in boxes[:-1]]]).cumsum(0)
    positive = index >= 0
    owner = (first[:, None] + index)[positive]
    positives = torch.bincount(owner, minlength=len(objects))
    return {
        "mean_best_iou": float(best.mean()),
        "matched_fraction": float((best >= iou_threshold).double().mean()),
        "positives_per_object": float(positives.double().mean()),
    }


def kmeans_config(
    gt_wh: Tensor,
    base: AnchorConfig,
    name: str = "k-means",
    seed: int = 0,
    per_map: bool = True,
) -> AnchorConfig:
    """A config with ``base``'s feature maps, steps and boxes per cell, and k-means shapes.

    Map ``k`` gets ``base.boxes_per_cell[k]`` shapes, so the network's heads keep their sizes
    and the number of default boxes stays ``base.num_boxes``; within a cell the clusters come
    smallest first. Two ways to hand them out:

    * ``per_map=True`` (grid-aware): every object goes to the map whose base scale ``s_k`` is
      nearest to its own scale ``sqrt(w h)`` (in log scale), and each map clusters its own
      objects. The shapes stay near the sizes ``base`` gives the map, which its grid step
      suits. A map with fewer objects than boxes per cell keeps ``base``'s boxes, in their
      order.
    * ``per_map=False`` (YOLOv3's way): ``sum(base.boxes_per_cell)`` clusters of all the
      objects, sorted by area and handed out in order, the smallest to the largest map. It
      fits the shapes best, but ignores that a box much smaller than its map's step can reach
      a good IoU only with objects centred near a cell centre.

    ``min_sizes``/``max_sizes`` record the smallest and largest scale ``sqrt(w h)`` on each map
    (for tables) and ``aspect_ratios`` are empty: the boxes are ``shapes``.

    Args:
        gt_wh (Tensor[N, 2]): the training objects' widths and heights, relative to the image.
        base: the config whose maps, steps, image size and boxes per cell are kept.
        name: the new config's name.
        seed: seeds :func:`kmeans_shapes`.
        per_map: cluster each map's objects (default) or all objects at once.
    """
    gt_wh = _check_shapes(gt_wh, "gt_wh")
    per_cell = base.boxes_per_cell
    if per_map:
        per_map_shapes = _clusters_per_map(gt_wh, base, seed)
    else:
        per_map_shapes = list(kmeans_shapes(gt_wh, sum(per_cell), seed).split(list(per_cell)))
    pixels = [shapes * base.image_size for shapes in per_map_shapes]
    scales = [shapes.prod(dim=1).sqrt() for shapes in pixels]
    return AnchorConfig(
        name=name,
        image_size=base.image_size,
        feature_maps=base.feature_maps,
        steps=base.steps,
        min_sizes=tuple(float(s.min()) for s in scales),
        max_sizes=tuple(float(s.max()) for s in scales),
        aspect_ratios=((),) * len(per_cell),
        clip=base.clip,
        shapes=tuple(tuple((float(w), float(h)) for w, h in shapes) for shapes in pixels),
    )


def map_of_objects(gt_wh: Tensor, config: AnchorConfig) -> Tensor:
    """The map each object belongs to by size: the one whose scale ``s_k`` is nearest to the
    object's ``sqrt(w h)`` in log scale (the boundaries sit at ``sqrt(s_k s_{k+1})``).

    Returns:
        Tensor[N], int64: a map index for each row of ``gt_wh``.
    """
    gt_wh = _check_shapes(gt_wh, "gt_wh")
    s = torch.tensor(config.min_sizes, dtype=torch.float64) / config.image_size
    return torch.bucketize(gt_wh.prod(dim=1).sqrt(), (s[:-1] * s[1:]).sqrt())


def _clusters_per_map(gt_wh: Tensor, base: AnchorConfig, seed: int) -> list[Tensor]:
    """Per map, ``[k, 2]`` relative shapes: k-means of its objects, or ``base``'s boxes."""
    home = map_of_objects(gt_wh, base)
    shapes = []
    for k, (count, formula) in enumerate(zip(base.boxes_per_cell, box_shapes(base))):
        objects = gt_wh[home == k]
        shapes.append(kmeans_shapes(objects, count, seed) if len(objects) >= count else formula)
    return shapes


def _check_shapes(wh: Tensor, name: str) -> Tensor:
    if not isinstance(wh, Tensor) or wh.ndim != 2 or wh.shape[1] != 2 or len(wh) == 0:
        raise ValueError(f"{name} must be a non-empty Tensor[N, 2] of (w, h), got {describe(wh)}")
    wh = wh.to(torch.float64)
    if non_finite_rows(wh) is not None or not bool((wh > 0).all()):
        raise ValueError(f"{name} must hold finite, positive widths and heights")
    return wh


def _kmeans_plus_plus(wh: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` starting centres ``[k, 2]`` chosen among the boxes (k-means++ with ``1 - IoU``)."""
    chosen = [int(torch.randint(len(wh), (1,), generator=generator))]
    distance = 1 - shape_iou(wh, wh[chosen[0]][None])[:, 0]
    for _ in range(1, k):
        weights = distance.square()
        if not bool((weights > 0).any()):  # every box is already a centre: take unused ones
            weights = torch.ones_like(weights).index_fill_(0, torch.tensor(chosen), 0)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        distance = torch.minimum(distance, 1 - shape_iou(wh, wh[chosen[-1]][None])[:, 0])
    return wh[chosen].clone()


def _sorted_by_area(centres: Tensor) -> Tensor:
    by_width = centres[centres[:, 0].argsort(stable=True)]
    return by_width[by_width.prod(dim=1).argsort(stable=True)]
