import urllib.error
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16

from ssd_tutorial import backbones as B
from ssd_tutorial import weights as W


@pytest.fixture(scope="module")
def torchvision_vgg16():
    torch.manual_seed(0)
    # biases are zero after torchvision's init: make them random so the copy is checked
    model = vgg16(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.normal_()
    return model


@pytest.fixture(scope="module")
def loaded_backbone(torchvision_vgg16):
    backbone = B.VGGAtrous().eval()
    W.load_vgg16_imagenet(backbone, torchvision_vgg16.state_dict())
    return backbone


def test_ssd300_sources_have_the_paper_shapes():
    features = B.vgg16_features(B.SSD300_EXTRAS)
    with torch.no_grad():
        sources = features(torch.randn(1, 3, 300, 300))
    shapes = [tuple(s.shape[1:]) for s in sources]
    assert shapes == [
        (512, 38, 38),  # conv4_3
        (1024, 19, 19),  # fc7
        (512, 10, 10),  # conv8_2
        (256, 5, 5),  # conv9_2
        (256, 3, 3),  # conv10_2
        (256, 1, 1),  # conv11_2
    ]
    assert features.out_channels == [s[0] for s in shapes]


def test_ssd512_sources_have_seven_maps_down_to_1x1():
    features = B.vgg16_features(B.SSD512_EXTRAS)
    with torch.no_grad():
        sources = features(torch.randn(1, 3, 512, 512))
    assert [s.shape[-1] for s in sources] == [64, 32, 16, 8, 4, 2, 1]
    assert [s.shape[1] for s in sources] == features.out_channels
    assert features.out_channels == [512, 1024, 512, 256, 256, 256, 256]
    assert hasattr(features.extras, "conv12")


def test_every_conv_of_the_tiny_base_is_batch_normalised():
    features = B.tiny_features()
    for block in (
        features.backbone.conv1_to_conv4,
        features.backbone.conv5_to_fc7,
        *features.extras.children(),
    ):
        layers = list(block.children())
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                # the next layer, or the one after an early pool
                after = layers[i + 2] if isinstance(layers[i + 1], nn.MaxPool2d) else layers[i + 1]
                assert isinstance(after, nn.BatchNorm2d)
                assert after.num_features == layer.out_channels


def test_ssd300_base_has_no_batch_norm():
    features = B.vgg16_features()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in features.modules())


def test_tiny_sources():
    features = B.tiny_features()
    with torch.no_grad():
        sources = features(torch.randn(2, 3, 128, 128))
    assert [tuple(s.shape) for s in sources] == [
        (2, 96, 16, 16),
        (2, 128, 8, 8),
        (2, 96, 4, 4),
        (2, 96, 2, 2),
        (2, 96, 1, 1),
    ]


def test_layers_are_named_and_shaped_as_in_the_paper():
    vgg = B.VGGAtrous()
    assert vgg.conv1_to_conv4.pool3.ceil_mode
    assert not vgg.conv1_to_conv4.pool1.ceil_mode
    pool5 = vgg.conv5_to_fc7.pool5
    assert (pool5.kernel_size, pool5.stride, pool5.padding) == (3, 1, 1)
    fc6 = vgg.conv5_to_fc7.fc6
    assert fc6.weight.shape == (1024, 512, 3, 3)
    assert (fc6.dilation, fc6.padding) == ((6, 6), (6, 6))
    assert vgg.conv5_to_fc7.fc7.weight.shape == (1024, 1024, 1, 1)
    assert vgg.conv1_to_conv4.conv4_3.weight.shape == (512, 512, 3, 3)
    assert torch.equal(vgg.l2norm.weight, torch.full((512,), 20.0))
    extras = B.vgg16_features().extras
    assert extras.conv8.conv8_2.stride == (2, 2)
    assert extras.conv11.conv11_2.padding == (0, 0)


def test_new_layers_start_with_xavier_uniform_and_zero_bias():
    torch.manual_seed(0)
    features = B.vgg16_features()
    for conv in (features.backbone.conv5_to_fc7.fc7, features.extras.conv8.conv8_1):
        fan_in, fan_out = conv.weight.shape[1], conv.weight.shape[0]
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_torchvision_vgg_indices_of_vgg16(torchvision_vgg16):
    indices = W.torchvision_vgg_indices(B.VGG16_STAGES)
    assert indices["conv1_1"] == 0
    assert indices["conv2_1"] == 5
    assert indices["conv4_3"] == 21
    assert indices["conv5_3"] == 28
    features = torchvision_vgg16.features
    assert all(isinstance(features[i], nn.Conv2d) for i in indices.values())
    assert sum(isinstance(m, nn.Conv2d) for m in features) == len(indices) == 13


def test_imagenet_convs_are_copied_unchanged(torchvision_vgg16, loaded_backbone):
    x = torch.randn(1, 3, 224, 224)  # even sizes: ceil_mode of pool3 changes nothing
    with torch.no_grad():
        theirs_conv4_3 = torchvision_vgg16.features[:23](x)
        theirs_conv5_3 = torchvision_vgg16.features[23:30](theirs_conv4_3)
        ours_conv4_3 = loaded_backbone.conv1_to_conv4(x)
        ours_conv5_3 = loaded_backbone.conv5_to_fc7[:7](ours_conv4_3)
    torch.testing.assert_close(ours_conv4_3, theirs_conv4_3)
    torch.testing.assert_close(ours_conv5_3, theirs_conv5_3)
    assert torch.equal(loaded_backbone.l2norm.weight, torch.full((512,), 20.0))


def test_fc6_is_imagenet_fc6_restricted_to_a_3x3_grid_of_taps(torchvision_vgg16, loaded_backbone):
    # VGG's fc6 is a 7x7 conv on pool5's 512 x 7 x 7 map. Zero all but its taps at rows and
    # columns 0, 3, 6 and keep every 4th output: that is our fc6 used with dilation 3 on the
    # same stride-32 map (dilation 6 on SSD's stride-16 map).
    pool5 = torch.randn(2, 512, 7, 7)
    fc6 = torchvision_vgg16.classifier[0]
    mask = torch.zeros(1, 1, 7, 7)
    mask[..., ::3, ::3] = 1
    ours = loaded_backbone.conv5_to_fc7.fc6
    with torch.no_grad():
        weight = (fc6.weight.view(4096, 512, 7, 7) * mask).flatten(1)
        expected = F.linear(pool5.flatten(1), weight, fc6.bias)[:, ::4]
        got = F.conv2d(pool5, ours.weight, ours.bias, dilation=3)
    assert got.shape == (2, 1024, 1, 1)
    torch.testing.assert_close(got.flatten(1), expected, rtol=1e-4, atol=1e-4)


def test_fc7_is_imagenet_fc7_restricted_to_the_kept_fc6_outputs(torchvision_vgg16, loaded_backbone):
    kept = torch.randn(3, 1024)  # our fc6 outputs: VGG's fc6 outputs 0, 4, 8, ...
    fc6_out = torch.zeros(3, 4096)
    fc6_out[:, ::4] = kept
    with torch.no_grad():
        expected = torchvision_vgg16.classifier[3](fc6_out)[:, ::4]
        got = loaded_backbone.conv5_to_fc7.fc7(kept[:, :, None, None]).flatten(1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_load_vgg16_imagenet_rejects_other_widths_and_incomplete_state_dicts(torchvision_vgg16):
    with pytest.raises(
        TypeError,
        match=r"needs a VGGAtrous \(for an SSD: model.base.backbone\), got MultiScaleFeatures",
    ):
        W.load_vgg16_imagenet(B.vgg16_features(), torchvision_vgg16.state_dict())
    with pytest.raises(ValueError, match="needs VGGAtrous with VGG-16's widths"):
        W.load_vgg16_imagenet(B.tiny_features().backbone, torchvision_vgg16.state_dict())
    features_only = {k: v for k, v in torchvision_vgg16.state_dict().items() if "features" in k}
    with pytest.raises(ValueError, match=r"missing \['classifier.0.weight', 'classifier.3.weight'"):
        W.load_vgg16_imagenet(B.VGGAtrous(), features_only)


def test_vgg_atrous_needs_five_stages():
    with pytest.raises(ValueError, match="stages must list the conv widths of 5 stages"):
        B.VGGAtrous(((8,), (8,), (8,), (8,)))


@pytest.mark.parametrize("early_pools", [-1, 4])
def test_early_pools_name_the_pools_they_can_move(early_pools):
    with pytest.raises(ValueError, match=rf"early_pools must be 0 to 3 .*got {early_pools}"):
        B.VGGAtrous(early_pools=early_pools)


def test_early_pools_without_batch_norm_compute_the_same_function():
    """A ReLU and a max pool commute, so without batch norm moving the pools changes nothing:
    the same weights give the same sources."""
    stages = ((4, 4), (8,), (8,), (8,), (8,))
    torch.manual_seed(0)
    late = B.VGGAtrous(stages, fc_channels=8, dilation=2).eval()
    early = B.VGGAtrous(stages, fc_channels=8, dilation=2, early_pools=3).eval()
    early.load_state_dict(late.state_dict())
    names = list(dict(early.conv1_to_conv4.named_children()))
    assert names.index("pool1") == names.index("conv1_2") + 1
    assert names.index("pool3") == names.index("conv3_1") + 1
    image = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(late(image), early(image)):
            torch.testing.assert_close(a, b)


def test_tiny_base_normalises_its_first_two_stages_after_pooling():
    """Stages 1 and 2 of the tiny base pool right after their conv, so their batch norms and
    ReLUs see a quarter of the pixels; stage 3 pools last, as VGG does."""
    base = B.tiny_features().eval()
    seen = {}

    def record_input_shape(name, layer, inputs, output):
        seen[name] = inputs[0].shape

    for name in ("bn1_1", "relu1_1", "bn2_1", "bn3_1", "pool3"):
        layer = getattr(base.backbone.conv1_to_conv4, name)
        layer.register_forward_hook(partial(record_input_shape, name))
    with torch.no_grad():
        base(torch.randn(1, 3, 128, 128))
    assert seen["bn1_1"][-1] == seen["relu1_1"][-1] == 64  # pooled from 128
    assert seen["bn2_1"][-1] == 32  # pooled from 64
    assert seen["bn3_1"][-1] == seen["pool3"][-1] == 32  # normalised, then pooled
    late = B.tiny_features(early_pools=0)
    order = list(dict(late.backbone.conv1_to_conv4.named_children()))
    assert order[:4] == ["conv1_1", "bn1_1", "relu1_1", "pool1"]


class _UnreachableWeights:
    url = "https://download.invalid/vgg16.pth"

    def get_state_dict(self, progress, check_hash):
        raise urllib.error.URLError("Name or service not known")

    def __str__(self):
        return "VGG16_Weights.TEST"


def test_failed_download_raises_a_clear_error():
    with pytest.raises(W.WeightsUnavailableError, match=r"could not download VGG16_Weights.TEST"):
        W.fetch_state_dict(_UnreachableWeights())
    with pytest.raises(W.WeightsUnavailableError, match="need internet access"):
        W.fetch_state_dict(_UnreachableWeights())


def _sizes(sources):
    return [tuple(s.shape[1:]) for s in sources]


def test_ssdlite_sources_have_torchvision_ssdlite_shapes():
    base = B.ssdlite_features().eval()
    with torch.no_grad():
        sources = base(torch.randn(1, 3, 320, 320))
    expected = [(672, 20, 20), (960, 10, 10), (512, 5, 5), (256, 3, 3), (256, 2, 2), (128, 1, 1)]
    assert _sizes(sources) == expected
    assert base.out_channels == [c for c, _, _ in expected]
    reduced = B.ssdlite_features(reduced_tail=True)
    assert reduced.out_channels == [672, 480, 512, 256, 256, 128]


def test_ssdlite_tiny_sources_have_the_tiny_models_maps():
    base = B.ssdlite_tiny_features().eval()
    with torch.no_grad():
        sources = base(torch.randn(2, 3, 128, 128))
    assert _sizes(sources) == [(240, 16, 16), (672, 8, 8), (960, 4, 4), (256, 2, 2), (128, 1, 1)]


def test_first_source_is_the_expansion_inside_the_first_stride_32_block():
    backbone = B.MobileNetV3Backbone().eval()
    x = torch.randn(1, 3, 160, 160)
    block = backbone.features[B.MOBILENET_STRIDE32_BLOCK]
    with torch.no_grad():
        before = backbone.features[: B.MOBILENET_STRIDE32_BLOCK](x)  # 112 x 10 x 10, stride 16
        expanded, last = backbone(x)
        torch.testing.assert_close(expanded, block.block[0](before))
        torch.testing.assert_close(last, backbone.features(x))  # the network's own output
    assert before.shape[1:] == (112, 10, 10) and expanded.shape[1:] == (672, 10, 10)


@pytest.mark.parametrize("index", [0, 3, 14, 16, 17])
def test_mobilenet_sources_must_be_expanding_strided_blocks(index):
    with pytest.raises(
        ValueError, match=rf"must be strided MobileNetV3-Large blocks .* got {index}"
    ):
        B.MobileNetV3Backbone((index,))


def test_separable_conv_is_a_depthwise_then_a_pointwise_conv():
    conv = B.separable_conv(16, 32, stride=2)
    depthwise, pointwise = conv.depthwise[0], conv.pointwise[0]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 16
    assert depthwise.kernel_size == (3, 3) and depthwise.stride == (2, 2)
    assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
    # weights 9 * 16 + 16 * 32, no conv biases (each conv is batch-normalised), 2 BN: 2 * (16 + 32)
    assert sum(p.numel() for p in conv.parameters()) == 9 * 16 + 16 * 32 + 2 * (16 + 32)
    assert conv(torch.randn(2, 16, 7, 7)).shape == (2, 32, 4, 4)
    predictor = B.separable_conv(16, 24, project_norm=False)
    assert isinstance(predictor.pointwise, nn.Conv2d) and predictor.pointwise.bias is not None


def test_ssdlite_extras_use_separable_convs():
    extras = B.ssdlite_features().extras
    depthwise = [
        m for m in extras.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(depthwise) == len(B.SSDLITE_EXTRAS)
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels and conv.stride == (2, 2)
    others = [m for m in extras.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (3, 3)]
    assert all(m.kernel_size == (1, 1) for m in others)


@pytest.fixture(scope="module")
def torchvision_mobilenet():
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(0)
    model = mobilenet_v3_large(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_()  # zero after torchvision's init: randomise so it is checked
    return model


def test_load_mobilenet_v3_imagenet_copies_the_feature_layers(torchvision_mobilenet):
    backbone = B.MobileNetV3Backbone()
    W.load_mobilenet_v3_imagenet(backbone, torchvision_mobilenet.state_dict())
    ours = backbone.features.state_dict()
    theirs = torchvision_mobilenet.features.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_load_mobilenet_v3_imagenet_rejects_what_does_not_fit(torchvision_mobilenet):
    weights = torchvision_mobilenet.state_dict()
    with pytest.raises(TypeError, match=r"needs a MobileNetV3Backbone.*got VGGAtrous"):
        W.load_mobilenet_v3_imagenet(B.VGGAtrous(), weights)
    with pytest.raises(ValueError, match="full tail"):
        W.load_mobilenet_v3_imagenet(B.MobileNetV3Backbone(reduced_tail=True), weights)
    incomplete = {k: v for k, v in weights.items() if not k.startswith("features.16.")}
    with pytest.raises(
        ValueError, match=r"mobilenet_v3_large state dict, missing 6 .*features\.16\.0\.weight"
    ):
        W.load_mobilenet_v3_imagenet(B.MobileNetV3Backbone(), incomplete)


def test_pretrained_ssdlite_fails_cleanly_offline(monkeypatch):
    from torchvision.models import MobileNet_V3_Large_Weights

    from ssd_tutorial.model import build_ssd

    def unreachable(self, progress, check_hash):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(MobileNet_V3_Large_Weights, "get_state_dict", unreachable)
    with pytest.raises(W.WeightsUnavailableError, match="could not download MobileNet_V3_Large"):
        build_ssd("ssdlite320", 21, pretrained_base=True)


@pytest.mark.internet
@pytest.mark.slow
@pytest.mark.parametrize(
    ("weights", "backbone", "load", "copies"),
    [
        (
            "VGG16_Weights",
            B.VGGAtrous,
            W.load_vgg16_imagenet,
            # (our parameter, theirs, the step of the subsampling): fc7 keeps every 4th unit.
            [
                ("conv1_to_conv4.conv1_1.weight", "features.0.weight", 1),
                ("conv5_to_fc7.fc7.bias", "classifier.3.bias", 4),
            ],
        ),
        (
            "MobileNet_V3_Large_Weights",
            B.MobileNetV3Backbone,
            W.load_mobilenet_v3_imagenet,
            [("features.0.0.weight", "features.0.0.weight", 1)],
        ),
    ],
)
def test_load_imagenet_weights_from_the_internet(weights, backbone, load, copies):
    import torchvision.models

    try:
        state_dict = W.fetch_state_dict(
            getattr(torchvision.models, weights).IMAGENET1K_V1, progress=False
        )
    except W.WeightsUnavailableError as err:
        pytest.skip(f"offline: {err}")
    model = backbone()
    load(model)  # downloads again through torch's cache
    for ours, theirs, step in copies:
        assert torch.equal(model.get_parameter(ours), state_dict[theirs][::step])
