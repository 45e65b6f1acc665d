import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.ops import box_iou as tv_box_iou

from ssd_tutorial import anchor_clustering as K
from ssd_tutorial.anchors import SSD_TINY, AnchorConfig, box_shapes, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.matching import match_indices
from ssd_tutorial.model import SSD


def _centred(wh: torch.Tensor) -> torch.Tensor:
    """Corner boxes of shapes ``wh`` all centred on (0, 0)."""
    return torch.cat((-wh / 2, wh / 2), dim=1)


def _one_map(shapes, feature_map=1, image_size=100) -> AnchorConfig:
    """A one-map config with explicit pixel shapes."""
    return AnchorConfig(
        name="one map",
        image_size=image_size,
        feature_maps=(feature_map,),
        steps=(image_size / feature_map,),
        min_sizes=(10,),
        max_sizes=(20,),
        aspect_ratios=((),),
        shapes=(tuple(shapes),),
    )


def test_shape_iou_by_hand():
    # 2x2 and 1x4 centred: intersection 1 x 2 = 2, union 4 + 4 - 2 = 6
    iou = K.shape_iou(torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 4.0], [2.0, 2.0], [4, 4]]))
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 1.0, 0.25]]))


@given(st.integers(0, 2**31 - 1))
def test_shape_iou_equals_torchvision_on_centred_boxes(seed):
    generator = torch.Generator().manual_seed(seed)
    wh1 = torch.rand(7, 2, generator=generator, dtype=torch.float64) + 0.01
    wh2 = torch.rand(5, 2, generator=generator, dtype=torch.float64) + 0.01
    expected = tv_box_iou(_centred(wh1), _centred(wh2))
    torch.testing.assert_close(K.shape_iou(wh1, wh2), expected)


def test_kmeans_finds_two_separated_groups_and_their_means():
    wide = torch.tensor([[0.30, 0.10], [0.34, 0.10], [0.32, 0.12]])
    tall = torch.tensor([[0.05, 0.40], [0.05, 0.44]])
    centres = K.kmeans_shapes(torch.cat((tall, wide)), 2)
    # sorted by area: the tall group (0.05 x 0.42 = 0.021) before the wide (0.32 x 0.107)
    torch.testing.assert_close(
        centres, torch.stack((tall.double().mean(0), wide.double().mean(0))), rtol=0, atol=1e-12
    )


def test_kmeans_is_deterministic_for_a_seed_and_sorted_by_area():
    generator = torch.Generator().manual_seed(3)
    wh = torch.rand(400, 2, generator=generator) * 0.5 + 0.01
    first, again = K.kmeans_shapes(wh, 6, seed=1), K.kmeans_shapes(wh, 6, seed=1)
    assert torch.equal(first, again) and first.dtype == torch.float64
    areas = first.prod(dim=1)
    assert bool((areas.diff() >= 0).all())


def test_kmeans_with_one_cluster_per_box_returns_the_boxes():
    wh = torch.tensor([[0.4, 0.1], [0.1, 0.1], [0.2, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(K.kmeans_shapes(wh, 3), wh[[1, 0, 2]], rtol=0, atol=0)


def test_kmeans_improves_on_its_starting_centres():
    generator = torch.Generator().manual_seed(0)
    wh = torch.rand(500, 2, generator=generator, dtype=torch.float64) * 0.6 + 0.02
    start = K._kmeans_plus_plus(wh, 5, torch.Generator().manual_seed(0))
    end = K.kmeans_shapes(wh, 5, seed=0)

    def avg_iou(centres):
        return K.shape_iou(wh, centres).max(dim=1).values.mean()

    assert avg_iou(end) > avg_iou(start)


def test_kmeans_handles_repeated_boxes():
    wh = torch.tensor([[0.2, 0.2]] * 4 + [[0.5, 0.1]])
    centres = K.kmeans_shapes(wh, 3)
    assert centres.shape == (3, 2) and torch.isfinite(centres).all()


@pytest.mark.parametrize(
    ("wh", "k", "message"),
    [
        (torch.ones(4, 2), 0, "k must be between 1 and the number of boxes"),
        (torch.ones(4, 2), 5, r"number of boxes \(4\)"),
        (torch.ones(4, 3), 2, r"Tensor\[N, 2\]"),
        (torch.zeros(0, 2), 1, "non-empty"),
        (torch.tensor([[0.1, -0.2]]), 1, "positive"),
        (torch.tensor([[0.1, math.nan]]), 1, "finite"),
    ],
)
def test_kmeans_rejects_bad_input(wh, k, message):
    with pytest.raises(ValueError, match=message):
        K.kmeans_shapes(wh, k)


def test_mean_best_iou_by_hand():
    config = _one_map([(20, 20), (40, 10)])  # relative 0.2 x 0.2 and 0.4 x 0.1
    gt = torch.tensor([[0.2, 0.2], [0.4, 0.1], [0.4, 0.4], [0.2, 0.1]])
    # best IoUs: 1, 1, 0.04 / 0.16 = 0.25 (the square), 0.02 / 0.04 = 0.5 (either)
    assert K.mean_best_iou(gt, config) == pytest.approx((1 + 1 + 0.25 + 0.5) / 4)


def test_mean_best_iou_looks_at_the_shapes_of_every_map():
    # SSD_TINY's boxes of the last map (0.725 .. 0.9) fit a large object, those of the first
    # (0.1) a small one; a box clipped to the image counts with its clipped size.
    small, large = torch.tensor([[0.1, 0.1]]), torch.tensor([[0.725, 0.725]])
    assert K.mean_best_iou(small, SSD_TINY) == pytest.approx(1)
    assert K.mean_best_iou(large, SSD_TINY) == pytest.approx(1)
    clipped = _one_map([(150, 50)])
    assert K.mean_best_iou(torch.tensor([[1.0, 0.5]]), clipped) == pytest.approx(1)


@pytest.mark.parametrize("per_map", [True, False])
def test_kmeans_config_keeps_the_maps_and_the_box_counts(per_map):
    generator = torch.Generator().manual_seed(0)
    wh = torch.rand(600, 2, generator=generator) * 0.5 + 0.02
    config = K.kmeans_config(wh, SSD_TINY, name="mine", per_map=per_map)
    assert config.name == "mine"
    assert config.feature_maps == SSD_TINY.feature_maps and config.steps == SSD_TINY.steps
    assert config.boxes_per_cell == SSD_TINY.boxes_per_cell
    assert config.num_boxes == SSD_TINY.num_boxes == default_boxes(config).shape[0]
    # the first default box of the first cell of each map is that map's first shape
    first = torch.tensor([0, 256 * 4, 256 * 4 + 64 * 6, 256 * 4 + 64 * 6 + 16 * 6, 1520])
    torch.testing.assert_close(
        default_boxes(config, torch.float64)[first, 2:],
        torch.tensor([m[0] for m in config.shapes], dtype=torch.float64) / 128,
    )
    model = SSD(tiny_features(), config, 9).eval()  # batch norm: one image only in eval mode
    loc, conf = model(torch.zeros(1, 3, 128, 128))
    assert loc.shape == (1, 1524, 4) and conf.shape == (1, 1524, 9)


def test_kmeans_config_all_at_once_hands_out_the_sorted_clusters():
    generator = torch.Generator().manual_seed(0)
    wh = torch.rand(600, 2, generator=generator) * 0.5 + 0.02
    config = K.kmeans_config(wh, SSD_TINY, per_map=False)
    clusters = K.kmeans_shapes(wh, sum(SSD_TINY.boxes_per_cell))
    shapes = torch.tensor([wh for m in config.shapes for wh in m], dtype=torch.float64)
    torch.testing.assert_close(shapes, clusters * 128)  # smallest clusters on the largest map


def test_kmeans_config_per_map_clusters_each_maps_objects():
    generator = torch.Generator().manual_seed(0)
    wh = torch.rand(600, 2, generator=generator) * 0.9 + 0.02
    config = K.kmeans_config(wh, SSD_TINY, seed=3)
    home = K.map_of_objects(wh, SSD_TINY)
    assert all(int((home == k).sum()) >= count for k, count in enumerate(SSD_TINY.boxes_per_cell))
    for k, count in enumerate(SSD_TINY.boxes_per_cell):
        expected = K.kmeans_shapes(wh[home == k], count, seed=3) * 128
        torch.testing.assert_close(torch.tensor(config.shapes[k], dtype=torch.float64), expected)


def test_kmeans_config_per_map_keeps_the_formula_where_objects_are_too_few():
    # 30 small objects only: the 16x16 map clusters them, the others keep SSD_TINY's boxes
    wh = torch.linspace(0.04, 0.12, 30)[:, None].expand(30, 2) * torch.tensor([1.0, 1.2])
    config = K.kmeans_config(wh, SSD_TINY)
    for k, formula in enumerate(box_shapes(SSD_TINY)[1:], start=1):
        torch.testing.assert_close(torch.tensor(config.shapes[k]).double(), formula * 128)
    assert max(w for w, _ in config.shapes[0]) < 0.13 * 128


def test_map_of_objects_by_hand():
    # SSD_TINY's scales 0.1, 0.2, 0.375, 0.55, 0.725: boundaries at 0.141, 0.274, 0.454, 0.632
    wh = torch.tensor([[0.05, 0.05], [0.15, 0.15], [0.6, 0.15], [0.5, 0.5], [0.9, 0.5]])
    assert K.map_of_objects(wh, SSD_TINY).tolist() == [0, 1, 2, 3, 4]


def test_kmeans_config_fits_the_data_better_than_the_formula():
    # objects that are all wide: the formula's squares and 1:2 boxes fit them poorly
    generator = torch.Generator().manual_seed(0)
    side = torch.rand(500, generator=generator) * 0.3 + 0.05
    wh = torch.stack((side * 2.5, side / 2.5), dim=1)
    config = K.kmeans_config(wh, SSD_TINY)
    assert K.mean_best_iou(wh, config) > K.mean_best_iou(wh, SSD_TINY) + 0.1


def test_match_quality_by_hand():
    # a 2x2 map of 0.5 x 0.5 boxes centred at 0.25 and 0.75
    config = _one_map([(50, 50)], feature_map=2)
    exact = torch.tensor([[0.5, 0.0, 1.0, 0.5]])  # top-right box: IoU 1
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # IoU 0.25 with each of the four
    quality = K.match_quality([exact, whole], config)
    assert quality["mean_best_iou"] == pytest.approx((1 + 0.25) / 2)
    assert quality["matched_fraction"] == pytest.approx(0.5)
    # each object gets exactly one positive: its own box, and the forced best for "whole"
    assert quality["positives_per_object"] == pytest.approx(1)


def test_positives_per_object_counts_the_matching():
    generator = torch.Generator().manual_seed(1)
    images = []
    for n in (3, 0, 5, 2):
        corner = torch.rand(n, 2, generator=generator) * 0.6
        images.append(
            torch.cat((corner, corner + 0.05 + 0.3 * torch.rand(n, 2, generator=generator)), dim=1)
        )
    priors = default_boxes(SSD_TINY, dtype=torch.float64)
    count = 0
    for boxes in images:  # one image at a time: positives per object by a plain loop
        index = match_indices([boxes.double()], priors)[0]
        count += sum(int((index == j).sum()) for j in range(len(boxes)))
    quality = K.match_quality(images, SSD_TINY)
    assert quality["positives_per_object"] == pytest.approx(count / 10)


def test_match_quality_needs_objects():
    with pytest.raises(ValueError, match="no object"):
        K.match_quality([torch.zeros(0, 4)], SSD_TINY)
