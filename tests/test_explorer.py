import json
import re

import pytest

from ssd_tutorial import anchors
from ssd_tutorial.explorer import anchor_data, anchor_explorer, explorer_html, source_names


def test_data_describes_every_map_of_every_config():
    data = anchor_data()
    assert set(data["configs"]) == set(anchors.CONFIGS)
    for name, config in anchors.CONFIGS.items():
        maps = data["configs"][name]["maps"]
        count = sum(m["size"] ** 2 * (2 + 2 * len(m["ratios"])) for m in maps)
        assert count == config.num_boxes
    sources = [m["source"] for m in data["configs"]["SSD_TINY"]["maps"]]
    assert sources == ["conv4_1", "fc7", "conv8_2", "conv9_2", "conv10_2"]  # the tiny base's layers
    assert data["configs"]["SSD300"]["maps"][0]["source"] == "conv4_3"


def test_ground_truth_is_relative_and_image_embedded():
    data = anchor_data()
    assert data["image"].startswith("data:image/jpeg;base64,")
    for item in data["ground_truth"]:
        x1, y1, x2, y2 = item["box"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def test_html_is_self_contained():
    html = explorer_html(anchor_data(view=200))
    # nothing is fetched: no script sources, and the only URLs are the XML namespaces
    assert "<script src" not in html
    assert set(re.findall(r"https?://[^\s\"'`]+", html)) == {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xhtml",
    }
    payload = re.search(r"render\(document\.getElementById\(\"[\w-]+\"\), (.*)\);\n</script>", html)
    assert json.loads(payload.group(1))["view"] == 200


def test_anchor_explorer_returns_displayable_html():
    assert "window.ssdExplorer.render" in anchor_explorer()._repr_html_()


def test_unknown_initial_config_is_an_error():
    with pytest.raises(ValueError, match="initial config 'SSD999'"):
        anchor_data(initial="SSD999")


def test_explicit_shapes_are_kept():
    config = anchors.AnchorConfig(
        "two shapes", 100, (2,), (50,), (20,), (40,), ((2,),), shapes=(((10, 30), (30, 10)),)
    )
    data = anchor_data({"two shapes": config})
    assert data["configs"]["two shapes"]["maps"][0]["shapes"] == [[10, 30], [30, 10]]
    assert data["configs"]["two shapes"]["maps"][0]["source"] == "map 0"


def test_source_names_follow_the_layers_of_the_model():
    from ssd_tutorial.model import build_ssd

    model = build_ssd("ssd_tiny", num_classes=3)
    names = source_names(model.base, model.config.image_size)
    assert names == ("conv4_1", "fc7", "conv8_2", "conv9_2", "conv10_2")
    assert model.training  # left as it was


def test_unknown_explorer_is_an_error():
    with pytest.raises(ValueError, match="data\\['explorer'\\] must be one of"):
        explorer_html({"explorer": "sliders"})
