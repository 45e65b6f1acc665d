"""Object sizes: small, medium and large, as COCO defines them but relative to the image.

COCO calls an object *small* below 32x32 = 1024 pixels of area and *large* above
96x96 = 9216 pixels, on images of typically 640x480 = 307,200 pixels. As fractions of that image
area the thresholds are exactly 1/300 and 0.03. Measuring relative area keeps the split
meaningful for any image size, including the network's 300x300 input after resizing:

* small: area < 1/300 of the image (about 17x17 pixels in a 300x300 image);
* medium: 1/300 <= area < 0.03;
* large: area >= 0.03 of the image (about 52x52 pixels or more in a 300x300 image).

(COCO's evaluation counts an area exactly on a threshold in both neighbouring ranges; here each
box has exactly one category.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssd_tutorial.boxes import box_area, check_boxes

#: Relative area thresholds: COCO's 32**2 and 96**2 pixels on a 640x480 image.
SMALL_AREA: float = 32**2 / (640 * 480)
LARGE_AREA: float = 96**2 / (640 * 480)
#: Names of the values returned by :func:`size_category`.
SIZE_NAMES: tuple[str, str, str] = ("small", "medium", "large")


def relative_area(boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Fraction of the image covered by each box.

    Args:
        boxes (Tensor[N, 4]): corner form ``(x1, y1, x2, y2)``, in pixels of an image of
            ``image_size = (height, width)``, or relative to the image when ``image_size`` is
            ``None``.

    Returns:
        Tensor[N]: areas in ``[0, 1]`` for boxes inside the image.
    """
    check_boxes(boxes, "boxes")
    area = box_area(boxes)
    if image_size is not None:
        height, width = image_size
        area = area / (height * width)
    return area


def size_category(boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Size category of each box: 0 = small, 1 = medium, 2 = large (see :data:`SIZE_NAMES`).

    Args:
        boxes (Tensor[N, 4]): as in :func:`relative_area`.
        image_size: ``(height, width)`` for boxes in pixels, ``None`` for relative boxes.

    Returns:
        Tensor[N]: int64.
    """
    area = relative_area(boxes, image_size)
    thresholds = torch.tensor([SMALL_AREA, LARGE_AREA], dtype=area.dtype, device=area.device)
    # right=True: an area equal to a threshold goes to the larger category.
    return torch.bucketize(area, thresholds, right=True)


def is_small(boxes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
    """Boolean ``[N]``: is each box a small object (area < 1/300 of the image)?"""
    return relative_area(boxes, image_size) < SMALL_AREA
