import pytest
import torch
from torch import nn
from torchvision.models.detection import ssd300_vgg16

from ssd_tutorial import anchors
from ssd_tutorial.backbones import tiny_features, vgg16_features
from ssd_tutorial.model import (
    ARCHITECTURES,
    SSD,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    MultiBoxHead,
    build_ssd,
    count_parameters,
)
from ssd_tutorial.preprocess import IMAGENET_MEAN
from ssd_tutorial.weights import (
    WeightsUnavailableError,
    from_torchvision,
    load_torchvision_coco,
    to_torchvision,
)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and biases everywhere (biases start at zero), keeping activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=generator) * (2 / p[0].numel()) ** 0.5)
            else:
                scale = 20.0 if name.endswith(("scale_weight", "l2norm.weight")) else 0.1
                p.copy_(scale * (1 + 0.5 * torch.randn(p.shape, generator=generator)))
    return model


@pytest.fixture(scope="module")
def torchvision_ssd():
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=5)
    return _randomize(model).eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_ssd("ssd_tiny", 6).eval()


@pytest.mark.parametrize(
    ("name", "num_classes", "config", "num_boxes"),
    [("ssd300", 21, anchors.SSD300, 8732), ("ssd512", 3, anchors.SSD512, 24564)],
)
def test_the_papers_models_predict_their_number_of_boxes(name, num_classes, config, num_boxes):
    model = build_ssd(name, num_classes).eval()
    size = config.image_size
    with torch.no_grad():
        loc, conf = model(torch.randn(1, 3, size, size))
    assert loc.shape == (1, num_boxes, 4)
    assert conf.shape == (1, num_boxes, num_classes)
    assert model.config is config
    assert model.num_classes == num_classes
    assert model.image_mean == IMAGENET_MEAN


def test_tiny_model_forward(tiny):
    with torch.no_grad():
        loc, conf = tiny(torch.randn(16, 3, 128, 128))
    assert tiny.config is anchors.SSD_TINY
    assert anchors.SSD_TINY.num_boxes == 16 * 16 * 4 + 8 * 8 * 6 + 4 * 4 * 6 + 2 * 2 * 4 + 4 == 1524
    assert loc.shape == (16, 1524, 4)
    assert conf.shape == (16, 1524, 6)
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()
    assert count_parameters(tiny) < 1_000_000


def test_parameter_counts():
    # torchvision's ssd300_vgg16 has 35,641,826 parameters with COCO's 91 classes; each class
    # costs (512*4 + 1024*6 + 512*6 + 256*6 + 256*4 + 256*4) * 9 + 30 = 133,662 of them
    assert count_parameters(build_ssd("ssd300_coco", 91)) == 35_641_826
    assert count_parameters(build_ssd("ssd300", 21)) == 35_641_826 - 70 * 133_662 == 26_285_486


def test_count_parameters_can_skip_frozen_ones(tiny):
    model = build_ssd("ssd_tiny", 6)
    model.base.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model.head)
    assert count_parameters(model) == count_parameters(tiny)


def test_heads_list_boxes_by_map_row_column_then_box():
    torch.manual_seed(0)
    in_channels, per_cell, sizes, num_classes = [8, 4], (4, 6), (3, 2), 5
    head = MultiBoxHead(in_channels, per_cell, num_classes)
    sources = [torch.randn(2, c, f, f) for c, f in zip(in_channels, sizes)]
    with torch.no_grad():
        loc, conf = head(sources)
        expected_loc, expected_conf = [], []
        for m, x in enumerate(sources):
            raw_loc, raw_conf = head.loc[m](x), head.conf[m](x)
            for row in range(sizes[m]):
                for col in range(sizes[m]):
                    for box in range(per_cell[m]):
                        expected_loc.append(raw_loc[:, box * 4 : (box + 1) * 4, row, col])
                        channels = slice(box * num_classes, (box + 1) * num_classes)
                        expected_conf.append(raw_conf[:, channels, row, col])
    assert loc.shape == (2, 3 * 3 * 4 + 2 * 2 * 6, 4)
    torch.testing.assert_close(loc, torch.stack(expected_loc, dim=1))
    torch.testing.assert_close(conf, torch.stack(expected_conf, dim=1))


def test_every_parameter_gets_a_gradient():
    model = build_ssd("ssd_tiny", 3)
    loc, conf = model(torch.randn(2, 3, 128, 128))
    (loc.square().mean() + conf.logsumexp(-1).mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_base_runs_channels_last_by_default_with_the_same_output():
    torch.manual_seed(0)
    model = build_ssd("ssd_tiny", 6).eval()
    seen = []
    model.base.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        loc, conf = model(x)
        model.channels_last = False
        loc_nchw, conf_nchw = model(x)
        # Weights in channels-last too: the input format alone decides nothing then.
        model_cl = build_ssd("ssd_tiny", 6).to(memory_format=torch.channels_last).eval()
        model_cl.load_state_dict(model.state_dict())
        loc_both, conf_both = model_cl(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()
    assert seen[1].is_contiguous()
    for a, b in ((loc, loc_nchw), (conf, conf_nchw), (loc, loc_both), (conf, conf_both)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_forward(tiny):
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        loc, conf = tiny(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loc_bf16, conf_bf16 = tiny(x)
    assert loc_bf16.dtype == conf_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(loc_bf16.float(), loc, rtol=0.1, atol=0.1)
    torch.testing.assert_close(conf_bf16.float(), conf, rtol=0.1, atol=0.1)


def test_ours_equals_torchvision_backbone_and_head(torchvision_ssd):
    ours = from_torchvision(torchvision_ssd).eval()
    assert ours.num_classes == 5
    assert ours.config is anchors.SSD300_COCO
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        theirs = torchvision_ssd.head(list(torchvision_ssd.backbone(x).values()))
        loc, conf = ours(x)
    for got, expected in ((loc, theirs["bbox_regression"]), (conf, theirs["cls_logits"])):
        assert got.shape == expected.shape
        assert expected.abs().max() > 1  # not trivially small
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_from_torchvision_keeps_torchvision_normalisation(torchvision_ssd):
    ours = from_torchvision(torchvision_ssd)
    torch.testing.assert_close(ours.image_mean, TORCHVISION_MEAN)
    torch.testing.assert_close(ours.image_std, TORCHVISION_STD)
    from_state_dict = from_torchvision(torchvision_ssd.state_dict(), num_classes=5)
    assert from_state_dict.image_mean == TORCHVISION_MEAN


def test_round_trips_with_torchvision(torchvision_ssd):
    theirs = torchvision_ssd.state_dict()
    back = to_torchvision(from_torchvision(torchvision_ssd)).state_dict()
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)

    ours = _randomize(build_ssd("ssd300_coco", 7), seed=1)
    twin = to_torchvision(ours)
    assert twin.transform.image_mean == list(IMAGENET_MEAN)
    assert all(p.device.type == "cpu" and p.requires_grad for p in twin.parameters())
    assert twin.backbone.scale_weight.data_ptr() != ours.base.backbone.l2norm.weight.data_ptr()
    again = from_torchvision(twin).state_dict()
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())
    assert again.keys() == ours.state_dict().keys()


def test_to_torchvision_needs_torchvision_default_boxes():
    with pytest.raises(ValueError, match="uses the default boxes of SSD300_COCO, this model uses"):
        to_torchvision(build_ssd("ssd300", 21))


def test_from_torchvision_rejects_other_state_dicts(torchvision_ssd, tiny):
    with pytest.raises(ValueError, match="num_classes=21 but the torchvision model has 5"):
        from_torchvision(torchvision_ssd, num_classes=21)
    with pytest.raises(
        ValueError, match="not a torchvision ssd300_vgg16 state dict: 71 keys missing"
    ):
        from_torchvision(tiny.state_dict())
    extra = {**torchvision_ssd.state_dict(), "backbone.extra.5.0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 unexpected \['backbone.extra.5.0.weight'\]"):
        from_torchvision(extra)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((3, 128, 128), torch.float32, r"\[B, 3, 128, 128\].*got \[3, 128, 128\]"),
        ((1, 1, 128, 128), torch.float32, r"got \[1, 1, 128, 128\]"),
        ((1, 3, 300, 300), torch.float32, r"shape \[B, 3, 128, 128\].*got \[1, 3, 300, 300\]"),
        ((1, 3, 128, 96), torch.float32, r"got \[1, 3, 128, 96\]"),
        ((1, 3, 128, 128), torch.uint8, r"floating point and normalised.*got dtype torch.uint8"),
    ],
)
def test_bad_images_get_a_clear_error(tiny, shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        tiny(torch.zeros(shape, dtype=dtype))


def test_base_and_config_must_agree():
    with pytest.raises(ValueError, match="the base gives 5 source maps but config 'SSD300' has 6"):
        SSD(tiny_features(), anchors.SSD300, 21)
    with pytest.raises(
        ValueError, match=r"num_classes needs C >= 2 classes \(background \+ 1\), got C = 1"
    ):
        SSD(tiny_features(), anchors.SSD_TINY, 1)
    shifted = anchors.config_from_scales(
        "wrong sizes", 128, (16, 8, 4, 2, 2), (0.1, 0.2, 0.4, 0.6, 0.8, 1.0), ((2,),) * 5
    )
    model = SSD(tiny_features(), shifted, 3).eval()  # batch norm: one image only in eval mode
    with pytest.raises(ValueError, match=r"sizes \(16, 8, 4, 2, 1\) but config 'wrong sizes'"):
        model(torch.zeros(1, 3, 128, 128))


def test_build_ssd_rejects_unknown_names_and_pretrained_tiny():
    with pytest.raises(ValueError, match=r"name must be one of \['ssd300', 'ssd300_coco'"):
        build_ssd("ssd301", 21)
    with pytest.raises(ValueError, match="pretrained_base needs a VGG-16 model"):
        build_ssd("ssd_tiny", 21, pretrained_base=True)


def test_vgg16_features_are_the_base_of_ssd300():
    model = build_ssd("ssd300", 21)
    assert (
        model.base.out_channels == vgg16_features().out_channels == [512, 1024, 512, 256, 256, 256]
    )


@pytest.mark.internet
@pytest.mark.slow
def test_load_torchvision_coco_from_the_internet():
    try:
        model = load_torchvision_coco(progress=False).eval()
    except WeightsUnavailableError as err:
        pytest.skip(f"offline: {err}")
    from torchvision.models.detection import SSD300_VGG16_Weights

    theirs = ssd300_vgg16(weights=SSD300_VGG16_Weights.COCO_V1).eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        expected = theirs.head(list(theirs.backbone(x).values()))
        loc, conf = model(x)
    assert model.num_classes == 91
    torch.testing.assert_close(loc, expected["bbox_regression"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(conf, expected["cls_logits"], rtol=1e-4, atol=1e-3)


def test_ssdlite320_predicts_one_row_per_default_box():
    model = build_ssd("ssdlite320", 21).eval()
    with torch.no_grad():
        loc, conf = model(torch.randn(2, 3, 320, 320))
    config = anchors.SSDLITE320
    assert model.config is config and config.boxes_per_cell == (6,) * 6
    assert config.num_boxes == 6 * (20 * 20 + 10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) == 3234
    assert loc.shape == (2, 3234, 4) and conf.shape == (2, 3234, 21)
    assert len(anchors.default_boxes(config)) == 3234


def test_ssdlite320_default_boxes_equal_torchvision_ssdlite():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    from ssd_tutorial.boxes import center_to_corners

    # the generator of torchvision's ssdlite320_mobilenet_v3_large
    generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    images = ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)])
    features = [torch.zeros(1, 1, f, f) for f in anchors.SSDLITE320.feature_maps]
    theirs = generator(images, features)[0] / 320
    ours = center_to_corners(anchors.default_boxes(anchors.SSDLITE320))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_ssdlite_heads_are_depthwise_separable():
    model = build_ssd("ssdlite320", 21)
    for predictors, width in ((model.head.loc, 4), (model.head.conf, 21)):
        for predictor, channels in zip(predictors, model.base.out_channels):
            depthwise, pointwise = predictor.depthwise[0], predictor.pointwise
            assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == channels
            assert depthwise.kernel_size == (3, 3) and depthwise.bias is None
            assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 6 * width
    plain = build_ssd("ssd_tiny", 21).head.loc[0]
    assert isinstance(plain, nn.Conv2d) and plain.groups == 1


@pytest.fixture(scope="module")
def torchvision_ssdlite():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()


def _ssdlite_like_torchvision() -> SSD:
    """Ours with the reduced tail that torchvision's SSDLite uses without pretrained weights."""
    from ssd_tutorial.backbones import ssdlite_features

    return SSD(ssdlite_features(reduced_tail=True), anchors.SSDLITE320, 91, separable_head=True)


def test_ssdlite_parameter_counts_against_torchvision(torchvision_ssdlite):
    # torchvision's model table: 3.44M parameters; it reduces the tail (the last stage at half
    # width) when no ImageNet backbone is loaded, and so does ours when asked to
    assert count_parameters(torchvision_ssdlite) == 3_440_060
    assert count_parameters(_ssdlite_like_torchvision()) == 3_440_060
    # ssdlite320 keeps the full tail, so that ImageNet weights fit: the difference is the last
    # three blocks and last layer at full width, and what reads that layer's 960 channels
    # instead of 480: the first extra level (a 1x1 conv to 256 channels, no bias) and the two
    # predictors of the second map (a 3x3 depthwise + BN each, 1x1 convs to 6 * 4 and 6 * 91)
    from torchvision.models import mobilenet_v3_large

    tail = count_parameters(mobilenet_v3_large().features) - count_parameters(
        mobilenet_v3_large(reduced_tail=True).features
    )
    full = count_parameters(build_ssd("ssdlite320", 91))
    assert full - 3_440_060 == tail + (960 - 480) * (256 + 2 * (9 + 2) + 6 * 4 + 6 * 91)


def test_ssdlite_with_reduced_tail_equals_torchvision_ssdlite(torchvision_ssdlite):
    ours = _randomize(_ssdlite_like_torchvision(), seed=2).eval()
    theirs = torchvision_ssdlite
    # Both list their tensors in the same order (torchvision only nests the MobileNet blocks
    # differently); heads: our loc/conf are its regression/classification heads.
    pairs = [
        (ours.base, theirs.backbone),
        (ours.head.loc, theirs.head.regression_head.module_list),
        (ours.head.conf, theirs.head.classification_head.module_list),
    ]
    for mine, their_part in pairs:
        source, target = mine.state_dict(), their_part.state_dict()
        assert [v.shape for v in source.values()] == [v.shape for v in target.values()]
        their_part.load_state_dict(dict(zip(target, source.values())))
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        expected = theirs.head(list(theirs.backbone(x).values()))
        loc, conf = ours(x)
    for got, want in ((loc, expected["bbox_regression"]), (conf, expected["cls_logits"])):
        assert want.abs().max() > 0.1  # not trivially small
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max())


@pytest.mark.parametrize("name", ["ssdlite320", "ssdlite_tiny"])
def test_ssdlite_round_trips_through_a_checkpoint(tmp_path, name):
    from ssd_tutorial.checkpoint import load_model
    from ssd_tutorial.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = _randomize(build_ssd(name, 9), seed=3)
    Trainer(model, TrainConfig(), device="cpu", progress=False).save_checkpoint(tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.architecture == name and loaded.config is model.config
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    x = torch.randn(1, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_ssdlite_tiny_shares_the_tiny_models_default_boxes():
    model = build_ssd("ssdlite_tiny", 9).eval()
    with torch.no_grad():
        loc, conf = model(torch.randn(2, 3, 128, 128))
    assert model.config is anchors.SSD_TINY
    assert loc.shape == (2, 1524, 4) and conf.shape == (2, 1524, 9)


def test_every_architecture_record_builds_its_network_with_its_default_boxes():
    for name, architecture in ARCHITECTURES.items():
        with torch.device("meta"):  # shapes only
            model = build_ssd(name, 3)
        assert model.config is architecture.anchors and model.architecture == name
        assert model.head.num_classes == 3
