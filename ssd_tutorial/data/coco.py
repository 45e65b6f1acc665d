"""COCO format: a reader of ``instances_*.json`` detection annotations.

The file holds three lists: ``images`` (``id``, ``file_name``, ``width``, ``height``),
``categories`` (``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``,
``bbox = [x, y, width, height]`` in pixels, ``iscrowd``).

Labels. COCO's category ids are not contiguous (the 80 classes of COCO 2017 use ids 1..90), but
SSD's classifier has one output per class. Categories are sorted by id and numbered 1..K
(0 is the background): ``category_to_label`` and ``label_to_category`` keep the mapping both
ways, the latter to write detections back with the original ids for COCO's evaluation.

Boxes. ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``. COCO's boxes come from polygons and
may stick out of the image by a fraction of a pixel; up to :data:`BORDER_TOLERANCE` pixels are
clipped to the image, further out is an error.

Crowd regions. An annotation with ``iscrowd=1`` covers a group of objects (a crowd of people)
rather than one object. The reader keeps it, flagged in ``target["iscrowd"]``: COCO's evaluation
ignores detections that fall on crowd regions, so it needs them; training must not use them as
objects (:func:`ssd_tutorial.data.transforms.train_transforms` removes them first).

Images without any annotation are kept (they teach the model what background looks like).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ssd_tutorial.data.files import (
    InvalidSampleError,
    check_image_file,
    index_samples,
    pixel_boxes,
    read_image,
)

#: Pixels by which a box may leave the image before it counts as invalid (it is clipped).
BORDER_TOLERANCE: float = 1.0


@dataclass(frozen=True)
class COCOImage:
    """One image of a COCO file and its annotations, checked and converted.

    Attributes:
        image_id: COCO's id of the image.
        path: the image file.
        size: ``(height, width)``.
        boxes: ``[N, 4]`` corner form ``(x1, y1, x2, y2)`` in pixels, inside the image.
        labels: ``[N]`` contiguous labels in ``1..K``.
        iscrowd: ``[N]`` crowd flags.
    """

    image_id: int
    path: Path
    size: tuple[int, int]
    boxes: list[list[float]]
    labels: list[int]
    iscrowd: list[bool]


class COCODetection(Dataset):
    """Images and boxes of a COCO-format detection annotation file.

    Args:
        image_dir: folder of the images (``file_name`` is relative to it).
        annotation_file: the ``instances_*.json`` file.
        transforms: optional callable ``(image, target) -> (image, target)``.
        skip_invalid: leave out invalid images (and annotations of unknown images) with a
            warning instead of raising (see :mod:`ssd_tutorial.data.files`).

    Attributes:
        class_names: ``("background", name of label 1, ...)``.
        category_to_label, label_to_category: the id mapping, both ways.
        image_ids: COCO ids of the images, in item order.

    Each item is ``(image, target)``: ``image`` a ``tv_tensors.Image`` uint8 ``[3, H, W]``;
    ``target["boxes"]`` ``tv_tensors.BoundingBoxes`` ``[N, 4]`` XYXY in pixels,
    ``target["labels"]`` int64 ``[N]`` in ``1..K``, ``target["iscrowd"]`` bool ``[N]`` and
    ``target["image_id"]`` the COCO image id (``int``).
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        transforms: Callable | None = None,
        skip_invalid: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        content = _load_json(self.annotation_file)
        categories = sorted(content["categories"], key=lambda category: category["id"])
        self.category_to_label = {c["id"]: label for label, c in enumerate(categories, start=1)}
        self.label_to_category = {
            label: category_id for category_id, label in self.category_to_label.items()
        }
        self.class_names = ("background", *(c["name"] for c in categories))
        entries = {entry["id"]: entry for entry in content["images"]}
        by_image = defaultdict(list)
        for annotation in content["annotations"]:
            by_image[annotation.get("image_id")].append(annotation)
        dangling = [
            a for image_id in by_image if image_id not in entries for a in by_image[image_id]
        ]
        index_samples(dangling, self._reject_dangling, skip_invalid)
        self.samples: list[COCOImage] = index_samples(
            ((entry, by_image[image_id]) for image_id, entry in entries.items()),
            self._index,
            skip_invalid,
        )
        self.image_ids = [sample.image_id for sample in self.samples]

    def _reject_dangling(self, annotation: dict) -> None:
        raise InvalidSampleError(
            f"annotation file {self.annotation_file}: annotation {annotation.get('id')} points "
            f"at image id {annotation.get('image_id')}, which is not in its 'images' list"
        )

    def _index(self, item: tuple[dict, list[dict]]) -> COCOImage:
        entry, annotations = item
        where = f"annotation file {self.annotation_file}, image {entry.get('id')}"
        try:
            path = self.image_dir / entry["file_name"]
            size = (int(entry["height"]), int(entry["width"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidSampleError(
                f"{where}: an image entry needs 'id', 'file_name', 'width' and 'height', "
                f"got {entry}"
            ) from None
        check_image_file(path, size)
        boxes, labels, iscrowd = [], [], []
        for annotation in annotations:
            label = self.category_to_label.get(annotation.get("category_id"))
            if label is None:
                raise InvalidSampleError(
                    f"{where}: annotation {annotation.get('id')} has unknown category_id "
                    f"{annotation.get('category_id')}; known: {sorted(self.category_to_label)}"
                )
            boxes.append(_corner_box(annotation, size, where))
            labels.append(label)
            iscrowd.append(bool(annotation.get("iscrowd", 0)))
        return COCOImage(entry["id"], path, size, boxes, labels, iscrowd)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Tensor | int]]:
        sample = self.samples[index]
        image = read_image(sample.path, sample.size)
        target = {
            "boxes": pixel_boxes(sample.boxes, sample.size),
            "labels": torch.tensor(sample.labels, dtype=torch.int64),
            "iscrowd": torch.tensor(sample.iscrowd, dtype=torch.bool),
            "image_id": sample.image_id,
        }
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target


def _load_json(path: Path) -> dict:
    try:
        with open(path) as file:
            content = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {error}") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        raise ValueError(f"COCO annotation file {path} has no {', '.join(map(repr, missing))}")
    return content


def _corner_box(annotation: dict, size: tuple[int, int], where: str) -> list[float]:
    """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clipped to the image, or InvalidSampleError."""
    height, width = size
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise InvalidSampleError(
            f"{where}: annotation {annotation.get('id')} needs 'bbox' = [x, y, width, height], "
            f"got {bbox!r}"
        )
    x, y, w, h = (float(value) for value in bbox)
    tolerance = BORDER_TOLERANCE
    if not (
        w > 0
        and h > 0
        and x >= -tolerance
        and y >= -tolerance
        and x + w <= width + tolerance
        and y + h <= height + tolerance
    ):
        raise InvalidSampleError(
            f"{where}: annotation {annotation.get('id')} has bbox [x, y, w, h] = {bbox}, which "
            f"is empty or outside the image of width {width} and height {height}"
        )
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
