"""Default boxes (anchors): where SSD looks, at which sizes and shapes.

A feature map of size ``f x f`` gets, at the centre of each cell ``((j + 0.5) / f,
(i + 0.5) / f)``, one small square of side ``s_k``, one larger square of side
``s'_k = sqrt(s_k * s_{k+1})`` and two boxes ``w = s_k * sqrt(a), h = s_k / sqrt(a)`` per aspect
ratio ``a`` in the map's list (for ``a`` and ``1/a``).

The order of :func:`default_boxes` is the one of the reference implementation and of
torchvision: feature map (largest first), then row, then column, then within a cell
``[s_k square, s'_k square, a_1, 1/a_1, a_2, 1/a_2, ...]``.

A config may instead list each map's box shapes explicitly (``AnchorConfig.shapes``, e.g.
shapes found by k-means in :mod:`ssd_tutorial.anchor_clustering`); the boxes of a cell then
come in the order of that list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class FeatureMap(NamedTuple):
    """One prediction map of an :class:`AnchorConfig`: its entries of the config's lists."""

    size: int
    step: float
    min_size: float
    max_size: float
    aspect_ratios: tuple[float, ...]
    boxes_per_cell: int
    shapes: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class AnchorConfig:
    """The default boxes of one SSD, in pixels of a square input image.

    Attributes:
        name: short label used in tables and plots.
        image_size: side of the (square) network input, in pixels.
        feature_maps: side ``f_k`` of each prediction feature map, largest first.
        steps: pixels between two neighbouring cell centres on each map. The centres sit at
            ``(i + 0.5) * step / image_size``; ``step = image_size / f_k`` spreads them evenly.
        min_sizes: side of the small square box ``s_k * image_size`` on each map.
        max_sizes: the next scale ``s_{k+1} * image_size``, used for the ``s'_k`` square.
        aspect_ratios: per map, the ratios ``a >= 1`` that add a ``w:h = a`` and a ``1/a`` box.
        clip: clamp every default box's width and height to ``[0, 1]`` (as torchvision does).
            The reference implementation clamps the centres too, which moves a few boxes: with
            ``step=32`` on SSD300's 10x10 map the last row and column sit at 9.5 * 32 / 300 =
            1.013, just outside the image.
        shapes: optional, per map, the explicit ``(w, h)`` in pixels of the boxes of one cell,
            in their order within the cell. When given they replace the squares and the
            aspect-ratio pairs (any set of shapes, which the formula cannot express), and
            ``min_sizes``/``max_sizes``/``aspect_ratios`` only describe the map in tables.
    """

    name: str
    image_size: int
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    clip: bool = True
    shapes: tuple[tuple[tuple[float, float], ...], ...] = ()

    def __post_init__(self) -> None:
        lengths = {
            "feature_maps": len(self.feature_maps),
            "steps": len(self.steps),
            "min_sizes": len(self.min_sizes),
            "max_sizes": len(self.max_sizes),
            "aspect_ratios": len(self.aspect_ratios),
        }
        if self.shapes:
            lengths["shapes"] = len(self.shapes)
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"AnchorConfig {self.name!r}: one entry per feature map is needed in every list, "
                f"got lengths {lengths}"
            )
        if not self.feature_maps:
            raise ValueError(f"AnchorConfig {self.name!r}: at least one feature map is needed")
        if self.image_size <= 0:
            raise ValueError(f"AnchorConfig {self.name!r}: image_size must be positive")
        for field in ("feature_maps", "steps", "min_sizes", "max_sizes"):
            values = getattr(self, field)
            if any(not (v > 0) for v in values):
                raise ValueError(
                    f"AnchorConfig {self.name!r}: {field} must be positive, got {values}"
                )
        for k, ratios in enumerate(self.aspect_ratios):
            if any(not (r >= 1) for r in ratios):
                raise ValueError(
                    f"AnchorConfig {self.name!r}: aspect ratios are given as a >= 1 (1/a is added "
                    f"automatically), map {k} has {ratios}"
                )
        for k, shapes in enumerate(self.shapes):
            if not shapes or any(len(wh) != 2 or not (min(wh) > 0) for wh in shapes):
                raise ValueError(
                    f"AnchorConfig {self.name!r}: shapes lists at least one positive (w, h) pair "
                    f"per map, map {k} has {shapes}"
                )

    @property
    def boxes_per_cell(self) -> tuple[int, ...]:
        """``k`` for each map: two squares and two boxes per aspect ratio, or the shapes listed."""
        if self.shapes:
            return tuple(len(shapes) for shapes in self.shapes)
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def maps(self) -> tuple[FeatureMap, ...]:
        """The config map by map, largest first (``shapes`` is ``()`` without explicit shapes)."""
        shapes = self.shapes or ((),) * len(self.feature_maps)
        return tuple(
            FeatureMap(*fields)
            for fields in zip(
                self.feature_maps,
                self.steps,
                self.min_sizes,
                self.max_sizes,
                self.aspect_ratios,
                self.boxes_per_cell,
                shapes,
            )
        )

    @property
    def num_boxes(self) -> int:
        """Total number of default boxes ``P``."""
        return sum(f * f * k for f, k in zip(self.feature_maps, self.boxes_per_cell))

    @property
    def scales(self) -> tuple[float, ...]:
        """Relative scales ``s_1 .. s_m`` followed by ``s_{m+1}`` (``max_sizes[-1]``)."""
        return tuple(s / self.image_size for s in (*self.min_sizes, self.max_sizes[-1]))


def config_from_scales(
    name: str,
    image_size: int,
    feature_maps: tuple[int, ...],
    scales: tuple[float, ...],
    aspect_ratios: tuple[tuple[float, ...], ...],
    steps: tuple[float, ...] | None = None,
    clip: bool = True,
) -> AnchorConfig:
    """Build a config from relative scales ``s_1 .. s_{m+1}`` (one more than there are maps).

    ``steps`` defaults to ``image_size / f_k``, which spreads the centres evenly.
    """
    if len(scales) != len(feature_maps) + 1:
        raise ValueError(
            f"scales needs one entry per feature map plus one (s_(m+1) for the last s'_k box): "
            f"{len(feature_maps)} maps but {len(scales)} scales"
        )
    if steps is None:
        steps = tuple(image_size / f for f in feature_maps)
    sizes = tuple(s * image_size for s in scales)
    return AnchorConfig(
        name=name,
        image_size=image_size,
        feature_maps=tuple(feature_maps),
        steps=tuple(steps),
        min_sizes=sizes[:-1],
        max_sizes=sizes[1:],
        aspect_ratios=tuple(tuple(r) for r in aspect_ratios),
        clip=clip,
    )


#: The paper's smallest and largest scale, ``s_min`` and ``s_max`` of :func:`paper_scales`.
PAPER_SCALE_RANGE: tuple[float, float] = (0.2, 0.9)


def paper_scales(
    num_maps: int, s_min: float = PAPER_SCALE_RANGE[0], s_max: float = PAPER_SCALE_RANGE[1]
) -> tuple[float, ...]:
    """The paper's linear scales ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)``.

    Returns ``m + 1`` values: the formula evaluated at ``k = 1 .. m + 1``, the last one only
    being used for the ``s'_m`` box of the last map.
    """
    if num_maps < 2:
        raise ValueError(f"the scale formula needs at least 2 feature maps, got {num_maps}")
    step = (s_max - s_min) / (num_maps - 1)
    return tuple(s_min + step * k for k in range(num_maps + 1))


def paper_config(
    image_size: int = 300,
    feature_maps: tuple[int, ...] = (38, 19, 10, 5, 3, 1),
    aspect_ratios: tuple[tuple[float, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    s_min: float = PAPER_SCALE_RANGE[0],
    s_max: float = PAPER_SCALE_RANGE[1],
) -> AnchorConfig:
    """SSD300's maps and ratios with scales from the paper's formula instead of hand-set sizes."""
    return config_from_scales(
        f"formula {s_min}-{s_max}",
        image_size,
        feature_maps,
        paper_scales(len(feature_maps), s_min, s_max),
        aspect_ratios,
    )


def resized_config(
    config: AnchorConfig, image_size: int, feature_maps: tuple[int, ...], name: str | None = None
) -> AnchorConfig:
    """``config``'s default boxes for another input size: the same sizes relative to the image.

    Every pixel size (``min_sizes``, ``max_sizes``, ``shapes``) is scaled by
    ``image_size / config.image_size``, and the centres are spread evenly over the new maps
    (``step = image_size / f_k``). ``feature_maps`` are the sizes the network's base gives at
    ``image_size`` (see :func:`ssd_tutorial.model.config_for_size`), as many as ``config`` has.
    """
    if len(feature_maps) != len(config.feature_maps):
        raise ValueError(
            f"config {config.name!r} has {len(config.feature_maps)} feature maps, got "
            f"{len(feature_maps)} sizes {tuple(feature_maps)} for {image_size} px"
        )
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    scale = image_size / config.image_size
    return AnchorConfig(
        name=name or f"{config.name}@{image_size}",
        image_size=image_size,
        feature_maps=tuple(feature_maps),
        steps=tuple(image_size / f for f in feature_maps),
        min_sizes=tuple(v * scale for v in config.min_sizes),
        max_sizes=tuple(v * scale for v in config.max_sizes),
        aspect_ratios=config.aspect_ratios,
        clip=config.clip,
        shapes=tuple(tuple((w * scale, h * scale) for w, h in m) for m in config.shapes),
    )


def default_boxes(
    config: AnchorConfig, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """All default boxes of ``config``.

    Returns:
        Tensor[P, 4]: centre form ``(cx, cy, w, h)``, relative to the image, in the order
        described in the module docstring.
    """
    per_map = []
    for f, step, shapes in zip(config.feature_maps, config.steps, box_shapes(config)):
        offsets = (torch.arange(f, dtype=torch.float64) + 0.5) * (step / config.image_size)
        cy, cx = torch.meshgrid(offsets, offsets, indexing="ij")
        centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        sizes = shapes.reshape(1, -1, 2).expand(f * f, -1, 2)
        per_map.append(torch.cat((centers, sizes), dim=-1).reshape(-1, 4))
    boxes = torch.cat(per_map)
    if config.clip:
        boxes[:, 2:] = boxes[:, 2:].clamp(0, 1)
    return boxes.to(dtype=dtype, device=device)


def feature_map_index(config: AnchorConfig, device: torch.device | str = "cpu") -> Tensor:
    """The feature map of each default box: ``Tensor[P]`` (int64), 0 for the first map.

    The maps hold ``f_k * f_k * boxes_per_cell[k]`` consecutive default boxes each, in the order
    of :func:`default_boxes`.
    """
    per_map = [f * f * k for f, k in zip(config.feature_maps, config.boxes_per_cell)]
    maps = torch.arange(len(per_map), device=device)
    return torch.repeat_interleave(maps, torch.tensor(per_map, device=device))


def box_shapes(config: AnchorConfig) -> list[Tensor]:
    """Relative ``(w, h)`` of the boxes of one cell, per map: a list of ``Tensor[k, 2]``."""
    if config.shapes:
        return [torch.tensor(s, dtype=torch.float64) / config.image_size for s in config.shapes]
    shapes = []
    for min_size, max_size, ratios in zip(config.min_sizes, config.max_sizes, config.aspect_ratios):
        s_k = min_size / config.image_size
        s_prime = math.sqrt(min_size * max_size) / config.image_size
        wh = [(s_k, s_k), (s_prime, s_prime)]
        for a in ratios:
            wh += [
                (s_k * math.sqrt(a), s_k / math.sqrt(a)),
                (s_k / math.sqrt(a), s_k * math.sqrt(a)),
            ]
        shapes.append(torch.tensor(wh, dtype=torch.float64))
    return shapes


def anchor_table(config: AnchorConfig) -> list[dict[str, float | int | str]]:
    """One row per feature map: size, step, scales, ratios and box counts (for the book and CLI)."""
    rows = []
    for k, m in enumerate(config.maps):
        rows.append(
            {
                "map": k,
                "size": f"{m.size}x{m.size}",
                "step": m.step,
                "s_k": m.min_size / config.image_size,
                "s'_k": math.sqrt(m.min_size * m.max_size) / config.image_size,
                "aspect ratios": (
                    ", ".join(f"{w / h:.2g}" for w, h in m.shapes)
                    if m.shapes
                    else ", ".join(["1", *(f"{r:g}, 1/{r:g}" for r in m.aspect_ratios)])
                ),
                "boxes per cell": m.boxes_per_cell,
                "boxes": m.size * m.size * m.boxes_per_cell,
            }
        )
    return rows


#: The reference implementation's SSD300 for Pascal VOC: hand-set pixel sizes, conv4_3 at 0.1.
SSD300 = AnchorConfig(
    name="SSD300",
    image_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264),
    max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)

#: torchvision's ``ssd300_vgg16`` (COCO): smaller scales starting at 0.07.
SSD300_COCO = config_from_scales(
    "SSD300_COCO",
    300,
    (38, 19, 10, 5, 3, 1),
    (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    steps=(8, 16, 32, 64, 100, 300),
)

#: SSD512 of the original Caffe release (Pascal VOC): seven maps, 24564 boxes.
SSD512 = AnchorConfig(
    name="SSD512",
    image_size=512,
    feature_maps=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)

#: Named configs, for the command line and the anchor explorer.
CONFIGS: dict[str, AnchorConfig] = {c.name: c for c in (SSD300, SSD300_COCO, SSD512)}

#: The small teaching SSD of ``build_ssd("ssd_tiny", ...)``: 128 px input, maps 16 down to 1.
#: Like SSD300, the first (stride-8) map gets scale 0.1; the others are spread from 0.2 to 0.9.
SSD_TINY = config_from_scales(
    "SSD_TINY",
    128,
    (16, 8, 4, 2, 1),
    (0.1, 0.2, 0.375, 0.55, 0.725, 0.9),
    ((2,), (2, 3), (2, 3), (2,), (2,)),
)
CONFIGS[SSD_TINY.name] = SSD_TINY

#: torchvision's ``ssdlite320_mobilenet_v3_large``: 320 px, six maps from 20 x 20 (stride 16) down
#: to 1 x 1, scales spread linearly from 0.2 to 0.95 (then 1.0 for the last s'_k box), ratios 2
#: and 3 on every map: 6 boxes per cell, 3234 in all.
SSDLITE320 = config_from_scales(
    "SSDLITE320",
    320,
    (20, 10, 5, 3, 2, 1),
    (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0),
    ((2, 3),) * 6,
)
CONFIGS[SSDLITE320.name] = SSDLITE320
