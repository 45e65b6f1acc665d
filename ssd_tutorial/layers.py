"""Small building blocks of the SSD network.

:class:`L2Norm` rescales the conv4_3 features of VGG-16. Those early features are much larger
in magnitude than the ones of the later layers (ParseNet, Liu et al. 2015), so SSD divides
each position's feature vector by its L2 norm over the channels and multiplies it by a
learned per-channel weight that starts at 20.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale.

    ``y[b, c, i, j] = weight[c] * x[b, c, i, j] / max(||x[b, :, i, j]||_2, eps)``

    The norm is taken over the channels at each position, in float32 whatever the input
    dtype: in float16 the sum of squares overflows above 65504 (a single feature of 256 is
    enough) and ``eps`` would underflow to zero. The result is returned in the input's dtype,
    so the layer works unchanged under float16/bfloat16 autocast or in a ``.half()`` model.

    Args:
        channels: number of input channels ``C`` (512 for VGG-16's conv4_3).
        scale: initial value of every per-channel weight (20 in SSD).
        eps: lower bound on the norm, so an all-zero feature vector stays zero.

    Shape:
        input ``[B, C, H, W]`` -> output ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"L2Norm({self.channels}) expects x of shape [B, {self.channels}, H, W], "
                f"got {list(x.shape)}"
            )
        x32 = x.float()
        # vector_norm, unlike sqrt(sum(x**2)), has a zero (not NaN) gradient at x = 0.
        norm = torch.linalg.vector_norm(x32, dim=1, keepdim=True).clamp_min(self.eps)
        weight = self.weight.float().view(1, -1, 1, 1)
        return (weight * x32 / norm).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, scale={self.scale}, eps={self.eps}"
