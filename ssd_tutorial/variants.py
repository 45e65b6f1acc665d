"""Networks that differ from the tiny SSD in one part, for the ablations of chapter 12.

Each one tests a claim of the SSD paper's discussion by changing one thing:

- :class:`SelectedSources` predicts from some of a base's source maps only (the paper's
  Table 3, "effects of using multiple output layers"); :func:`select_maps` keeps the default
  boxes of the same maps.
- :class:`TopDownContext` adds a top-down path into the finest source map, in the manner of
  FPN and DSSD: the next coarser map, projected and upsampled, is added to it, so that the map
  that sees small objects also gets the context of a deeper layer.
- :data:`DEEPER_TINY_STAGES` gives the tiny base two 3x3 convs per stage instead of one, a
  stronger base with the same source maps, heads and default boxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ssd_tutorial.anchors import AnchorConfig

#: The tiny base's stages with two 3x3 convs each (one each in
#: :data:`~ssd_tutorial.backbones.TINY_STAGES`): twice the depth before every source map.
DEEPER_TINY_STAGES: tuple[tuple[int, ...], ...] = tuple((w, w) for w in (16, 32, 64, 96, 128))


def _check_keep(keep: Sequence[int], num_maps: int) -> tuple[int, ...]:
    keep = tuple(keep)
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= num_maps:
        raise ValueError(
            f"keep lists source maps to predict from, increasing, each in [0, {num_maps}), "
            f"got {list(keep)}"
        )
    return keep


class SelectedSources(nn.Module):
    """A base that gives only some of ``base``'s source maps.

    The whole base still runs (a coarse map is computed from the finer ones); only the maps in
    ``keep`` reach the heads.

    Args:
        base: a module with an ``out_channels`` list, returning a list of source maps.
        keep: indices of the maps to keep, increasing (0 is the finest map).

    Shape:
        ``[B, 3, S, S]`` -> list of ``len(keep)`` maps ``[B, out_channels[k], f_k, f_k]``.
    """

    def __init__(self, base: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        self.keep = _check_keep(keep, len(base.out_channels))
        self.base = base
        self.out_channels = [base.out_channels[k] for k in self.keep]

    def forward(self, images: Tensor) -> list[Tensor]:
        sources = self.base(images)
        return [sources[k] for k in self.keep]


def select_maps(config: AnchorConfig, keep: Sequence[int], name: str | None = None) -> AnchorConfig:
    """``config``'s default boxes on the maps ``keep`` only, each map's boxes unchanged.

    The paper's Table 3 re-tiles the remaining maps to keep about 8732 boxes; here a map
    dropped takes its boxes with it, so fewer maps also means fewer default boxes.
    """
    keep = _check_keep(keep, len(config.feature_maps))
    fields = ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios")
    if config.shapes:
        fields += ("shapes",)
    maps = "+".join(str(config.feature_maps[k]) for k in keep)
    return dataclasses.replace(
        config,
        name=name or f"{config.name} maps {maps}",
        **{field: tuple(getattr(config, field)[k] for k in keep) for field in fields},
    )


class TopDownContext(nn.Module):
    """``base``, with the second source map added back into the first one (FPN/DSSD style).

    ``first + smooth(upsample(lateral(second)))`` replaces the first source: ``lateral`` is a
    1x1 conv (with batch norm and ReLU) from the second map's channels to the first's, the
    upsampling is nearest-neighbour to the first map's size, and ``smooth`` a 3x3 conv of the
    sum, as FPN smooths its merged maps. The other sources are unchanged.

    Shape:
        as ``base``: ``[B, 3, S, S]`` -> list of ``[B, out_channels[k], f_k, f_k]``.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if len(base.out_channels) < 2:
            raise ValueError("a top-down path needs at least two source maps")
        fine, coarse = base.out_channels[:2]
        self.base = base
        self.lateral = Conv2dNormActivation(coarse, fine, 1)
        self.smooth = Conv2dNormActivation(fine, fine, 3)
        self.out_channels = list(base.out_channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        first, second, *rest = self.base(images)
        context = F.interpolate(self.lateral(second), size=first.shape[-2:], mode="nearest")
        return [self.smooth(first + context), second, *rest]
