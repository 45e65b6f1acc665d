"""Turning images into the network's input: resize, scale to [0, 1], normalise.

The VGG-16 base was trained on ImageNet with inputs normalised by the ImageNet mean and standard
deviation, so SSD's input is normalised the same way. The data pipeline, the detect API and the
book all go through :func:`preprocess`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: ImageNet statistics of RGB images scaled to [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def preprocess(
    images: Tensor,
    size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Tensor:
    """Resize a batch of RGB images to ``size x size`` and normalise them.

    Args:
        images (Tensor[B, 3, H, W] or Tensor[3, H, W]): ``uint8`` in ``[0, 255]`` or floating
            point in ``[0, 1]``.
        size: side of the square network input (300 for SSD300).

    Returns:
        Tensor[B, 3, size, size]: float32 (or the input's floating dtype), normalised.

    Raises:
        ValueError: if the images are not RGB, are empty, or ``size`` is not positive.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be RGB with shape [B, 3, H, W] or [3, H, W], got {list(images.shape)}"
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must not be empty, got shape {list(images.shape)}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    x = images if images.is_floating_point() else images.float() / 255
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def denormalize(
    images: Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Tensor:
    """Undo the normalisation of :func:`preprocess` (for display): ``[..., 3, H, W]`` in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)
