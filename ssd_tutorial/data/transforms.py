"""SSD's data augmentation and batching, built from ``torchvision.transforms.v2``.

The paper's ablation shows augmentation matters a lot for SSD. :func:`train_transforms` chains:

1. crowd regions out (COCO ``iscrowd``): a crowd is not one object, so not a training target;
2. photometric distortion: random brightness, contrast, saturation, hue and channel order;
3. zoom out ("expand"): the image is placed at a random spot of a canvas up to 4x its side,
   filled with the mean colour, which makes every object smaller (good for small objects);
4. IoU-constrained random crop: a patch with sides 0.3-1x the image's (aspect ratio 1/2-2)
   whose IoU with at least one object reaches a randomly chosen minimum (0, 0.1, 0.3, 0.5, 0.7
   or 0.9), or else the whole image; it keeps only the boxes whose centre lies inside the
   patch, cut to the patch, as SSD does (:class:`BatchedIoUCrop`);
5. horizontal flip;
6. resize to the network's ``size x size`` (boxes clamped to the image: float rounding can
   put an edge on the border just outside it), float conversion, ImageNet normalisation (as
   :func:`ssd_tutorial.preprocess.preprocess`);
7. boxes that became empty or smaller than one pixel are removed with their labels;
8. boxes converted to relative corner form in ``[0, 1]``, what the matching expects.

Each augmentation can be switched off, and :func:`eval_transforms` keeps steps 6 and 8 only
(every object is kept for evaluation, with its ``difficult``/``iscrowd`` flags). Samples are
``(image, target)`` pairs as the readers of :mod:`ssd_tutorial.data` return them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssd_tutorial.boxes import pairwise_iou
from ssd_tutorial.preprocess import IMAGENET_MEAN, IMAGENET_STD

#: Target fields with one entry per box, removed together with their box.
PER_BOX_FIELDS: tuple[str, ...] = ("labels", "difficult", "iscrowd")
#: The ImageNet mean as uint8 RGB: the zoom-out canvas colour, which normalises to about 0.
MEAN_FILL: tuple[int, ...] = tuple(round(255 * m) for m in IMAGENET_MEAN)

Sample = tuple[Any, dict[str, Any]]


def train_transforms(
    size: int,
    photometric: bool = True,
    zoom_out: bool = True,
    iou_crop: bool = True,
    flip: bool = True,
) -> v2.Compose:
    """SSD's training augmentation (see the module docstring), each step optional.

    Args:
        size: side of the square network input (300 for SSD300).
        photometric, zoom_out, iou_crop, flip: switch the augmentation steps on or off.

    Returns:
        A callable ``(image, target) -> (image, target)``: ``image`` float ``[3, size, size]``
        normalised; ``target["boxes"]`` float ``[N, 4]`` relative corner form in ``[0, 1]``,
        with ``labels`` (and ``difficult`` if present) for the boxes that remain.
    """
    steps: list[Callable] = [drop_crowd]
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    if zoom_out:
        fill = {tv_tensors.Image: MEAN_FILL, tv_tensors.Mask: 0}
        steps.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5))
    if iou_crop:
        # The crop marks the boxes whose centre left the patch as empty: sanitise right away.
        steps += [BatchedIoUCrop(), v2.SanitizeBoundingBoxes(labels_getter=per_box_fields)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        *_to_network_input(size),
        v2.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_fields),
        relative_boxes,
    ]
    return v2.Compose(steps)


def eval_transforms(size: int) -> v2.Compose:
    """Resize, normalise and make boxes relative; no box is removed.

    Returns:
        A callable ``(image, target) -> (image, target)`` with the same output format as
        :func:`train_transforms`.
    """
    return v2.Compose([*_to_network_input(size), relative_boxes])


def _to_network_input(size: int) -> list[Callable]:
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    return [
        v2.Resize((size, size), antialias=True),
        # Scaling in float32 can put a box edge on the image border a hair outside it
        # (90 * 96 / 90 = 96.00001), and SanitizeBoundingBoxes would then drop the box.
        v2.ClampBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


class BatchedIoUCrop(v2.RandomIoUCrop):
    """``v2.RandomIoUCrop`` with its random trials drawn and tested together.

    Same crops, same distribution, fewer Python steps. torchvision draws a minimum IoU, then
    tries up to ``trials`` random patches one after the other (a dozen small tensor operations
    each) and takes the first acceptable one; if none is, it draws a new minimum. With small
    objects the high minimums are out of reach, so that loop ran hundreds of times per image
    and took most of the pipeline's time. Here :attr:`rounds` minimums and ``trials`` patches
    for each are one ``[rounds, trials, 4]`` tensor, and the first acceptable patch of the first
    round that has one is picked from a mask. A patch is acceptable as in torchvision: sides
    ``min_scale..max_scale`` of the image's, aspect ratio in ``[min_aspect_ratio,
    max_aspect_ratio]``, at least one box centre strictly inside, and the largest IoU between
    the patch and those boxes at least the round's minimum.
    """

    #: Minimum-IoU draws tested per batch of trials.
    rounds = 8

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        corners = v2.functional.convert_bounding_box_format(
            boxes.as_subclass(Tensor), boxes.format, tv_tensors.BoundingBoxFormat.XYXY
        ).float()
        if len(corners) == 0:
            # No patch can hold a box centre: only the "whole image" option would ever succeed.
            return {}
        height, width = boxes.canvas_size
        image_size = torch.tensor([width, height])
        centres = (corners[:, :2] + corners[:, 2:]) / 2
        options = torch.tensor(self.options)
        while True:
            minimum_iou = options[torch.randint(len(options), (self.rounds,))]
            scale = torch.rand(self.rounds, self.trials, 2)
            sizes = (
                (self.min_scale + (self.max_scale - self.min_scale) * scale) * image_size
            ).long()
            top_left = ((image_size - sizes) * torch.rand(self.rounds, self.trials, 2)).long()
            patches = torch.cat((top_left, top_left + sizes), dim=-1)  # [rounds, trials, 4]
            aspect = sizes[..., 0] / sizes[..., 1].clamp(min=1)
            inside = (  # [rounds, trials, boxes]
                (patches[..., None, :2] < centres) & (centres < patches[..., None, 2:])
            ).all(dim=-1)
            iou = pairwise_iou(patches.float(), corners).masked_fill(~inside, -1.0)
            acceptable = (
                (sizes > 0).all(dim=-1)
                & (aspect >= self.min_aspect_ratio)
                & (aspect <= self.max_aspect_ratio)
                & (iou.max(dim=-1).values >= minimum_iou[:, None])
            )
            # A minimum of 1 or more is the "keep the whole image" option: that round succeeds.
            done = (minimum_iou >= 1.0) | acceptable.any(dim=1)
            if not done.any():
                continue
            round_ = int(done.nonzero()[0, 0])
            if minimum_iou[round_] >= 1.0:
                return {}
            trial = int(acceptable[round_].nonzero()[0, 0])
            left, top, right, bottom = patches[round_, trial].tolist()
            return {
                "top": top,
                "left": left,
                "height": bottom - top,
                "width": right - left,
                "is_within_crop_area": inside[round_, trial],
            }

    # torchvision < 0.21 calls this method by its former private name.
    _get_params = make_params


def per_box_fields(sample: Sample) -> tuple[Tensor, ...]:
    """The target tensors that go with the boxes (``labels_getter`` of SanitizeBoundingBoxes)."""
    _, target = sample
    return tuple(target[key] for key in PER_BOX_FIELDS if key in target)


def drop_crowd(image: Any, target: dict[str, Any]) -> Sample:
    """Remove the boxes flagged ``target["iscrowd"]`` (and their other fields); a no-op without
    that field."""
    if "iscrowd" not in target:
        return image, target
    keep = ~target["iscrowd"]
    target = dict(target)
    for key, value in target.items():
        if key in PER_BOX_FIELDS:
            target[key] = value[keep]
        elif isinstance(value, tv_tensors.BoundingBoxes) or _is_instance_masks(value, len(keep)):
            target[key] = tv_tensors.wrap(value[keep], like=value)
    return image, target


def _is_instance_masks(value: Any, boxes: int) -> bool:
    """One mask per box ``[N, H, W]`` (not a semantic ``[H, W]`` map), as SanitizeBoundingBoxes
    decides."""
    return isinstance(value, tv_tensors.Mask) and value.ndim == 3 and value.shape[0] == boxes


def relative_boxes(image: Any, target: dict[str, Any]) -> Sample:
    """Pixel ``BoundingBoxes`` (XYXY) -> plain float ``[N, 4]`` relative to the image size."""
    boxes = target["boxes"]
    _check_pixel_boxes(boxes)
    height, width = boxes.canvas_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    target = {**target, "boxes": boxes.as_subclass(Tensor).float() / scale}
    return image, target


def _check_pixel_boxes(boxes: Any) -> None:
    if not isinstance(boxes, tv_tensors.BoundingBoxes) or boxes.format.name != "XYXY":
        raise ValueError(
            "target['boxes'] must be tv_tensors.BoundingBoxes in XYXY format, got "
            f"{type(boxes).__name__} {getattr(boxes, 'format', '')}"
        )


class Batch(NamedTuple):
    """A batch of samples.

    Attributes:
        images: float ``[B, 3, S, S]``.
        boxes: ``B`` tensors ``[N_i, 4]``, relative corner form.
        labels: ``B`` int64 tensors ``[N_i]``.
        extra: every other target field, one list of ``B`` values per key (e.g.
            ``"difficult"``, ``"iscrowd"``, ``"image_id"``).
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    extra: dict[str, list]


def collate(batch: Sequence[Sample]) -> Batch:
    """``collate_fn`` for a DataLoader: stack the images, keep boxes per image (their number
    varies)."""
    return Batch(_stacked_images([image for image, _ in batch]), *_gathered_targets(batch))


def collate_flipped(batch: Sequence[Sample], p: float = 0.5) -> Batch:
    """``collate_fn`` that flips and normalises a whole batch at once: the flip-only training
    pipeline, ``train_transforms(size, photometric=False, zoom_out=False, iou_crop=False)``,
    for items that are already ``size`` px, read without transforms (an
    :class:`~ssd_tutorial.data.pool.ImagePool` of images drawn at the network's size).

    Each image is mirrored left-right with probability ``p`` (one draw per image from torch's
    global RNG), then the batch is scaled to float and normalised in one operation. The boxes
    of all the images, concatenated, follow their image and go through the pipeline's box steps
    in one go: crowds out, clamped to the image, boxes under one pixel removed with their
    fields, made relative. The result is the pipeline's item by item, then :func:`collate`;
    but the pipeline runs a dozen ``transforms.v2`` steps on every image.

    Args:
        batch: ``(image, target)`` pairs: uint8 ``[3, H, W]`` images of one shape and targets
            with pixel ``BoundingBoxes`` (XYXY) and ``labels``.
        p: probability of flipping each image.

    Returns:
        A :class:`Batch` like :func:`collate` gives for the pipeline's output.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    images = _stacked_images([image for image, _ in batch])
    if images.dtype != torch.uint8:
        raise ValueError(
            f"collate_flipped needs uint8 images read without transforms, got {images.dtype} "
            "(use collate after train_transforms instead)"
        )
    flipped = torch.rand(len(batch)) < p
    images[flipped] = images[flipped].flip(-1)  # a new tensor: the pool's images stay
    images = v2.functional.to_dtype(images, torch.float32, scale=True)
    images = v2.functional.normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    targets = [drop_crowd(image, target)[1] for image, target in batch]
    samples = _flipped_box_targets(targets, flipped, images.shape[-2:])
    return Batch(images, *_gathered_targets(samples))


def _flipped_box_targets(
    targets: list[dict[str, Any]], flipped: Tensor, canvas: tuple[int, int]
) -> list[Sample]:
    """The targets with their boxes mirrored where ``flipped`` (``[B]`` bool), clamped,
    sanitised and relative: the box steps of :func:`train_transforms`, on every box at once."""
    height, width = canvas
    for target in targets:
        _check_pixel_boxes(target["boxes"])
    counts = [len(target["boxes"]) for target in targets]
    boxes = torch.cat([target["boxes"].as_subclass(Tensor) for target in targets]).float()
    mirror = flipped.repeat_interleave(torch.tensor(counts, dtype=torch.long))
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    boxes = torch.where(mirror[:, None], torch.stack((width - x2, y1, width - x1, y2), 1), boxes)
    boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    boxes = v2.functional.clamp_bounding_boxes(boxes)
    _, valid = v2.functional.sanitize_bounding_boxes(boxes, min_size=1)
    boxes = boxes.as_subclass(Tensor)
    boxes = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
    samples = []
    for target, flip, keep, image_boxes in zip(
        targets, flipped.tolist(), valid.split(counts), boxes.split(counts)
    ):
        fields = {}
        for key, value in target.items():
            if flip and isinstance(value, tv_tensors.Mask):
                value = v2.functional.horizontal_flip(value)
            if key in PER_BOX_FIELDS or _is_instance_masks(value, len(keep)):
                value = value[keep]
            fields[key] = value
        samples.append((None, {**fields, "boxes": image_boxes[keep]}))
    return samples


def _stacked_images(images: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(
            f"collate needs images of one shape (resize them with train_transforms or "
            f"eval_transforms), got shapes {sorted(shapes)}"
        )
    return torch.stack([image.as_subclass(Tensor) for image in images])


def _gathered_targets(batch: Sequence[Sample]) -> tuple[list[Tensor], list[Tensor], dict]:
    """Boxes, labels and every other field of the targets, one list entry per image."""
    targets = [target for _, target in batch]
    keys = set(targets[0])
    if any(set(target) != keys for target in targets):
        raise ValueError(
            "collate needs the same target fields for every image, got "
            f"{[sorted(target) for target in targets]}"
        )
    extra = {key: [t[key] for t in targets] for key in sorted(keys - {"boxes", "labels"})}
    return [t["boxes"].as_subclass(Tensor) for t in targets], [t["labels"] for t in targets], extra
