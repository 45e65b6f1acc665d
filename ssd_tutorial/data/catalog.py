"""Opening a dataset by kind: the synthetic shapes, a Pascal VOC year or a COCO-format folder.

The command line and the book name their data with three words: a ``kind``, a ``root`` folder
and a ``split``. This module turns them into one of the package's readers:

* ``"synthetic"``: :class:`~ssd_tutorial.data.shapes.SyntheticShapes`; no root. Each split has
  its own seed, so ``"train"``, ``"val"`` and ``"test"`` images never repeat each other.
* ``"voc"``: :class:`~ssd_tutorial.data.voc.VOCDetection`; ``root`` is a VOC year directory
  (``VOCdevkit/VOC2007``), ``split`` an image list of ``ImageSets/Main`` (``"trainval"``).
  Your own data in the VOC layout names its ``classes``; Pascal VOC's 20 are the default.
* ``"coco"``: :class:`~ssd_tutorial.data.coco.COCODetection` in COCO's own layout: images in
  ``root/{split}/`` and annotations in ``root/annotations/instances_{split}.json``
  (``split="val2017"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from ssd_tutorial.data.coco import COCODetection
from ssd_tutorial.data.shapes import SyntheticShapes
from ssd_tutorial.data.voc import VOC_CLASSES, VOCDetection

DATASET_KINDS: tuple[str, ...] = ("synthetic", "voc", "coco")

#: The seed of each split of the synthetic data (any other split name is refused).
SYNTHETIC_SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def open_dataset(
    kind: str,
    split: str,
    root: str | Path | None = None,
    transforms: Callable | None = None,
    *,
    length: int = 1000,
    image_size: int = 300,
    seed: int = 0,
    skip_invalid: bool = False,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """One split of a dataset, every item ``(image, target)`` as the readers give them.

    Args:
        kind: ``"synthetic"``, ``"voc"`` or ``"coco"`` (see the module docstring).
        split: ``"train"``/``"val"``/``"test"`` for synthetic data; an image list for VOC
            (``"trainval"``, ``"test"``); a folder name for COCO (``"train2017"``).
        root: the dataset folder (VOC and COCO only).
        transforms: ``(image, target) -> (image, target)``, e.g. ``train_transforms(300)``.
        length, image_size, seed: size of the synthetic split, side of its images, and a seed
            added to the split's own (synthetic only).
        skip_invalid: VOC and COCO: warn about and leave out invalid images instead of raising.
        classes: VOC only: the class names of the annotations, background excluded (default:
            Pascal VOC's 20). Synthetic data has its own and COCO files list theirs.

    Each reader has ``class_names``: the background first, then the dataset's classes.

    Raises:
        ValueError: an unknown kind or synthetic split, or a root given or missing wrongly.
        FileNotFoundError: the VOC or COCO files are not where the layout puts them.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"kind must be one of {DATASET_KINDS}, got {kind!r}")
    if classes is not None and kind != "voc":
        raise ValueError(
            f"classes are given for VOC-layout data only; {kind} data names its own classes"
        )
    if kind == "synthetic":
        if root is not None:
            raise ValueError(f"synthetic data is generated, it takes no root (got {root})")
        if split not in SYNTHETIC_SPLIT_SEEDS:
            raise ValueError(f"synthetic splits are {sorted(SYNTHETIC_SPLIT_SEEDS)}, got {split!r}")
        return SyntheticShapes(
            length=length,
            image_size=image_size,
            seed=seed * len(SYNTHETIC_SPLIT_SEEDS) + SYNTHETIC_SPLIT_SEEDS[split],
            transforms=transforms,
        )
    if root is None:
        raise ValueError(f"{kind} data needs root, the dataset folder")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} root {root} is not a directory")
    if kind == "voc":
        return VOCDetection(
            root, split, classes or VOC_CLASSES, transforms=transforms, skip_invalid=skip_invalid
        )
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise FileNotFoundError(
            f"COCO annotations {annotations} do not exist; the layout is "
            f"root/{split}/ for the images and root/annotations/instances_{split}.json"
        )
    return COCODetection(
        root / split, annotations, transforms=transforms, skip_invalid=skip_invalid
    )
