"""The explorers in real Chromium, each from a standalone page the package writes (no book build).

For every explorer: each control changes the drawing, the numbers its script computes equal the
package's on the same inputs, and the page logs no error and asks for nothing over the network.
"""

from __future__ import annotations

import pytest
import torch

from ssd_tutorial import (
    anchor_clustering,
    anchors,
    boxes,
    evaluate,
    explorer,
    loss,
    matching,
    postprocess,
)
from ssd_tutorial.data import CLASS_NAMES, SyntheticShapes, eval_transforms
from ssd_tutorial.model import build_ssd
from ssd_tutorial.photos import chelsea

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def open_explorer(open_page, tmp_path):
    """``open_explorer(data)``: the page of one explorer, opened offline, drawn."""

    def open_(data: dict):
        path = tmp_path / f"{data['explorer']}.html"
        path.write_text(explorer.standalone_page(data))
        page = open_page(path)
        page.page.wait_for_selector(".ssd-explorer [data-role=status]")
        return page

    return open_


def drawing(page) -> str:
    return page.page.inner_html(".ssd-explorer-canvas")


def status(page) -> str:
    return page.page.inner_text(".ssd-explorer [data-role=status]")


def changes_drawing(page, action) -> bool:
    """Whether ``action()`` changes the picture and the status line."""
    before = drawing(page), status(page)
    action()
    return (drawing(page), status(page)) != before


def assert_clean(page) -> None:
    assert page.blocked == [], f"the page needs the network: {page.blocked}"
    assert page.our_errors() == []


def kmeans_tiny() -> anchors.AnchorConfig:
    """A config with explicit box shapes: k-means over random object sizes on SSD_TINY's maps."""
    generator = torch.Generator().manual_seed(0)
    wh = torch.rand(400, 2, generator=generator) * 100 + 4
    return anchor_clustering.kmeans_config(wh, anchors.SSD_TINY)


# --- anchors -----------------------------------------------------------------------------------


def test_anchor_explorer_draws_explicit_shapes_as_the_package(open_explorer):
    config = kmeans_tiny()
    assert config.shapes
    page = open_explorer(explorer.anchor_data({"k-means": config, "SSD300": anchors.SSD300}))
    for c in (config, anchors.SSD300):
        theirs = page.page.evaluate(
            "config => window.ssdExplorer.allBoxes(config)", explorer.config_json(c)
        )
        ours = anchors.default_boxes(c, dtype=torch.float64)
        torch.testing.assert_close(torch.tensor(theirs, dtype=torch.float64), ours, rtol=0, atol=0)
    total = page.page.locator("[data-role=total]")
    assert total.inner_text() == str(config.num_boxes)
    assert page.page.locator("[data-role=scale]").is_disabled()
    maps = page.page.eval_on_selector_all("[data-role=map] option", "els => els.map(e => e.text)")
    assert maps[0] == "16x16 (conv4_1)"
    cell = page.page.locator(".default-box")
    assert cell.count() == config.boxes_per_cell[0]
    page.page.select_option("[data-role=config]", "SSD300")
    assert total.inner_text() == "8732"
    assert_clean(page)


# --- matching ----------------------------------------------------------------------------------


@pytest.fixture
def cat_matching(open_explorer):
    photo = chelsea()
    height, width = photo.size
    boxes = photo.boxes / torch.tensor([width, height, width, height])
    data = explorer.matching_data(anchors.SSD300, photo.image, boxes, photo.names)
    return open_explorer(data), data


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7])
def test_matching_script_equals_the_package(cat_matching, threshold):
    page, data = cat_matching
    objects = [o["box"] for o in data["ground_truth"]]
    objects.append([0.5, 0.3, 0.512, 0.312])  # a tiny object: only its forced box
    theirs = page.page.evaluate(
        """([objects, config, threshold]) => {
            const X = window.ssdExplorer;
            return X.match(objects, X.allBoxes(config).map(X.corners), threshold);
        }""",
        [objects, data["config"], threshold],
    )
    priors = anchors.default_boxes(anchors.SSD300, dtype=torch.float64)
    gt = torch.tensor(objects, dtype=torch.float64)
    iou = boxes.box_iou(gt, boxes.center_to_corners(priors))
    torch.testing.assert_close(
        torch.tensor(theirs["iou"], dtype=torch.float64), iou, rtol=0, atol=0
    )
    assert theirs["forced"] == iou.argmax(dim=1).tolist()
    assert theirs["objectIndex"] == matching.match_indices([gt], priors, threshold)[0].tolist()
    assert_clean(page)


def test_matching_table_counts_the_package_positives(cat_matching):
    page, data = cat_matching
    priors = anchors.default_boxes(anchors.SSD300, dtype=torch.float64)
    gt = torch.tensor([o["box"] for o in data["ground_truth"]], dtype=torch.float64)
    index = matching.match_indices([gt], priors)[0]
    map_of_prior = anchors.feature_map_index(anchors.SSD300)
    for k in range(len(gt)):
        page.page.select_option("[data-role=object]", str(k))
        rows = page.page.eval_on_selector_all(
            ".ssd-counts tr:not(.ssd-total)",
            "rows => rows.slice(1).map(r => +r.cells[3].innerText)",
        )
        expected = torch.bincount(map_of_prior[index == k], minlength=6).tolist()
        assert rows == expected
    assert page.page.inner_text("[data-role=all-positives]") == str(int((index >= 0).sum()))


def test_matching_controls_change_the_drawing(cat_matching):
    page, _ = cat_matching
    p = page.page
    positives = p.locator("[data-role=positives]")
    assert changes_drawing(page, lambda: p.select_option("[data-role=object]", "1"))
    assert changes_drawing(page, lambda: p.select_option("[data-role=map]", "1"))
    before = int(positives.inner_text())
    assert changes_drawing(page, lambda: p.locator("[data-role=threshold]").fill("0.3"))
    assert int(positives.inner_text()) > before
    for role in ("box-x", "box-y", "box-w", "box-h"):
        assert changes_drawing(page, lambda role=role: p.locator(f"[data-role={role}]").fill("0.3"))
    assert changes_drawing(page, lambda: p.click("[data-role=tiny]"))
    assert positives.inner_text() == "1"  # only the forced default box
    assert changes_drawing(page, lambda: p.click("[data-role=reset]"))
    canvas = p.locator(".ssd-explorer-canvas").bounding_box()

    def drag() -> None:
        p.mouse.move(canvas["x"] + 100, canvas["y"] + 100)
        p.mouse.down()
        p.mouse.move(canvas["x"] + 200, canvas["y"] + 160)
        p.mouse.up()

    assert changes_drawing(page, drag)
    assert float(p.input_value("[data-role=box-w]")) == pytest.approx(100 / 420, abs=0.01)
    assert_clean(page)


# --- NMS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_and_image():
    """A seeded, untrained ssd_tiny (its outputs are all the explorers need) and one image."""
    torch.manual_seed(0)
    model = build_ssd("ssd_tiny", num_classes=len(CLASS_NAMES)).eval()
    dataset = SyntheticShapes(length=4, image_size=128, seed=2, transforms=eval_transforms(128))
    image, target = dataset[1]
    return model, image, target


@pytest.fixture
def nms_page(open_explorer, tiny_model_and_image):
    model, image, target = tiny_model_and_image
    data = explorer.nms_data(model, image, CLASS_NAMES, target["boxes"], target["labels"])
    return open_explorer(data), data


@pytest.mark.parametrize(("score", "iou"), [(0.01, 0.45), (0.17, 0.3), (0.2, 0.6)])
def test_nms_steps_and_detections_equal_the_package(nms_page, tiny_model_and_image, score, iou):
    page, data = nms_page
    model, image, _ = tiny_model_and_image
    for c in data["candidates"].values():
        scores = torch.tensor(c["score"], dtype=torch.float32)
        kept = scores > score
        boxes_ = torch.tensor(c["box"], dtype=torch.float32)[kept]
        steps = page.page.evaluate(
            "([boxes, iou]) => window.ssdExplorer.nmsSteps(boxes, iou)",
            [c["box"][: int(kept.sum())], iou],
        )
        # after every step, the kept boxes are the first ones postprocess.nms keeps
        assert [s["best"] for s in steps] == postprocess.nms(boxes_, scores[kept], iou).tolist()
    with torch.no_grad():
        loc, conf = model(image[None])
    priors = anchors.default_boxes(model.config)
    found = postprocess.detect(loc, conf, priors, conf_threshold=score, nms_threshold=iou)[0]
    theirs = page.page.evaluate(
        "([c, s, i]) => window.ssdExplorer.nmsDetections(c, s, i, 200)",
        [data["candidates"], score, iou],
    )
    assert [d["label"] for d in theirs] == found.labels.tolist()
    torch.testing.assert_close(torch.tensor([d["score"] for d in theirs]), found.scores)
    torch.testing.assert_close(torch.tensor([d["box"] for d in theirs]).reshape(-1, 4), found.boxes)


def test_nms_controls_change_the_drawing(nms_page):
    page, data = nms_page
    p = page.page
    first = data["initial_class"]
    assert max(data["candidates"][first]["score"]) == max(
        max(c["score"], default=0) for c in data["candidates"].values()
    )
    assert p.locator("[data-role=class]").input_value() == str(first)
    kept = p.locator(".ssd-kept, .ssd-best")
    assert kept.count() == 1
    assert changes_drawing(page, lambda: p.click("[data-role=forward]"))
    assert kept.count() == 2
    assert changes_drawing(page, lambda: p.click("[data-role=back]"))
    assert changes_drawing(page, lambda: p.click("[data-role=end]"))
    assert "left" in status(page) and status(page).endswith(" 0 left")
    assert changes_drawing(page, lambda: p.locator("[data-role=step]").fill("2"))
    # another class, one with candidates that a score threshold of 0.18 drops
    others = [c for c in data["candidates"] if c != first]
    other = str(min(others, key=lambda c: min(data["candidates"][c]["score"], default=1.0)))
    assert changes_drawing(page, lambda: p.select_option("[data-role=class]", other))
    assert changes_drawing(page, lambda: p.locator("[data-role=score]").fill("0.18"))
    assert changes_drawing(page, lambda: p.locator("[data-role=iou]").fill("0.2"))
    summary = p.locator("[data-role=all-classes]")
    before = summary.inner_text()
    p.locator("[data-role=top-k]").fill("3")
    assert summary.inner_text() != before and summary.inner_text().endswith("keeps 3.")
    assert_clean(page)


# --- hard negatives ----------------------------------------------------------------------------


@pytest.fixture
def mining_page(open_explorer, tiny_model_and_image):
    model, image, target = tiny_model_and_image
    data = explorer.mining_data(model, image, target["boxes"], target["labels"], CLASS_NAMES)
    return open_explorer(data), data


@pytest.mark.parametrize("ratio", [3, 0.5, 7])
def test_mined_set_and_loss_terms_equal_the_package(mining_page, tiny_model_and_image, ratio):
    page, data = mining_page
    model, image, target = tiny_model_and_image
    theirs = page.page.evaluate("([d, r]) => window.ssdExplorer.mine(d, r)", [data, ratio])
    background_loss = torch.tensor([data["background_loss"]])
    positive = torch.tensor([data["label"]]) > 0
    mined = loss.hard_negative_mask(background_loss, positive, ratio)[0]
    assert sorted(theirs["mined"]) == mined.nonzero()[:, 0].tolist()
    with torch.no_grad():
        loc, conf = model(image[None])
    priors = anchors.default_boxes(model.config)
    terms = loss.MultiBoxLoss(neg_pos_ratio=ratio)(
        loc, conf, [target["boxes"]], [target["labels"]], priors
    )
    assert theirs["confidence"] == pytest.approx(float(terms.confidence), rel=1e-5)
    assert theirs["localization"] == pytest.approx(float(terms.localization), rel=1e-5)


def test_mining_controls_change_the_drawing(mining_page):
    page, data = mining_page
    p = page.page
    mined = p.locator(".ssd-explorer-canvas .ssd-mined")
    positives = int((torch.tensor(data["label"]) > 0).sum())
    assert mined.count() == 3 * positives
    conf_loss = p.inner_text("[data-role=conf-loss]")
    assert changes_drawing(page, lambda: p.locator("[data-role=ratio]").fill("1"))
    assert mined.count() == positives
    assert p.inner_text("[data-role=conf-loss]") != conf_loss
    assert changes_drawing(page, lambda: p.select_option("[data-role=map]", "0"))
    assert_clean(page)


# --- AP ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranked_detections():
    """Ground truth of four images (one object difficult) and detections made from it: two
    moved and resized copies of every object (good or poor matches, duplicates) and three boxes
    of random classes anywhere, all with random scores."""
    generator = torch.Generator().manual_seed(0)
    dataset = SyntheticShapes(length=4, image_size=128, seed=5)
    images, targets, detections = [], [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        gt = target["boxes"].as_subclass(torch.Tensor) / 128
        labels = target["labels"]
        difficult = torch.arange(len(gt)) == (0 if i == 0 else -1)
        targets.append({"boxes": gt, "labels": labels, "difficult": difficult})
        centre = boxes.corners_to_center(gt.repeat(2, 1))
        moved = centre[:, :2] + (torch.rand(len(centre), 2, generator=generator) - 0.5) * 0.1
        resized = centre[:, 2:] * (0.7 + 0.6 * torch.rand(len(centre), 2, generator=generator))
        anywhere = torch.rand(3, 4, generator=generator) * torch.tensor([0.6, 0.6, 0.4, 0.4])
        anywhere[:, :2] += anywhere[:, 2:] / 2
        found = torch.cat((torch.cat((moved.clamp(0, 1), resized), dim=1), anywhere))
        detections.append(
            {
                "boxes": boxes.center_to_corners(found).clamp(0, 1),
                "scores": torch.rand(len(found), generator=generator),
                "labels": torch.cat(
                    (labels.repeat(2), torch.randint(1, 6, (3,), generator=generator))
                ),
            }
        )
        images.append(image)
    return detections, targets, images


@pytest.fixture
def ap_page(open_explorer, ranked_detections):
    data = explorer.ap_data(*ranked_detections, CLASS_NAMES)
    return open_explorer(data), data


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7])
def test_ap_at_each_threshold_equals_voc_map(ap_page, ranked_detections, threshold):
    page, data = ap_page
    detections, targets, _ = ranked_detections
    ours = evaluate.voc_map(detections, targets, iou_threshold=threshold)
    area = evaluate.voc_map(detections, targets, iou_threshold=threshold, interpolation="voc2010")
    for c, ap in ours.ap_per_class.items():
        theirs = page.page.evaluate(
            "([d, t, c, i]) => window.ssdExplorer.apCurve(d, t, c, i)",
            [data["detections"], data["ground_truth"], c, threshold],
        )
        assert theirs["ap11"] == pytest.approx(ap, abs=1e-12)
        assert theirs["area"] == pytest.approx(area.ap_per_class[c], abs=1e-12)
        assert theirs["precision"] == ours.precision[c].tolist()
        assert theirs["recall"] == ours.recall[c].tolist()


def test_ap_controls_change_the_drawing(ap_page):
    page, _ = ap_page
    p = page.page
    assert changes_drawing(page, lambda: p.click("[data-role=forward]"))
    assert changes_drawing(page, lambda: p.click("[data-role=back]"))
    assert "to go" in p.inner_text("[data-role=ap]")
    assert changes_drawing(page, lambda: p.click("[data-role=end]"))
    assert p.locator(".ssd-point").count() == 11
    assert p.inner_text("[data-role=ap]").startswith("AP (11-point, VOC2007)")
    ap = p.inner_text("[data-role=ap]")
    p.locator("[data-role=iou]").fill("0.8")
    assert p.inner_text("[data-role=ap]") != ap
    assert changes_drawing(page, lambda: p.locator("[data-role=step]").fill("2"))
    assert changes_drawing(page, lambda: p.select_option("[data-role=class]", index=1))
    assert_clean(page)
