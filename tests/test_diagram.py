import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from ssd_tutorial import anchors
from ssd_tutorial.diagram import draw_network, network_columns
from ssd_tutorial.model import SSD, build_ssd
from ssd_tutorial.variants import SelectedSources, select_maps


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(figure, gid=None):
    ax = figure.axes[0]
    return [t.get_text() for t in ax.texts if gid is None or t.get_gid() == gid]


def expected_maps(model):
    """Each source map's ``f×f×channels``, from a pass of the base written out here."""
    model.eval()
    with torch.no_grad():
        size = model.config.image_size
        maps = model.base(torch.zeros(1, 3, size, size))
    return [f"{m.shape[-1]}×{m.shape[-2]}×{m.shape[1]}" for m in maps]


def expected_heads(model):
    """Each head's ``k(C+4)`` from the shapes of its two convolutions' weights."""
    labels = []
    for loc, conf in zip(model.head.loc, model.head.conf):
        k = loc.weight.shape[0] // 4
        classes = conf.weight.shape[0] // k
        labels.append(f"{k}·({classes}+4)\n= {loc.weight.shape[0] + conf.weight.shape[0]}")
    return labels


@pytest.mark.parametrize(
    ("name", "num_classes", "num_maps"),
    [("ssd300", 21, 6), ("ssd512", 21, 7), ("ssd_tiny", 9, 5)],
)
def test_figure_labels_every_map_and_head_from_the_model(name, num_classes, num_maps):
    torch.manual_seed(0)
    model = build_ssd(name, num_classes)
    figure = draw_network(model)
    maps, heads = texts(figure, "map"), texts(figure, "head")
    assert len(maps) == len(heads) == num_maps
    for label, expected in zip(maps, expected_maps(model)):
        assert label.endswith(expected)
    for label, expected in zip(heads, expected_heads(model)):
        assert expected in label
    boxes = texts(figure, "boxes")
    config = model.config
    for label, f, k in zip(boxes, config.feature_maps, config.boxes_per_cell):
        assert label.endswith(f"= {f * f * k} boxes")
    assert any(f"[B, {config.num_boxes}, {num_classes}]" in t for t in texts(figure))


def test_ssd300_figure_names_the_vgg_surgery():
    figure = draw_network(build_ssd("ssd300", 21))
    text = "\n".join(texts(figure))
    for part in ("conv4_3", "L2Norm, γ = 20", "pool5 3×3 stride 1", "fc6 3×3 dilation 6"):
        assert part in text
    for n in range(8, 12):
        assert f"conv{n}_2\n" in text
    assert "conv12_2" not in text
    assert "k(C+4) = 4·(21+4)\n= 100 channels" in text


def test_figure_follows_the_model_it_draws():
    model = build_ssd("ssd_tiny", 9)
    assert "fc6 3×3 dilation 3" in "\n".join(texts(draw_network(model)))
    model.base.backbone.conv5_to_fc7.fc6.dilation = (2, 2)
    model.base.backbone.conv5_to_fc7.fc6.padding = (2, 2)
    assert "fc6 3×3 dilation 2" in "\n".join(texts(draw_network(model)))


def test_number_of_classes_changes_the_head_labels():
    nine = texts(draw_network(build_ssd("ssd_tiny", 9)), "head")
    six = texts(draw_network(build_ssd("ssd_tiny", 6)), "head")
    assert "4·(9+4)\n= 52" in nine[0] and "4·(6+4)\n= 40" in six[0]
    assert all(a != b for a, b in zip(nine, six))


def test_drawing_keeps_the_models_mode_and_draws_into_given_axes():
    model = build_ssd("ssd_tiny", 9).train()
    stats = model.base.backbone.conv1_to_conv4.bn1_1.running_mean.clone()
    figure, ax = plt.subplots()
    assert draw_network(model, ax=ax) is figure
    assert model.training
    torch.testing.assert_close(model.base.backbone.conv1_to_conv4.bn1_1.running_mean, stats)


def test_other_bases_are_drawn_with_generic_sources():
    tiny = build_ssd("ssd_tiny", 9)
    keep = (1, 3)
    model = SSD(SelectedSources(tiny.base, keep), select_maps(anchors.SSD_TINY, keep), 9)
    columns = network_columns(model)
    assert [c.name for c in columns] == ["source 1", "source 2"]
    assert [c.size for c in columns] == [8, 2]
    assert texts(draw_network(model), "map") == ["source 1\n8×8×128", "source 2\n2×2×96"]


def test_separable_heads_are_drawn():
    columns = network_columns(build_ssd("ssdlite320", 21))
    assert [c.size for c in columns] == list(anchors.SSDLITE320.feature_maps)
    assert {c.head for c in columns} == {"separable conv"}
    assert columns[0].loc_channels == 4 * anchors.SSDLITE320.boxes_per_cell[0]


def test_a_module_that_is_not_an_ssd_is_refused():
    with pytest.raises(TypeError, match=r"needs an ssd_tutorial\.model\.SSD"):
        draw_network(nn.Conv2d(3, 8, 3))


def test_heads_that_disagree_with_the_config_are_refused():
    model = build_ssd("ssd_tiny", 9)
    model.head.loc[0] = nn.Conv2d(96, 4 * 5, 3, padding=1)
    with pytest.raises(ValueError, match="head 0 has 20 loc"):
        draw_network(model)
