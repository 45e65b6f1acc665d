"""How much of the image each source map sees: theoretical receptive field, stride and depth.

A cell of a feature map is computed from a square window of the input image, its *receptive
field*. Along a chain of layers it grows with every convolution and pooling layer: a layer with
kernel ``k`` and dilation ``d`` adds ``(k - 1) * d`` cells of its input map, and an input cell
is ``jump`` pixels wide, the product of the strides before it::

    field_out = field_in + (k - 1) * d * jump_in        jump_out = jump_in * stride

starting from one pixel (``field = jump = 1``). ``jump`` is the map's stride in pixels: two
neighbouring cells see windows that far apart. The field is *theoretical*: the pixels that can
influence the cell at all; those near its centre count far more.

:func:`source_receptive_fields` runs a model's base once and records every convolution and
pooling layer in the order they run, so it works on any base whose layers form one chain up to
each source map (VGG, the tiny base, MobileNet, where a residual block's skip connection adds
no wider path than the block's own layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssd_tutorial.model import SSD, eval_mode

_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class SourceField:
    """The receptive field of one source map.

    Attributes:
        map_size: cells per side of the map at the model's input size.
        stride: pixels between two neighbouring cells (the product of the strides).
        field: side in pixels of the input window that one cell can see (it can exceed the
            image: the padding then fills the rest).
        depth: convolutions between the image and the map.
    """

    map_size: int
    stride: int
    field: int
    depth: int


def source_receptive_fields(model: SSD) -> list[SourceField]:
    """The theoretical receptive field, stride and depth of each of ``model``'s source maps.

    One forward pass of a blank image at the model's input size through ``model.base`` (in eval
    mode, so that batch-norm statistics stay as they are).

    Returns:
        One :class:`SourceField` per source map, in the order of ``model.config.feature_maps``.
    """
    # (address of the output, state): addresses rather than the tensors, which would keep every
    # activation of the pass alive; a source lives to the end, so no later output reuses its
    # address, and in-place layers, which return their input, share its state anyway.
    states: list[tuple[int, tuple[int, int, int]]] = []
    state = (1, 1, 0)  # field, jump, depth of the last layer run so far

    def record(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        nonlocal state
        if isinstance(module, _WINDOWED):
            state = _grown(state, module)
        states.append((output.data_ptr(), state))

    leaves = [m for m in model.base.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(record) for leaf in leaves]
    size = model.config.image_size
    try:
        parameter = next(model.parameters())
        blank = torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=parameter.device)
        with eval_mode(model), torch.no_grad():
            sources = model.base(blank)
    finally:
        for hook in hooks:
            hook.remove()
    fields = []
    for source in sources:
        address = source.data_ptr()
        field, jump, depth = next(s for out, s in reversed(states) if out == address)
        fields.append(SourceField(source.shape[-1], jump, field, depth))
    return fields


def _grown(state: tuple[int, int, int], layer: nn.Module) -> tuple[int, int, int]:
    """``(field, jump, depth)`` after ``layer`` (a convolution or a pooling layer)."""
    field, jump, depth = state
    kernel, stride, dilation = (
        _first(getattr(layer, name, 1)) for name in ("kernel_size", "stride", "dilation")
    )
    field += (kernel - 1) * dilation * jump
    return field, jump * stride, depth + isinstance(layer, nn.Conv2d)


def _first(value: int | tuple[int, ...]) -> int:
    """The height component of a layer's square ``kernel_size``/``stride``/``dilation``."""
    return value[0] if isinstance(value, tuple) else value
