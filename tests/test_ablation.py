import pytest
import torch

from ssd_tutorial import ablation
from ssd_tutorial.anchors import SSD_TINY
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.data.sizes import LARGE_AREA, SMALL_AREA
from ssd_tutorial.data.transforms import train_transforms
from ssd_tutorial.model import SSD, build_ssd, config_for_size


@pytest.mark.parametrize(("ratios", "per_cell"), [((), 2), ((2,), 4), ((2, 3), 6)])
def test_with_ratios_puts_the_same_ratios_on_every_map(ratios, per_cell):
    config = ablation.with_ratios(SSD_TINY, ratios)
    assert config.boxes_per_cell == (per_cell,) * 5
    assert config.num_boxes == per_cell * (256 + 64 + 16 + 4 + 1)
    assert config.feature_maps == SSD_TINY.feature_maps and config.scales == SSD_TINY.scales


def test_with_ratios_names_the_set():
    assert ablation.with_ratios(SSD_TINY, (2, 3)).name == "{1, 2, 3}"
    assert ablation.with_ratios(SSD_TINY, ()).name == "{1}"


def test_with_ratios_rejects_explicit_shapes():
    config = SSD_TINY.__class__(**{**SSD_TINY.__dict__, "shapes": (((8.0, 8.0),),) * 5})
    with pytest.raises(ValueError, match="explicit shapes"):
        ablation.with_ratios(config, (2,))


def test_augmentation_ablation_switches_known_steps():
    for switches in ablation.AUGMENTATION_ABLATION.values():
        train_transforms(128, **switches)  # an unknown switch would raise TypeError
    assert ablation.AUGMENTATION_ABLATION["all"] == {}
    assert not any(ablation.AUGMENTATION_ABLATION["none"].values())


def test_size_buckets_cover_all_areas_at_the_package_thresholds():
    buckets = ablation.SIZE_BUCKETS
    assert buckets["small"] == (0.0, SMALL_AREA) and buckets["large"] == (LARGE_AREA, 1.0)
    assert (
        buckets["small"][1] == buckets["medium"][0] and buckets["medium"][1] == buckets["large"][0]
    )


def test_tiny_ssd_builds_like_the_zoo():
    torch.manual_seed(0)
    default = ablation.tiny_ssd()(9)
    torch.manual_seed(0)
    reference = build_ssd("ssd_tiny", 9)
    torch.testing.assert_close(default.state_dict(), reference.state_dict(), rtol=0, atol=0)


def test_tiny_ssd_at_another_size_resizes_the_default_boxes():
    model = ablation.tiny_ssd(image_size=96)(9)
    assert model.config.image_size == 96 and model.config.feature_maps == (12, 6, 3, 2, 1)
    loc, conf = model(torch.zeros(2, 3, 96, 96))
    assert loc.shape == (2, model.config.num_boxes, 4) and conf.shape[-1] == 9


def test_config_for_size_reads_the_maps_and_leaves_the_base_as_it_was():
    base = tiny_features()
    running_mean = base.backbone.conv1_to_conv4.bn1_1.running_mean.clone()
    config = config_for_size(base, SSD_TINY, 256)
    assert config.feature_maps == (32, 16, 8, 4, 2) and config.image_size == 256
    assert base.training
    torch.testing.assert_close(base.backbone.conv1_to_conv4.bn1_1.running_mean, running_mean)
    assert config_for_size(base, SSD_TINY, 128).feature_maps == SSD_TINY.feature_maps
    with pytest.raises(ValueError, match="positive number of pixels"):
        config_for_size(base, SSD_TINY, 0)


def test_evaluate_variant_reports_overall_and_per_size_map():
    torch.manual_seed(0)
    model = SSD(tiny_features(), SSD_TINY, 9).eval()
    metrics = ablation.evaluate_variant(model, num_images=4, batch_size=2)
    assert 0 <= metrics["map"] <= 1
    buckets = [k for k in metrics if k.startswith("map_")]
    assert buckets and all(b.removeprefix("map_") in ablation.SIZE_BUCKETS for b in buckets)
    assert all(metrics[f"objects_{b.removeprefix('map_')}"] > 0 for b in buckets)


def test_detection_latency_is_a_positive_time():
    model = SSD(tiny_features(), SSD_TINY, 9)
    assert 0 < ablation.detection_latency(model, batch_size=2, repeats=2) < 10
    with pytest.raises(ValueError, match="repeats"):
        ablation.detection_latency(model, repeats=0)


@pytest.mark.slow
def test_run_variant_trains_once_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TUTORIAL_CACHE", str(tmp_path))
    build = ablation.tiny_ssd(ablation.with_ratios(SSD_TINY, ()))
    metrics = ablation.run_variant(
        "squares", 1, build=build, augmentations={"flip": False}, num_images=4, progress=False
    )
    assert metrics["boxes"] == 2 * 341 and metrics["image_size"] == 128
    assert 0 <= metrics["map"] <= 1 and metrics["latency_ms"] > 0
    run = tmp_path / "squares_shapes_1_steps"
    assert (run / "model.pt").is_file() and (run / "train.csv").is_file()
    assert not (run / "eval.csv").exists()  # scored once, after training, not every epoch


def test_results_table_lines_up_variants_and_metrics():
    results = {"all": {"map": 0.5, "boxes": 1524}, "no flip": {"map": 0.25}}
    table = ablation.results_table(results, ["map", "boxes"])
    assert table.splitlines() == [
        "variant    map  boxes",
        "all      0.500   1524",
        "no flip  0.250      -",
    ]


def test_results_table_shows_a_spread_beside_its_mean():
    results = {"all": {"map": 0.5, "map_std": 0.0125, "boxes": 1524}}
    assert ablation.results_table(results, ["map", "boxes"]).splitlines()[1] == (
        "all      0.500 ± 0.013   1524"
    )


def test_run_seeds_runs_every_seed_and_summarises_each_metric(monkeypatch):
    calls = []

    def fake_run(name, steps=None, *, seed=0, **options):
        calls.append((name, steps, seed, options))
        metrics = {"map": 0.1 * (seed + 1), "boxes": 1524}
        if seed != 1:
            metrics["map_small"] = 0.5  # a bucket one run lacks has no summary
        return metrics

    monkeypatch.setattr(ablation, "run_variant", fake_run)
    summary = ablation.run_seeds("v", 7, seeds=(0, 1, 2), num_images=5)
    assert calls == [("v", 7, seed, {"num_images": 5}) for seed in (0, 1, 2)]
    assert summary["map"] == pytest.approx(0.2) and summary["map_std"] == pytest.approx(0.1)
    assert summary["boxes"] == 1524 and "boxes_std" not in summary
    assert "map_small" not in summary and len(summary["runs"]) == 3
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ablation.run_seeds("v", 7, seeds=(0,))


def summary_of(*values):
    runs = [{"map": v} for v in values]
    return {"runs": runs, "map": sum(values) / len(values), "map_std": torch.tensor(values).std()}


@pytest.mark.parametrize(
    ("better", "worse", "verdict"),
    [
        ((0.50, 0.52, 0.51), (0.40, 0.41, 0.39), "held"),
        ((0.40, 0.41, 0.39), (0.50, 0.52, 0.51), "did not hold"),
        ((0.50, 0.30, 0.40), (0.45, 0.35, 0.38), "undecided at this budget"),
    ],
)
def test_compare_reads_a_difference_against_two_standard_errors(better, worse, verdict):
    difference, error, said = ablation.compare(summary_of(*better), summary_of(*worse), "map")
    assert difference == pytest.approx(sum(better) / 3 - sum(worse) / 3)
    expected = (torch.tensor(better).var() / 3 + torch.tensor(worse).var() / 3).sqrt()
    assert float(error) == pytest.approx(float(expected))
    assert said == verdict


def test_paper_output_layers_drop_the_coarsest_layer_first():
    rows = ablation.PAPER_OUTPUT_LAYERS
    assert rows[0][0] == ("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2")
    assert rows[0][1:] == (74.3, 63.4, 8732)  # SSD300's own mAP and number of boxes
    for k in range(1, len(rows) - 1):
        assert rows[k][0] == rows[k - 1][0][:-1]
    assert rows[-1][0] == ("conv7",)
