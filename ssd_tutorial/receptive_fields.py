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
pooling layer with the tensor it reads, so it works on any base whose layers form one chain up
to each source map (VGG, the tiny base, MobileNet, where a residual block adds its input in
place and its skip connection is no wider path than the block's own layers). A base that
merges two paths outside its modules (a top-down connection) gets a ``ValueError``.
"""

from __future__ import annotations

import weakref
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
    # The state of every tensor the pass makes, by address; not the tensors themselves, which
    # would keep every activation alive. An entry goes when its tensor is freed, so that a new
    # tensor at the same address is never read as the old one.
    states: dict[int, tuple[int, int, int] | None] = {}

    def remember(tensor: Tensor, state: tuple[int, int, int] | None) -> None:
        address = tensor.data_ptr()
        if address not in states:
            weakref.finalize(tensor, states.pop, address, None)
        states[address] = state

    def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        # None: the input was made outside any module (an addition, an upsampling), so the
        # layers before it do not form one chain.
        state = states.get(inputs[0].data_ptr()) if inputs else None
        if state is not None and isinstance(module, _WINDOWED):
            state = _grown(state, module)
        remember(output, state)

    def record_block(module: nn.Module, inputs: tuple, output: object) -> None:
        # A block whose output no layer made (squeeze-and-excitation multiplies its input by
        # per-channel weights) sees what its input sees, if nothing inside it looks wider.
        made_by_no_layer = isinstance(output, Tensor) and output.data_ptr() not in states
        windows = [m for m in module.modules() if isinstance(m, _WINDOWED)]
        if made_by_no_layer and inputs and all(_field_neutral(m) for m in windows):
            remember(output, states.get(inputs[0].data_ptr()))

    hooks = [
        m.register_forward_hook(record_block if list(m.children()) else record)
        for m in model.base.modules()
    ]
    size = model.config.image_size
    try:
        parameter = next(model.parameters())
        blank = torch.zeros(1, 3, size, size, dtype=parameter.dtype, device=parameter.device)
        remember(blank, (1, 1, 0))  # one pixel: field 1, jump 1, no convolution yet
        with eval_mode(model), torch.no_grad():
            sources = model.base(blank)
        fields = []
        for k, source in enumerate(sources):
            state = states.get(source.data_ptr())
            if state is None:
                raise ValueError(
                    f"source map {k} is computed from a tensor made outside the base's "
                    "modules (a merge of two paths, such as a top-down connection): its "
                    "theoretical receptive field needs one chain of layers"
                )
            field, jump, depth = state
            fields.append(SourceField(source.shape[-1], jump, field, depth))
    finally:
        for hook in hooks:
            hook.remove()
    return fields


def _grown(state: tuple[int, int, int], layer: nn.Module) -> tuple[int, int, int]:
    """``(field, jump, depth)`` after ``layer`` (a convolution or a pooling layer)."""
    field, jump, depth = state
    kernel, stride, dilation = (
        _first(getattr(layer, name, 1)) for name in ("kernel_size", "stride", "dilation")
    )
    field += (kernel - 1) * dilation * jump
    return field, jump * stride, depth + isinstance(layer, nn.Conv2d)


def _field_neutral(layer: nn.Module) -> bool:
    """A layer that changes neither the field nor the stride: a 1x1 kernel (a pooling of the
    whole map too, such as squeeze-and-excitation's, is not in ``_WINDOWED``) of stride 1."""
    return _first(layer.kernel_size) == 1 and _first(layer.stride) == 1


def _first(value: int | tuple[int, ...]) -> int:
    """The height component of a layer's square ``kernel_size``/``stride``/``dilation``."""
    return value[0] if isinstance(value, tuple) else value
