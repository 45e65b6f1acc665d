import pytest
import torch

from ssd_tutorial import ablation, zoo
from ssd_tutorial.anchors import SSD_TINY, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.variants import (
    DEEPER_TINY_STAGES,
    SelectedSources,
    TopDownContext,
    select_maps,
)

IMAGES = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("keep", [(0,), (4,), (1, 2, 3, 4), (0, 2)])
def test_selected_sources_are_the_bases_maps_at_those_indices(keep):
    base = tiny_features().eval()
    selected = SelectedSources(base, keep)
    with torch.no_grad():
        everything, chosen = base(IMAGES), selected(IMAGES)
    assert len(chosen) == len(keep)
    assert selected.out_channels == [base.out_channels[k] for k in keep]
    for k, source in zip(keep, chosen):
        torch.testing.assert_close(source, everything[k], rtol=0, atol=0)


@pytest.mark.parametrize("keep", [(), (2, 1), (0, 0), (5,), (-1,)])
def test_selected_sources_reject_indices_that_are_not_maps_in_order(keep):
    with pytest.raises(ValueError, match="increasing, each in"):
        SelectedSources(tiny_features(), keep)
    with pytest.raises(ValueError, match="increasing, each in"):
        select_maps(SSD_TINY, keep)


@pytest.mark.parametrize("keep", [(0,), (1, 2, 3, 4), (0, 4)])
def test_select_maps_keeps_exactly_those_maps_default_boxes(keep):
    config = select_maps(SSD_TINY, keep)
    per_map = [f * f * b for f, b in zip(SSD_TINY.feature_maps, SSD_TINY.boxes_per_cell)]
    offsets = [sum(per_map[:k]) for k in range(len(per_map))]
    rows = torch.cat([torch.arange(offsets[k], offsets[k] + per_map[k]) for k in keep])
    torch.testing.assert_close(default_boxes(config), default_boxes(SSD_TINY)[rows])
    assert config.feature_maps == tuple(SSD_TINY.feature_maps[k] for k in keep)
    assert config.name == "SSD_TINY maps " + "+".join(str(SSD_TINY.feature_maps[k]) for k in keep)


def test_top_down_context_changes_the_finest_map_only():
    torch.manual_seed(0)
    base = tiny_features().eval()
    with_context = TopDownContext(base).eval()
    with torch.no_grad():
        plain, merged = base(IMAGES), with_context(IMAGES)
    assert [m.shape for m in merged] == [m.shape for m in plain]
    assert with_context.out_channels == base.out_channels
    for a, b in zip(plain[1:], merged[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(plain[0], merged[0])


def centre_cell_reach(base: torch.nn.Module) -> int:
    """Rows of a 256 px image whose pixels move the centre cell of the finest map."""
    image = torch.rand(1, 3, 256, 256, requires_grad=True)
    first = base.eval()(image)[0]
    centre = first.shape[-1] // 2
    first[0, :, centre, centre].sum().backward()
    return int((image.grad[0].abs().sum(dim=(0, 2)) > 0).sum())


def test_top_down_context_lets_the_finest_map_see_as_far_as_the_next():
    torch.manual_seed(0)
    base = tiny_features()
    assert centre_cell_reach(TopDownContext(base)) > centre_cell_reach(base)


def test_deeper_base_has_two_convs_per_stage_and_the_same_maps():
    deeper = ablation.tiny_ssd(stages=DEEPER_TINY_STAGES)(9)
    plain = ablation.tiny_ssd()(9)
    convs = [
        sum(isinstance(m, torch.nn.Conv2d) for m in model.base.backbone.modules())
        for model in (plain, deeper)
    ]
    assert convs[1] == convs[0] + 5
    assert deeper.config == plain.config
    loc, conf = deeper(IMAGES)
    assert loc.shape == (2, SSD_TINY.num_boxes, 4) and conf.shape == (2, SSD_TINY.num_boxes, 9)


def test_tiny_ssd_with_fewer_sources_predicts_their_boxes_only():
    model = ablation.tiny_ssd(sources=(0,))(9)
    assert model.config.feature_maps == (16,)
    loc, _ = model(IMAGES)
    assert loc.shape == (2, 16 * 16 * SSD_TINY.boxes_per_cell[0], 4)


def test_run_variant_on_a_small_pool_scores_the_training_images_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TUTORIAL_CACHE", str(tmp_path))
    pools = []
    loader = zoo.training_loader

    def recording_loader(size, augmentations, pool_images):
        pools.append(pool_images)
        return loader(size, augmentations, pool_images)

    monkeypatch.setattr(zoo, "training_loader", recording_loader)
    metrics = ablation.run_variant("pool", 2, num_images=6, progress=False, pool_images=4)
    assert pools == [4]
    assert 0 <= metrics["train_map"] <= 1
    assert metrics["gap"] == pytest.approx(metrics["train_map"] - metrics["map"])
    assert metrics["parameters"] == sum(p.numel() for p in ablation.tiny_ssd()(9).parameters())
