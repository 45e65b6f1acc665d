"""Data for SSD: the synthetic shapes dataset, VOC and COCO readers, augmentation, batching.

* :mod:`~ssd_tutorial.data.shapes`: :class:`SyntheticShapes`, the embedded default dataset.
* :mod:`~ssd_tutorial.data.pool`: :class:`ImagePool`, images drawn once, augmented at every read.
* :mod:`~ssd_tutorial.data.loading`: :func:`~ssd_tutorial.data.loading.make_loader` and
  :func:`~ssd_tutorial.data.loading.train_pipeline`, the loader policy of the CLI and the book.
* :mod:`~ssd_tutorial.data.sizes`: small / medium / large objects, relative to the image.
* :mod:`~ssd_tutorial.data.voc`: :class:`VOCDetection` and the 20 ``VOC_CLASSES``.
* :mod:`~ssd_tutorial.data.coco`: :class:`COCODetection` for ``instances_*.json`` files.
* :mod:`~ssd_tutorial.data.files`: image reading and the invalid-sample policy of both readers.
* :mod:`~ssd_tutorial.data.transforms`: :func:`train_transforms`, :func:`eval_transforms`,
  :func:`collate`.

Every dataset returns ``(image, target)``: a ``tv_tensors.Image`` uint8 ``[3, H, W]`` and a dict
with ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, pixels) and ``labels`` (int64, 1..C-1).
The transforms turn that into a normalised float image and relative boxes for training.
"""

from ssd_tutorial.data.coco import COCODetection
from ssd_tutorial.data.pool import ImagePool
from ssd_tutorial.data.shapes import CLASS_NAMES, SMALL_SIZE_RANGE, SyntheticShapes
from ssd_tutorial.data.sizes import is_small, size_category
from ssd_tutorial.data.transforms import Batch, collate, eval_transforms, train_transforms
from ssd_tutorial.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "CLASS_NAMES",
    "SMALL_SIZE_RANGE",
    "VOC_CLASSES",
    "Batch",
    "COCODetection",
    "ImagePool",
    "SyntheticShapes",
    "VOCDetection",
    "collate",
    "eval_transforms",
    "is_small",
    "size_category",
    "train_transforms",
]
