import dataclasses
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from ssd_tutorial import anchors as A
from ssd_tutorial.boxes import center_to_corners


def test_ssd300_has_8732_boxes():
    assert A.SSD300.boxes_per_cell == (4, 6, 6, 6, 4, 4)
    assert 38**2 * 4 + 19**2 * 6 + 10**2 * 6 + 5**2 * 6 + 3**2 * 4 + 1**2 * 4 == 8732
    assert A.SSD300.num_boxes == 8732
    assert A.default_boxes(A.SSD300).shape == (8732, 4)


def test_ssd512_has_24564_boxes():
    assert A.SSD512.num_boxes == 24564
    assert A.default_boxes(A.SSD512).shape == (24564, 4)


def test_first_cell_of_the_38x38_map_by_hand():
    boxes = A.default_boxes(A.SSD300, dtype=torch.float64)
    c = 0.5 * 8 / 300  # centre of cell (0, 0) with step 8
    s = 30 / 300
    s_prime = math.sqrt(30 * 60) / 300
    expected = torch.tensor(
        [
            [c, c, s, s],
            [c, c, s_prime, s_prime],
            [c, c, s * math.sqrt(2), s / math.sqrt(2)],
            [c, c, s / math.sqrt(2), s * math.sqrt(2)],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(boxes[:4], expected)
    # next cell to the right: same shapes, x moves by one step
    torch.testing.assert_close(boxes[4, 0], torch.tensor(1.5 * 8 / 300, dtype=torch.float64))
    torch.testing.assert_close(boxes[4, 1], torch.tensor(c, dtype=torch.float64))
    # first cell of the second row: y moves by one step
    torch.testing.assert_close(
        boxes[38 * 4, :2], torch.tensor([c, 1.5 * 8 / 300], dtype=torch.float64)
    )


def test_the_1x1_map_by_hand():
    boxes = A.default_boxes(A.SSD300, dtype=torch.float64)[-4:]
    s, s_prime = 264 / 300, math.sqrt(264 * 315) / 300
    wide = min(1.0, s * math.sqrt(2))  # clipped to the image
    expected = torch.tensor(
        [
            [0.5, 0.5, s, s],
            [0.5, 0.5, s_prime, s_prime],
            [0.5, 0.5, wide, s / math.sqrt(2)],
            [0.5, 0.5, s / math.sqrt(2), wide],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(boxes, expected)


def test_order_is_map_then_row_then_column_then_shape():
    config = A.SSD300
    boxes = A.default_boxes(config)
    start = 0
    for f, k in zip(config.feature_maps, config.boxes_per_cell):
        block = boxes[start : start + f * f * k].reshape(f, f, k, 4)
        # x grows along columns, y along rows, shapes repeat in every cell
        assert bool((block[:, 1:, :, 0] > block[:, :-1, :, 0]).all())
        assert bool((block[1:, :, :, 1] > block[:-1, :, :, 1]).all())
        torch.testing.assert_close(
            block[:, :, :, 2:], block[:1, :1, :, 2:].expand_as(block[..., 2:])
        )
        start += f * f * k
    assert start == len(boxes)


def test_coco_config_equals_torchvision_default_box_generator():
    generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    # torchvision returns pixel corner boxes per image through its public forward
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    features = [torch.zeros(1, 1, f, f) for f in (38, 19, 10, 5, 3, 1)]
    theirs = generator(images, features)[0] / 300
    ours = center_to_corners(A.default_boxes(A.SSD300_COCO))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_clip_limits_sizes_but_not_centres():
    boxes = A.default_boxes(A.SSD300)
    assert float(boxes[:, 2:].max()) <= 1.0
    # The reference steps put the 10x10 map's last centres at 9.5 * 32 / 300 > 1.
    assert math.isclose(float(boxes[:, :2].max()), 9.5 * 32 / 300, rel_tol=1e-6)
    unclipped = A.default_boxes(A.AnchorConfig(**{**A.SSD300.__dict__, "clip": False}))
    assert float(unclipped[:, 2:].max()) > 1.0


def test_paper_formula_scales():
    scales = A.paper_scales(6)
    torch.testing.assert_close(
        torch.tensor(scales[:6]), torch.tensor([0.2, 0.34, 0.48, 0.62, 0.76, 0.9])
    )
    config = A.paper_config()
    assert config.num_boxes == 8732
    torch.testing.assert_close(torch.tensor(config.scales), torch.tensor(scales))


def test_config_from_scales_spreads_centres_evenly():
    config = A.config_from_scales("even", 320, (4, 2), (0.2, 0.5, 0.8), ((2,), (2, 3)))
    boxes = A.default_boxes(config)
    assert config.num_boxes == 4 * 4 * 4 + 2 * 2 * 6 == len(boxes)
    torch.testing.assert_close(boxes[0, :2], torch.tensor([0.125, 0.125]))


def test_default_boxes_dtype_and_device():
    boxes = A.default_boxes(A.SSD300, dtype=torch.float16, device="cpu")
    assert boxes.dtype == torch.float16 and boxes.device.type == "cpu"


def test_anchor_table_counts_add_up():
    rows = A.anchor_table(A.SSD512)
    assert sum(r["boxes"] for r in rows) == 24564
    assert rows[0]["size"] == "64x64"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": (8, 16)}, "one entry per feature map"),
        ({"aspect_ratios": ((2,),)}, "one entry per feature map"),
        ({"min_sizes": (0, 60, 111, 162, 213, 264)}, "min_sizes must be positive"),
        ({"aspect_ratios": ((0.5,), (2, 3), (2, 3), (2, 3), (2,), (2,))}, "a >= 1"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_inconsistent_configs_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        A.AnchorConfig(**{**A.SSD300.__dict__, **changes})


def test_config_from_scales_needs_one_extra_scale():
    with pytest.raises(ValueError, match="plus one"):
        A.config_from_scales("bad", 300, (38, 19), (0.1, 0.2), ((2,), (2,)))


def test_ssd_tiny_config():
    config = A.CONFIGS["SSD_TINY"]
    assert config is A.SSD_TINY
    assert config.image_size == 128
    assert config.feature_maps == (16, 8, 4, 2, 1)
    assert config.steps == tuple(128 / f for f in config.feature_maps)
    assert config.boxes_per_cell == (4, 6, 6, 4, 4)
    assert config.num_boxes == A.default_boxes(config).shape[0] == 1524
    assert config.scales == pytest.approx((0.1, 0.2, 0.375, 0.55, 0.725, 0.9))


def test_feature_map_index_follows_the_default_box_order():
    index = A.feature_map_index(A.SSD300)
    assert index.shape == (8732,) and index.dtype == torch.int64
    assert torch.bincount(index).tolist() == [5776, 2166, 600, 150, 36, 4]
    assert index[0] == 0 and index[-1] == 5
    # sizes grow from map to map: the first box of each map is that map's s_k square
    first = torch.cat((torch.tensor([0]), torch.bincount(index).cumsum(0)[:-1]))
    priors = A.default_boxes(A.SSD300)
    assert torch.equal(priors[first, 2], torch.tensor(A.SSD300.min_sizes) / 300)


def test_explicit_shapes_replace_the_formula_boxes():
    shapes = (((16.0, 32.0),), ((64.0, 32.0), (48.0, 48.0)))
    config = A.AnchorConfig(
        name="shapes",
        image_size=128,
        feature_maps=(2, 1),
        steps=(64, 128),
        min_sizes=(16, 48),
        max_sizes=(32, 64),
        aspect_ratios=((), ()),
        shapes=shapes,
    )
    assert config.boxes_per_cell == (1, 2) and config.num_boxes == 2 * 2 * 1 + 1 * 1 * 2
    expected = torch.tensor(
        [
            [0.25, 0.25, 0.125, 0.25],
            [0.75, 0.25, 0.125, 0.25],
            [0.25, 0.75, 0.125, 0.25],
            [0.75, 0.75, 0.125, 0.25],
            [0.5, 0.5, 0.5, 0.25],
            [0.5, 0.5, 0.375, 0.375],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(A.default_boxes(config, torch.float64), expected)
    assert [r["aspect ratios"] for r in A.anchor_table(config)] == ["0.5", "2, 1"]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ((((10.0, 10.0),),) * 5, "one entry per feature map"),
        ((((10.0, 10.0),),) * 5 + ((),), "at least one positive"),
        ((((10.0, 0.0),),) * 6, "at least one positive"),
    ],
)
def test_bad_shapes_are_rejected(shapes, message):
    with pytest.raises(ValueError, match=message):
        A.AnchorConfig(**{**A.SSD300.__dict__, "shapes": shapes})


def test_resized_config_keeps_relative_sizes():
    resized = A.resized_config(A.SSD_TINY, 96, (12, 6, 3, 2, 1))
    assert resized.name == "SSD_TINY@96" and resized.image_size == 96
    assert resized.steps == (8, 16, 32, 48, 96)
    assert resized.scales == pytest.approx(A.SSD_TINY.scales)
    assert resized.boxes_per_cell == A.SSD_TINY.boxes_per_cell
    # the first map's boxes: same shapes, centres spread over the 12 x 12 grid
    first = A.default_boxes(resized, torch.float64)[: 12 * 12 * 4].reshape(12, 12, 4, 4)
    original = A.default_boxes(A.SSD_TINY, torch.float64)[:4]
    torch.testing.assert_close(first[0, 0, :, 2:], original[:, 2:])
    torch.testing.assert_close(first[11, 11, 0, :2], torch.tensor([11.5 / 12] * 2).double())


def test_resized_config_scales_explicit_shapes():
    config = A.AnchorConfig(**{**A.SSD_TINY.__dict__, "shapes": (((32.0, 16.0),),) * 5})
    resized = A.resized_config(config, 256, (32, 16, 8, 4, 2), name="big")
    assert resized.name == "big" and resized.shapes == (((64.0, 32.0),),) * 5


def test_resized_config_needs_one_size_per_map():
    with pytest.raises(ValueError, match="5 feature maps"):
        A.resized_config(A.SSD_TINY, 96, (12, 6, 3))


def test_maps_give_each_feature_maps_entries_together():
    first, *_, last = A.SSD300.maps
    assert len(A.SSD300.maps) == 6
    assert first == A.FeatureMap(38, 8, 30, 60, (2,), 4, ())
    assert last == A.FeatureMap(1, 300, 264, 315, (2,), 4, ())
    shaped = dataclasses.replace(A.SSD300, shapes=(((10.0, 20.0),),) * 6)
    assert [m.shapes for m in shaped.maps] == [((10.0, 20.0),)] * 6
    assert [m.boxes_per_cell for m in shaped.maps] == [1] * 6
