import pytest
import torch
from torch import nn

from ssd_tutorial import anchors
from ssd_tutorial.backbones import VGGAtrous, tiny_features
from ssd_tutorial.model import SSD, build_ssd, config_for_size
from ssd_tutorial.profiling import (
    STAGES,
    StageProfile,
    forward_latency_ms,
    gflops_per_image,
    model_costs,
    profile_stages,
    stage_gflops,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_ssd("ssd_tiny", 6)


def test_a_stage_profile_times_every_stage_in_order_and_shares_them_out(tiny):
    # Structure, not speed: timings on a shared machine say nothing a test can rely on.
    profile = profile_stages(tiny, batch_size=2, runs=3, warmup=1)
    assert list(profile.stages) == list(STAGES)
    assert all(ms > 0 for ms in profile.stages.values()) and profile.total_ms > 0
    assert profile.device == "cpu" and profile.batch_size == 2
    assert [name for name, _, _ in profile.rows()] == list(STAGES)
    assert sum(share for _, _, share in profile.rows()) == pytest.approx(1.0)


def test_profile_runs_on_given_images(tiny):
    images = torch.randn(3, 3, 128, 128)
    assert profile_stages(tiny, runs=1, warmup=0, images=images).batch_size == 3
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\]"):
        profile_stages(tiny, runs=1, warmup=0, images=torch.randn(1, 3, 64, 64))


def test_profiling_restores_the_models_mode(tiny):
    tiny.train()
    profile_stages(tiny, runs=1, warmup=0)
    forward_latency_ms(tiny, runs=1, warmup=0)
    model_costs(tiny, runs=1, warmup=0)
    assert tiny.training
    tiny.eval()
    profile_stages(tiny, runs=1, warmup=0)
    assert not tiny.training


def test_stage_profile_shares_and_table_by_hand():
    profile = StageProfile(
        {"base network": 6.0, "extra layers": 1.0, "multibox heads": 2.0, "post-processing": 1.0},
        total_ms=10.5,
        device="cpu",
        batch_size=1,
    )
    assert profile.share("base network") == pytest.approx(0.6)
    assert profile.rows()[1] == ("extra layers", 1.0, pytest.approx(0.1))
    text = str(profile)
    assert "base network" in text and "60.0%" in text and "10.50" in text


def test_gflops_of_a_conv_and_of_a_depthwise_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 8 outputs x 3 inputs x 9 taps multiply-adds at each of 10 x 10 positions, 2 FLOPs each
    assert gflops_per_image(conv, 10) * 1e9 == 2 * 8 * 3 * 9 * 10 * 10
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    assert gflops_per_image(depthwise, 10) * 1e9 == 2 * 3 * 9 * 10 * 10


def test_stage_gflops_of_the_tiny_model_by_hand(tiny):
    stages = stage_gflops(tiny)
    assert list(stages) == list(STAGES[:3])
    # extras: three levels, each a 1x1 conv to 48 channels and a 3x3 stride-2 conv to 96
    extras = sum(
        48 * c_in * f_in**2 + 96 * 48 * 9 * (f_in // 2) ** 2
        for c_in, f_in in ((128, 8), (96, 4), (96, 2))
    )
    # heads: per map a 3x3 conv to k * 4 offsets and one to k * 6 class scores
    maps = zip((96, 128, 96, 96, 96), (16, 8, 4, 2, 1), (4, 6, 6, 4, 4))
    heads = sum(9 * c * k * (4 + 6) * f**2 for c, f, k in maps)
    assert stages["extra layers"] * 1e9 == pytest.approx(2 * extras)
    assert stages["multibox heads"] * 1e9 == pytest.approx(2 * heads)
    assert sum(stages.values()) == pytest.approx(gflops_per_image(tiny, 128))


def test_ssdlite_flops_match_torchvision_ssdlite():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from ssd_tutorial.backbones import ssdlite_features

    # torchvision's model table lists 0.58 GFLOPS, counting one per multiply-add
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    ours = SSD(ssdlite_features(True), anchors.SSDLITE320, 91, separable_head=True).eval()
    expected = gflops_per_image(lambda x: theirs.head(list(theirs.backbone(x).values())), 320)
    assert expected / 2 == pytest.approx(0.583, abs=0.005)
    assert gflops_per_image(ours, 320) == pytest.approx(expected, rel=1e-6)


def test_model_costs_count_frozen_weights_and_the_flops_at_the_models_own_size():
    torch.manual_seed(0)
    model = build_ssd("ssd_tiny", 6)
    full = model_costs(model, runs=1, warmup=0)
    for parameter in model.base.parameters():  # a frozen base still costs its weights
        parameter.requires_grad_(False)
    assert model_costs(model, runs=1, warmup=0)["parameters"] == full["parameters"]
    assert full["parameters"] == pytest.approx(0.72e6, rel=0.01)  # build_ssd's docstring
    # The same layers fed 96 px instead of 128: fewer FLOPs, the same weights.
    base = tiny_features()
    small = model_costs(SSD(base, config_for_size(base, anchors.SSD_TINY, 96), 6), runs=1, warmup=0)
    assert small["parameters"] == full["parameters"]
    assert small["gflops"] < 0.7 * full["gflops"]
    assert full["latency_ms"] > 0


def test_bad_arguments_get_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"runs and batch_size must be >= 1.*got runs=0"):
        profile_stages(tiny, runs=0)
    with pytest.raises(ValueError, match=r"warmup >= 0.*warmup=-1"):
        profile_stages(tiny, warmup=-1)
    # a base without extra layers: a bare VGG backbone with its two maps
    backbone = VGGAtrous(((16,), (32,), (64,), (96,), (128,)), fc_channels=128, dilation=3)
    two_maps = anchors.config_from_scales("two", 128, (16, 8), (0.1, 0.2, 0.4), ((2,), (2,)))
    with pytest.raises(TypeError, match=r"backbone and extras.*got VGGAtrous"):
        profile_stages(SSD(backbone, two_maps, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profile_on_cuda_synchronises_and_reports_the_device(tiny):
    model = build_ssd("ssd_tiny", 6).cuda()
    profile = profile_stages(model, runs=5)
    assert profile.device.startswith("cuda")
    assert all(ms > 0 for ms in profile.stages.values())
