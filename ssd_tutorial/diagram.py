"""A picture of an SSD network, drawn from the model itself.

:func:`draw_network` runs a blank image through ``model.base`` to find each source map's size
and channels, reads the layers that make each map (for SSD's VGG base: the convolutions up to
conv4_3, L2Norm, pool5, the dilated fc6, fc7; then each extra level), the multibox heads'
output channels ``k * 4 + k * C = k(C + 4)`` and the default boxes per map ``f * f * k``. Every
label is computed from the model, so the figure changes when the model does: SSD300 gets six
columns, SSD512 seven, the tiny model five, and another number of classes other head labels.

A base of another kind (MobileNet, a variant of :mod:`ssd_tutorial.variants`) is drawn in the
same way, with its source maps named by the module that makes them instead of layer by layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import nn

from ssd_tutorial.backbones import ExtraLayers, MultiScaleFeatures, VGGAtrous
from ssd_tutorial.profiling import eval_mode

__all__ = ["SourceColumn", "draw_network", "network_columns"]

#: Colours of the parts: the base's layers, the source maps, the heads.
_LAYER_COLOUR = "#dbe8f6"
_MAP_COLOUR = "#f6d8ae"
_HEAD_COLOUR = "#d5ecd4"
_FONT = 8.5
#: The drawing area in inches (data units are inches).
_WIDTH, _HEIGHT = 10.0, 5.9


@dataclass(frozen=True)
class SourceColumn:
    """What the figure shows about one source map, read from the model.

    Attributes:
        layers: the layers that compute the map from the previous column's input, one line each.
        name: the layer whose output is the map (``"conv4_3"``, ``"fc7"``, ``"conv8_2"``, ...).
        size: ``f``, cells per side of the map.
        channels: channels of the map.
        boxes_per_cell: ``k``, from the model's default-box config.
        loc_channels: output channels of the loc head, ``4k``.
        conf_channels: output channels of the conf head, ``Ck``.
        head: the kind of the head's predictor (``"3×3 conv"``).
    """

    layers: tuple[str, ...]
    name: str
    size: int
    channels: int
    boxes_per_cell: int
    loc_channels: int
    conf_channels: int
    head: str

    @property
    def num_boxes(self) -> int:
        """Default boxes of the map, ``f * f * k``."""
        return self.size * self.size * self.boxes_per_cell


def network_columns(model: nn.Module) -> list[SourceColumn]:
    """One :class:`SourceColumn` per source map of ``model``, largest map first.

    Args:
        model: an :class:`ssd_tutorial.model.SSD` (``base``, ``head.loc``, ``head.conf``,
            ``config``, ``num_classes``).

    One pass of a blank ``[1, 3, S, S]`` image through ``model.base`` in eval mode gives the
    maps' shapes (``S = model.config.image_size``); batch-norm statistics stay as they were.
    """
    parts = ("base", "head", "config", "num_classes")
    missing = [name for name in parts if not hasattr(model, name)]
    if missing or not hasattr(model.head, "loc") or not hasattr(model.head, "conf"):
        raise TypeError(
            "draw_network needs an ssd_tutorial.model.SSD (with base, head.loc, head.conf, "
            f"config and num_classes), got {type(model).__name__} without "
            f"{missing or ['head.loc/head.conf']}"
        )
    size = model.config.image_size
    parameter = next(model.parameters())
    blank = parameter.new_zeros(1, 3, size, size)
    with eval_mode(model), torch.no_grad():
        maps = model.base(blank)
    layers, names = _describe_base(model.base, len(maps))
    columns = []
    for m, source in enumerate(maps):
        k = model.config.boxes_per_cell[m]
        loc, conf = _out_channels(model.head.loc[m]), _out_channels(model.head.conf[m])
        if loc != 4 * k or conf != model.num_classes * k:
            raise ValueError(
                f"head {m} has {loc} loc and {conf} conf channels, but the config's k = {k} "
                f"and C = {model.num_classes} need {4 * k} and {model.num_classes * k}"
            )
        columns.append(
            SourceColumn(
                layers=layers[m],
                name=names[m],
                size=source.shape[-1],
                channels=source.shape[1],
                boxes_per_cell=k,
                loc_channels=loc,
                conf_channels=conf,
                head=_predictor_kind(model.head.loc[m]),
            )
        )
    return columns


def draw_network(model: nn.Module, ax: Axes | None = None) -> Figure:
    """Draw ``model``'s base, source maps, multibox heads and outputs; return the figure.

    Columns, left to right, are the source maps, largest first. In each, from the top: the
    layers that make the map (arrows show the chain from one column to the next), the map
    (a square whose side grows with the log of ``f``, labelled ``f×f×channels``), its head
    (``k(C+4)`` output channels) and its ``f²·k`` default boxes; a bar at the bottom
    concatenates them into ``loc [B, P, 4]`` and ``conf [B, P, C]``.

    Args:
        model: an :class:`ssd_tutorial.model.SSD` (see :func:`network_columns`).
        ax: axes to draw into; by default a new figure 10 inches wide. The drawing is laid
            out in inches of a 10 x 5.9 inch area, with equal scales on both axes.

    Every label is an ``ax.texts`` entry; those of the maps have the gid ``"map"``, those of
    the heads ``"head"`` and the box counts ``"boxes"``.
    """
    columns = network_columns(model)
    if ax is None:
        fig = plt.figure(figsize=(_WIDTH, _HEIGHT + 0.4))
        ax = fig.add_axes((0, 0, 1, _HEIGHT / (_HEIGHT + 0.4)))
    width = _WIDTH / len(columns)
    ax.set_xlim(0, _WIDTH)
    ax.set_ylim(0, _HEIGHT)
    ax.set_aspect("equal")
    ax.set_axis_off()
    size = model.config.image_size
    total = sum(c.num_boxes for c in columns)
    name = getattr(model, "architecture", None) or model.config.name
    ax.set_title(
        f"{name}: {size}×{size}×3 input, C = {model.num_classes} classes, {total} default boxes"
    )
    largest = max(c.size for c in columns)
    # seven columns leave 1.4 inches each: a smaller font keeps the lines inside the boxes
    font = _FONT if len(columns) <= 6 else _FONT - 1
    for i, column in enumerate(columns):
        _draw_column(ax, (i + 0.5) * width, 0.9 * width, column, largest, font)
        if i:
            _arrow(ax, (i * width - 0.06, 5.15), (i * width + 0.06, 5.15))
    _box(ax, _WIDTH / 2, 0.35, _WIDTH - 0.2, 0.5, "#eeeeee")
    ax.text(
        _WIDTH / 2,
        0.35,
        f"move channels last, flatten, concatenate:  loc [B, {total}, 4],  "
        f"conf [B, {total}, {model.num_classes}]",
        ha="center",
        va="center",
        fontsize=_FONT + 0.5,
    )
    return ax.figure


def _draw_column(
    ax: Axes, x: float, width: float, column: SourceColumn, largest: int, font: float
) -> None:
    """One source map's layers, map, head and box count, centred on ``x`` (inches)."""
    _box(ax, x, 5.15, width, 1.2, _LAYER_COLOUR)
    ax.text(x, 5.15, "\n".join(column.layers), ha="center", va="center", fontsize=font)
    # the map: a square of side 0.2 in (1x1) to 0.8 in (the largest map), on a log scale
    side = 0.2 + 0.6 * math.log1p(column.size) / math.log1p(largest)
    top = 4.35
    _arrow(ax, (x, 4.53), (x, top + 0.01))
    ax.add_patch(Rectangle((x - side / 2, top - side), side, side, fc=_MAP_COLOUR, ec="k"))

    def label(y: float, text: str, gid: str, va: str = "center") -> None:
        ax.text(x, y, text, ha="center", va=va, fontsize=font, gid=gid)

    label(top - 0.9, f"{column.name}\n{column.size}×{column.size}×{column.channels}", "map", "top")
    _arrow(ax, (x, 3.03), (x, 2.82))
    k, classes = column.boxes_per_cell, column.conf_channels // column.boxes_per_cell
    outputs = column.loc_channels + column.conf_channels
    _box(ax, x, 2.3, width, 0.98, _HEAD_COLOUR)
    head = (
        f"{column.head}\nk(C+4) = {k}·({classes}+4)\n= {outputs} channels"
        f"\nloc {column.loc_channels}, conf {column.conf_channels}"
    )
    label(2.3, head, "head")
    label(1.45, f"{column.size}²·{k}\n= {column.num_boxes} boxes", "boxes")
    _arrow(ax, (x, 1.18), (x, 0.63))


def _describe_base(base: nn.Module, num_maps: int) -> tuple[list[tuple[str, ...]], list[str]]:
    """Per source map, the lines naming the layers that make it, and the name of the map."""
    if not isinstance(base, MultiScaleFeatures):
        return _generic_columns(base, range(num_maps))
    first = len(base.backbone.out_channels)
    if isinstance(base.backbone, VGGAtrous):
        layers, names = _vgg_columns(base.backbone)
    else:
        layers, names = _generic_columns(base.backbone, range(first))
    if isinstance(base.extras, ExtraLayers):
        extra_layers, extra_names = _extra_columns(base.extras)
    else:
        extra_layers, extra_names = _generic_columns(base.extras, range(first, num_maps))
    return layers + extra_layers, names + extra_names


def _vgg_columns(vgg: VGGAtrous) -> tuple[list[tuple[str, ...]], list[str]]:
    """The VGG part: conv1_1 .. conv4_x with L2Norm (source 1), then pool4 .. fc7 (source 2)."""
    first = dict(vgg.conv1_to_conv4.named_children())
    convs = [name for name, layer in first.items() if isinstance(layer, nn.Conv2d)]
    pools = [layer for layer in first.values() if isinstance(layer, nn.MaxPool2d)]
    norm = ", BN" if any(isinstance(layer, nn.BatchNorm2d) for layer in first.values()) else ""
    source1 = (
        _span(convs),
        f"{len(convs)} conv 3×3{norm}",
        f"{len(pools)} max pool 2×2",
        f"L2Norm, γ = {vgg.l2norm.scale:g}",
    )
    second = dict(vgg.conv5_to_fc7.named_children())
    conv5 = [name for name in second if name.startswith("conv")]
    pool4, pool5, fc6, fc7 = (second[name] for name in ("pool4", "pool5", "fc6", "fc7"))
    source2 = (
        f"pool4 {_kernel(pool4)}",
        _span(conv5),
        f"pool5 {_kernel(pool5)} stride {pool5.stride}",
        f"fc6 {_kernel(fc6)} dilation {fc6.dilation[0]}",
        f"fc7 {_kernel(fc7)}{norm}",
    )
    return [source1, source2], [convs[-1], "fc7"]


def _extra_columns(extras: ExtraLayers) -> tuple[list[tuple[str, ...]], list[str]]:
    """Each extra level ``conv{n}``: its 1x1 and its strided or unpadded conv."""
    layers, names = [], []
    for level in extras.children():
        convs = [(name, c) for name, c in level.named_children() if isinstance(c, nn.Conv2d)]
        lines = [f"{name} {_kernel(conv)} → {conv.out_channels}" for name, conv in convs]
        last = convs[-1][1]
        lines.append(f"stride {last.stride[0]}, pad {last.padding[0]}")
        if any(isinstance(layer, nn.BatchNorm2d) for layer in level.children()):
            lines.append("BN after each conv")
        layers.append(tuple(lines))
        names.append(convs[-1][0])
    return layers, names


def _generic_columns(part: nn.Module, maps: range) -> tuple[list[tuple[str, ...]], list[str]]:
    """Maps of a part the figure does not draw layer by layer: named by the part's class."""
    kind = type(part).__name__
    layers = [(kind, f"source {m + 1}") for m in maps]
    return layers, [f"source {m + 1}" for m in maps]


def _span(names: list[str]) -> str:
    """``"conv1_1 … conv4_3"``, or the one name of a single layer."""
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def _out_channels(predictor: nn.Module) -> int:
    """Output channels of a head's predictor: its last convolution's."""
    convs = [m for m in predictor.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"a head predictor without a convolution: {predictor}")
    return convs[-1].out_channels


def _predictor_kind(predictor: nn.Module) -> str:
    if isinstance(predictor, nn.Conv2d):
        return f"{_kernel(predictor)} conv"
    return "separable conv"


def _kernel(layer: nn.Module) -> str:
    size = layer.kernel_size
    height, width = size if isinstance(size, tuple) else (size, size)
    return f"{height}×{width}"


def _box(ax: Axes, x: float, y: float, width: float, height: float, colour: str) -> None:
    """A rounded box centred on ``(x, y)``."""
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02,rounding_size=0.06",
            fc=colour,
            ec="0.4",
        )
    )


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="0.3"))
