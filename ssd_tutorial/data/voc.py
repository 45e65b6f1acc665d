"""Pascal VOC: the 20 classes and a reader of the VOC directory layout.

A VOC year directory (e.g. ``VOCdevkit/VOC2007``) holds::

    JPEGImages/000005.jpg             the images
    Annotations/000005.xml            one XML file per image: <size>, then one <object> per object
    ImageSets/Main/trainval.txt       the image ids of each split, one per line

Coordinates. VOC annotations are 1-based pixel indices, inclusive: ``xmin=1, xmax=W`` is a box
over the whole width. This package uses continuous pixel coordinates in which pixel ``i``
(0-based) covers ``[i, i + 1]``, so a VOC box becomes ``(xmin - 1, ymin - 1, xmax, ymax)``: its
width ``xmax - xmin + 1`` is the number of pixel columns it covers, as in the VOC evaluation
code. Detectron2 converts the same way. amdegroot/ssd.pytorch subtracts 1 from all four
coordinates (boxes one pixel too small), and torchvision's ``VOCDetection`` returns the raw
numbers. The differences are at most one pixel, but they are systematic.

Difficult objects. VOC marks objects that are hard to recognise ``<difficult>1</difficult>``; its
evaluation ignores them (neither a hit nor a miss). The reader keeps them, flagged in
``target["difficult"]``: the original SSD trains on them, and evaluation needs the flag.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
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

#: The 20 Pascal VOC classes, in the usual (alphabetical) order; label ``i + 1`` is
#: ``VOC_CLASSES[i]`` and label 0 is the background.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VOCAnnotation:
    """The content of one VOC XML file, boxes already converted (see the module docstring).

    Attributes:
        size: ``(height, width)`` of the image.
        boxes: ``[N, 4]`` corner form ``(x1, y1, x2, y2)`` in pixels, 0-based continuous.
        labels: ``[N]`` labels in ``1..len(classes)``.
        difficult: ``[N]`` the VOC ``difficult`` flags.
    """

    size: tuple[int, int]
    boxes: list[list[float]]
    labels: list[int]
    difficult: list[bool]


def parse_annotation(path: Path, classes: Sequence[str] = VOC_CLASSES) -> VOCAnnotation:
    """Read and check one VOC annotation file.

    Raises:
        InvalidSampleError: naming ``path``, if the file is missing or not XML, has no
            ``<size>``, names a class not in ``classes``, or has a box that is inverted or
            outside the image (VOC boxes satisfy ``1 <= xmin <= xmax <= width``).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InvalidSampleError(f"annotation file {path} does not exist") from None
    except ET.ParseError as error:
        raise InvalidSampleError(f"annotation file {path} is not valid XML: {error}") from None
    height, width = _read_size(root, path)
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise InvalidSampleError(
                f"annotation file {path}: object {number} has unknown class name {name!r}; "
                f"expected one of {list(classes)}"
            )
        xmin, ymin, xmax, ymax = _read_box(obj, path, number)
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise InvalidSampleError(
                f"annotation file {path}: object {number} ({name}) has box (xmin, ymin, xmax, "
                f"ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}), which is inverted or "
                f"outside the image of width {width} and height {height} (1-based, inclusive)"
            )
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(classes.index(name) + 1)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return VOCAnnotation((height, width), boxes, labels, difficult)


def _read_size(root: ET.Element, path: Path) -> tuple[int, int]:
    try:
        height, width = (int(root.findtext(f"size/{key}", "")) for key in ("height", "width"))
    except ValueError:
        height = width = 0
    if height <= 0 or width <= 0:
        raise InvalidSampleError(
            f"annotation file {path} has no <size> with positive integer <width> and <height>"
        )
    return height, width


def _read_box(obj: ET.Element, path: Path, number: int) -> tuple[float, ...]:
    try:
        return tuple(float(obj.findtext(f"bndbox/{key}", "")) for key in _BOX_KEYS)
    except ValueError:
        raise InvalidSampleError(
            f"annotation file {path}: object {number} has no <bndbox> with numeric "
            f"{', '.join(_BOX_KEYS)}"
        ) from None


class VOCDetection(Dataset):
    """Pascal VOC detection images and their objects.

    Args:
        root: a VOC year directory, containing ``JPEGImages/``, ``Annotations/`` and
            ``ImageSets/Main/``. For VOC07+12, concatenate two readers
            (``torch.utils.data.ConcatDataset``).
        split: name of the image list ``ImageSets/Main/{split}.txt`` (``"train"``, ``"val"``,
            ``"trainval"``, ``"test"``).
        classes: class names (without the background); the 20 VOC classes by default.
        transforms: optional callable ``(image, target) -> (image, target)``.
        skip_invalid: leave out invalid images with a warning instead of raising (see
            :mod:`ssd_tutorial.data.files`).

    Every annotation is parsed and every image header read when the reader is created.

    Each item is ``(image, target)``: ``image`` a ``tv_tensors.Image`` uint8 ``[3, H, W]``;
    ``target["boxes"]`` ``tv_tensors.BoundingBoxes`` ``[N, 4]`` XYXY in pixels,
    ``target["labels"]`` int64 ``[N]`` in ``1..20``, ``target["difficult"]`` bool ``[N]`` and
    ``target["image_id"]`` the file name stem (``str``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        classes: Sequence[str] = VOC_CLASSES,
        transforms: Callable | None = None,
        skip_invalid: bool = False,
    ) -> None:
        self.root = Path(root)
        self.classes = tuple(classes)
        self.class_names = ("background", *self.classes)
        self.transforms = transforms
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"VOC split file {split_file} does not exist; root must be a VOC year directory "
                "with JPEGImages/, Annotations/ and ImageSets/Main/"
            )
        # Class-specific lists ("aeroplane_train.txt") add a column of flags; keep the id only.
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        self.samples: list[tuple[str, VOCAnnotation]] = index_samples(
            ids, self._index, skip_invalid
        )
        self.image_ids = [image_id for image_id, _ in self.samples]

    def _index(self, image_id: str) -> tuple[str, VOCAnnotation]:
        annotation = parse_annotation(self.root / "Annotations" / f"{image_id}.xml", self.classes)
        check_image_file(self._image_path(image_id), annotation.size)
        return image_id, annotation

    def _image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Tensor | str]]:
        image_id, annotation = self.samples[index]
        image = read_image(self._image_path(image_id), annotation.size)
        target = {
            "boxes": pixel_boxes(annotation.boxes, annotation.size),
            "labels": torch.tensor(annotation.labels, dtype=torch.int64),
            "difficult": torch.tensor(annotation.difficult, dtype=torch.bool),
            "image_id": image_id,
        }
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target
