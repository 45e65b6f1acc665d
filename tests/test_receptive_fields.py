import copy
import itertools

import pytest
import torch
from torch import nn

from ssd_tutorial.model import build_ssd
from ssd_tutorial.receptive_fields import SourceField, source_receptive_fields


def test_ssd300_fields_are_vgg16s_by_hand():
    fields = source_receptive_fields(build_ssd("ssd300", 21))
    # conv4_3: 2 + 2 + 3 + 3 convs of 3x3 and three 2x2 pools; fc7 adds pool4, three more convs,
    # pool5 (3x3, stride 1) and fc6 (3x3, dilation 6, on cells 16 px apart): 228 + 12 * 16
    assert fields[0] == SourceField(map_size=38, stride=8, field=92, depth=10)
    assert fields[1] == SourceField(map_size=19, stride=16, field=420, depth=15)
    assert [f.map_size for f in fields] == [38, 19, 10, 5, 3, 1]
    assert all(a.field < b.field for a, b in itertools.pairwise(fields))
    assert [f.depth for f in fields[2:]] == [17, 19, 21, 23]


def averaging_copy(base: nn.Module) -> nn.Module:
    """``base`` with every conv averaging its window, batch norm the identity and max pooling
    replaced by average pooling of the same window: every input pixel of a cell's receptive
    field then gets a non-zero gradient, and no other pixel does."""
    base = copy.deepcopy(base).eval()
    for module in list(base.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(
                    child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode
                )
                setattr(module, name, pool)
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
    return base


def gradient_window(base: nn.Module, source: int, size: int) -> int:
    """Side of the input window that influences the centre cell of source map ``source``."""
    image = torch.ones(1, 3, size, size, requires_grad=True)
    features = base(image)[source]
    centre = features.shape[-1] // 2
    weights = torch.randn(features.shape[1], generator=torch.Generator().manual_seed(0))
    # a random mix of channels: L2Norm's output summed over equal channels has no gradient
    (features[0, :, centre, centre] @ weights).backward()
    rows = image.grad[0].abs().sum(dim=(0, 2)).nonzero()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("source", range(5))
def test_tiny_fields_equal_the_window_that_gradients_reach(source):
    model = build_ssd("ssd_tiny", 3)
    field = source_receptive_fields(model)[source]
    size = 1024  # larger than every field, so that no window is cut by the image border
    assert field.field < size
    assert gradient_window(averaging_copy(model.base), source, size) == field.field


def test_fields_follow_the_input_size_of_the_model_and_leave_its_mode_alone():
    model = build_ssd("ssd_tiny", 3).train()
    fields = source_receptive_fields(model)
    assert [f.map_size for f in fields] == list(model.config.feature_maps)
    assert [f.stride for f in fields] == [8, 16, 32, 64, 128]
    assert model.training


def test_a_base_that_merges_two_paths_outside_its_modules_is_refused():
    from ssd_tutorial.ablation import tiny_ssd

    with pytest.raises(ValueError, match="source map 0 is computed from a tensor made outside"):
        source_receptive_fields(tiny_ssd(top_down=True)(3))


def test_squeeze_and_excitation_blocks_keep_mobilenets_chain():
    fields = source_receptive_fields(build_ssd("ssdlite320", 3))
    assert [f.map_size for f in fields] == [20, 10, 5, 3, 2, 1]
    assert [f.stride for f in fields] == [16, 32, 64, 128, 256, 512]
    assert all(a.field < b.field and a.depth < b.depth for a, b in itertools.pairwise(fields))
