"""Real photos with hand-labelled boxes, for the book's figures.

The photos ship with scikit-image, so they work offline. Boxes are corner form in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssd_tutorial.checks import require_extra


@dataclass(frozen=True)
class LabelledPhoto:
    """An RGB photo (``uint8`` array ``[H, W, 3]``) and its boxes ``[N, 4]`` in pixels."""

    image: np.ndarray
    boxes: Tensor
    names: tuple[str, ...]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.image.shape[0], self.image.shape[1]


def chelsea() -> LabelledPhoto:
    """scikit-image's cat photo (300 x 451) with its face, eyes and nose labelled by hand."""
    data = require_extra("skimage.data", "photos")
    boxes = torch.tensor(
        [
            [30.0, 0.0, 400.0, 300.0],  # face
            [138.0, 80.0, 205.0, 150.0],  # left eye
            [298.0, 105.0, 345.0, 160.0],  # right eye
            [230.0, 225.0, 295.0, 275.0],  # nose
        ]
    )
    return LabelledPhoto(data.chelsea(), boxes, ("face", "eye", "eye", "nose"))
