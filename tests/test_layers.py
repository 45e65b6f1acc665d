import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ssd_tutorial.layers import L2Norm


def test_l2norm_by_hand():
    # one position with features (3, 4): norm 5, so (0.6, 0.8) times the weight 20
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(L2Norm(2)(x).flatten(), torch.tensor([12.0, 16.0]))


def test_l2norm_weight_starts_at_20_and_is_learned_per_channel():
    layer = L2Norm(512)
    assert layer.weight.shape == (512,)
    assert torch.equal(layer.weight, torch.full((512,), 20.0))
    assert layer.weight.requires_grad
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0]).repeat(256))
    out = layer(torch.ones(1, 512, 1, 1))
    expected = torch.tensor([1.0, 2.0]).repeat(256) / math.sqrt(512)
    torch.testing.assert_close(out.flatten(), expected)


def test_l2norm_normalises_each_position_separately():
    x = torch.randn(2, 8, 3, 5)
    out = L2Norm(8, scale=1.0)(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 3, 5))
    torch.testing.assert_close(out, F.normalize(x, dim=1))


@given(
    st.floats(min_value=1e-3, max_value=1e3),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_l2norm_ignores_the_scale_of_its_input(factor, seed):
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    layer = L2Norm(4)
    torch.testing.assert_close(layer(x * factor), layer(x), rtol=1e-5, atol=1e-5)


def test_l2norm_of_zeros_is_zero_with_finite_gradient():
    x = torch.zeros(1, 4, 2, 2, requires_grad=True)
    layer = L2Norm(4)
    out = layer(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_l2norm_in_half_precision_does_not_overflow(dtype):
    # 512 channels of 300: the sum of squares (4.6e7) overflows float16 (max 65504)
    x = torch.full((1, 512, 2, 2), 300.0)
    out = L2Norm(512)(x.to(dtype))
    assert out.dtype == dtype
    expected = torch.full_like(x, 20 / math.sqrt(512))
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_l2norm_in_a_half_precision_model(dtype):
    layer = L2Norm(16).to(dtype)
    x = torch.randn(2, 16, 3, 3)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), L2Norm(16)(x), rtol=1e-2, atol=2e-2)


def test_l2norm_under_bfloat16_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    layer = L2Norm(8)
    x = torch.randn(1, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(x)
        out = layer(features)
    assert features.dtype == out.dtype == torch.bfloat16
    # The layer works in float32 on the bfloat16 features it is given (how accurate the
    # convolution is in bfloat16 depends on the CPU kernel): the only error left is rounding
    # its result to bfloat16, at most 2**-9 relative.
    torch.testing.assert_close(out.float(), layer(features.float()), rtol=2**-8, atol=0)


def test_l2norm_rejects_the_wrong_number_of_channels():
    with pytest.raises(ValueError, match=r"L2Norm\(512\) expects x of shape \[B, 512, H, W\]"):
        L2Norm(512)(torch.zeros(1, 256, 2, 2))
    with pytest.raises(ValueError, match=r"got \[512, 2, 2\]"):
        L2Norm(512)(torch.zeros(512, 2, 2))
