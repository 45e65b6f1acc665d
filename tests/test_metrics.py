import math
import random
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FAR, A, B, C, det, random_scenes, tgt
from ssd_tutorial import cocoeval
from ssd_tutorial import metrics as M

INTERPOLATIONS = ("voc07", "voc2010", "coco101")

# --- hand-made cases with known AP --------------------------------------------------------------


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_perfect_detections_give_ap_one(interpolation):
    targets = [tgt([A, B], [1, 2]), tgt([C], [1])]
    detections = [det([B, A], [0.9, 0.8], [2, 1]), det([C], [0.7], [1])]
    result = M.voc_map(detections, targets, interpolation=interpolation)
    assert result.map == 1.0
    assert result.ap_per_class == {1: 1.0, 2: 1.0}
    assert result.num_positives == {1: 2, 2: 1}


def test_one_true_positive_then_one_false_positive():
    # Two objects; the best detection finds A, the next one hits nothing.
    # precision = [1, 1/2], recall = [1/2, 1/2].
    # VOC07: the envelope is 1 at the recall points 0, 0.1, ..., 0.5 and 0 at 0.6..1 -> 6/11.
    # Area: recall rises by 1/2 at precision 1 -> 1/2.
    detections = [det([A, FAR], [0.9, 0.8])]
    targets = [tgt([A, B])]
    result = M.voc_map(detections, targets, interpolation="voc07")
    torch.testing.assert_close(result.precision[1], torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(result.recall[1], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(result.scores[1], torch.tensor([0.9, 0.8], dtype=torch.float64))
    assert result.map == pytest.approx(6 / 11, abs=1e-15)
    assert M.voc_map(detections, targets, interpolation="voc2010").map == pytest.approx(0.5)


def test_false_positive_ranked_first_halves_the_precision():
    # One object, found by the second detection: precision = [0, 1/2], recall = [0, 1].
    # The envelope is 1/2 everywhere, so every method gives 1/2.
    detections = [det([FAR, A], [0.9, 0.8])]
    for interpolation in INTERPOLATIONS:
        result = M.voc_map(detections, [tgt([A])], interpolation=interpolation)
        assert result.map == pytest.approx(0.5, abs=1e-15)


def test_missed_objects_cap_the_recall():
    # Three objects, one found: precision = [1], recall = [1/3].
    # VOC07: points 0, 0.1, 0.2, 0.3 reach it -> 4/11. Area: 1/3.
    # COCO: points 0, 0.01, ..., 0.33 -> 34/101.
    detections, targets = [det([A], [0.9])], [tgt([A, B, C])]
    expected = {"voc07": 4 / 11, "voc2010": 1 / 3, "coco101": 34 / 101}
    for interpolation, value in expected.items():
        result = M.voc_map(detections, targets, interpolation=interpolation)
        assert result.map == pytest.approx(value, abs=1e-15), interpolation


def test_voc07_recall_points_are_exact_tenths():
    # Ten objects, three found first: recall 3/10 reaches the point 0.3 -> 4/11.
    # (np.arange(0, 1.1, 0.1), as in py-faster-rcnn's voc_eval.py, puts that point at
    # 0.30000000000000004 and would give 3/11.)
    objects = [[20.0 * i, 0.0, 20.0 * i + 10.0, 10.0] for i in range(10)]
    result = M.voc_map([det(objects[:3], [0.9, 0.8, 0.7])], [tgt(objects)])
    assert result.recall[1][-1] == 0.3
    assert result.map == pytest.approx(4 / 11, abs=1e-15)


def test_no_detections_give_ap_zero():
    result = M.voc_map([det([], [])], [tgt([A])])
    assert result.ap_per_class == {1: 0.0}
    assert result.precision[1].numel() == 0


def test_detections_of_other_classes_and_images_are_false_positives():
    detections = [det([A], [0.9], [2]), det([], []), det([A], [0.8], [1])]
    targets = [tgt([A], [1]), tgt([A], [1]), tgt([B], [1])]
    result = M.voc_map(detections, targets)
    assert result.ap_per_class == {1: 0.0}
    torch.testing.assert_close(result.precision[1], torch.tensor([0.0], dtype=torch.float64))


def test_duplicate_detections_are_false_positives():
    # Objects A and B. Ranked: A (TP), A again (duplicate: FP), B (TP).
    # precision = [1, 1/2, 2/3], recall = [1/2, 1/2, 1]; envelope = [1, 2/3, 2/3].
    # Area: 1/2 * 1 + 1/2 * 2/3 = 5/6. VOC07: 6 points at 1, 5 points at 2/3 -> 28/33.
    near_a = [0.5, 0.0, 10.5, 10.0]
    detections = [det([A, near_a, B], [0.9, 0.8, 0.7])]
    targets = [tgt([A, B])]
    result = M.voc_map(detections, targets, interpolation="voc2010")
    torch.testing.assert_close(
        result.precision[1], torch.tensor([1, 1 / 2, 2 / 3], dtype=torch.float64)
    )
    assert result.map == pytest.approx(5 / 6, abs=1e-15)
    assert M.voc_map(detections, targets).map == pytest.approx(28 / 33, abs=1e-15)


@pytest.mark.parametrize("matching", ["voc", "coco"])
@pytest.mark.parametrize("flag", ["difficult", "iscrowd"])
def test_difficult_objects_are_neither_found_nor_missed(flag, matching):
    # Object A counts, object B is difficult. Both detections on B (the second would be a
    # duplicate) are ignored, so the ranking is FAR (FP), A (TP): precision [0, 1/2],
    # recall [0, 1] -> 1/2.
    detections = [det([B, FAR, A, B], [0.9, 0.8, 0.7, 0.6])]
    ignored = M.voc_map(
        detections,
        [tgt([A, B], **{flag: [False, True]})],
        interpolation="voc2010",
        matching=matching,
    )
    assert ignored.num_positives == {1: 1}
    torch.testing.assert_close(ignored.precision[1], torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert ignored.map == pytest.approx(0.5)
    # Counted as a normal object instead: B (TP), FAR (FP), A (TP), B (FP) -> 1/2 + 1/2 * 2/3.
    counted = M.voc_map(detections, [tgt([A, B])], interpolation="voc2010")
    assert counted.map == pytest.approx(5 / 6)


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    # Class 1: found. Class 2: detections but no object. Class 3: only a difficult object.
    detections = [det([A, B, C], [0.9, 0.8, 0.7], [1, 2, 3])]
    targets = [tgt([A, C], [1, 3], difficult=[False, True])]
    result = M.voc_map(detections, targets)
    assert result.ap_per_class == {1: 1.0}
    assert set(result.precision) == {1}
    assert result.map == 1.0


def test_voc_matching_calls_a_detection_whose_best_object_is_taken_a_duplicate():
    # A and B overlap (IoU 90/110). The second detection overlaps A by 98/102 and B by 92/108:
    # the devkit looks only at its best object A, already taken -> false positive; pycocotools
    # takes the best free object B -> true positive.
    a, b = [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]
    detections = [det([a, [0.2, 0.0, 10.2, 10.0]], [0.9, 0.8])]
    targets = [tgt([a, b])]
    voc = M.voc_map(detections, targets, interpolation="voc2010", matching="voc")
    coco = M.voc_map(detections, targets, interpolation="voc2010", matching="coco")
    assert voc.map == pytest.approx(0.5)  # precision [1, 1/2], recall [1/2, 1/2]
    assert coco.map == 1.0


def test_iou_exactly_at_the_threshold_is_a_match():
    # IoU = 1 / 2 exactly: the devkit and pycocotools both use IoU >= threshold.
    detections, targets = [det([[0.0, 0.0, 1.0, 1.0]], [0.9])], [tgt([[0.0, 0.0, 2.0, 1.0]])]
    assert M.voc_map(detections, targets, iou_threshold=0.5).map == 1.0
    assert M.voc_map(detections, targets, iou_threshold=0.5001).map == 0.0


def test_inclusive_pixels_adds_one_pixel_to_widths_and_heights():
    # Continuous: 4x9 inside 9x9 -> IoU 36/81 < 1/2. Inclusive pixels: 5x10 in 10x10 -> 1/2.
    detections, targets = [det([[0.0, 0.0, 4.0, 9.0]], [0.9])], [tgt([[0.0, 0.0, 9.0, 9.0]])]
    assert M.voc_map(detections, targets).map == 0.0
    assert M.voc_map(detections, targets, inclusive_pixels=True).map == 1.0


def test_average_precision_known_values():
    precision = torch.tensor([1.0, 0.5, 2 / 3])
    recall = torch.tensor([0.5, 0.5, 1.0])
    assert M.average_precision(precision, recall, "voc2010") == pytest.approx(5 / 6)
    assert M.average_precision(precision, recall, "voc07") == pytest.approx(28 / 33)
    assert M.average_precision(torch.zeros(0), torch.zeros(0)) == 0.0


# --- AP by object size ----------------------------------------------------------------------------


def size_scene():
    small1, small2 = [0.0, 0.0, 16.0, 16.0], [50.0, 0.0, 66.0, 16.0]  # 256 px²
    large = [100.0, 100.0, 300.0, 300.0]  # 40000 px²
    small_fp, large_fp = [400.0, 0.0, 410.0, 10.0], [0.0, 400.0, 150.0, 550.0]
    detections = [
        det([small_fp, small1, large_fp, large], [0.95, 0.9, 0.85, 0.8]),
    ]
    return detections, [tgt([small1, small2, large])]


def test_ap_by_size_ignores_objects_and_unmatched_detections_of_other_sizes():
    detections, targets = size_scene()
    results = M.ap_by_size(detections, targets, interpolation="voc2010")
    # No object is medium-sized: that bucket is left out.
    assert set(results) == {"small", "large"}
    # Small: the large object and the detection on it are ignored, and so is the unmatched large
    # false positive. Ranked: small FP, small1 (TP) of 2 objects -> 1/2 * 1/2 = 1/4.
    small = results["small"]
    assert small.num_positives == {1: 2}
    torch.testing.assert_close(small.precision[1], torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert small.map == pytest.approx(0.25)
    # Large: ranked large FP, large (TP) of 1 object -> 1/2.
    assert results["large"].num_positives == {1: 1}
    assert results["large"].map == pytest.approx(0.5)


def test_ap_by_size_scales_relative_boxes_with_image_sizes():
    detections, targets = size_scene()
    height, width = 600.0, 800.0
    scale = torch.tensor([width, height, width, height])

    def relative(records):
        return [{**r, "boxes": r["boxes"] / scale} for r in records]

    in_pixels = M.ap_by_size(detections, targets)
    scaled = M.ap_by_size(
        relative(detections), relative(targets), image_sizes=[(int(height), int(width))]
    )
    assert {k: v.map for k, v in scaled.items()} == pytest.approx(
        {k: v.map for k, v in in_pixels.items()}
    )


def test_ap_by_size_matches_pycocotools_per_size_at_iou_half():
    detections, targets = random_scenes(random.Random(7), 40, pixel_size=300.0)
    ours = M.ap_by_size(detections, targets, interpolation="coco101", matching="coco")
    precision = cocoeval.run_cocoeval(detections, targets).eval["precision"]
    for area_index, name in enumerate(("small", "medium", "large"), start=1):
        # [T=0 (IoU 0.5), recall points, classes, area range, maxDets=100]
        per_class = precision[0, :, :, area_index, 2]
        theirs = per_class[:, per_class[0] > -1].mean(axis=0).mean()
        assert ours[name].map == pytest.approx(theirs, abs=1e-12), name


# --- equality with references on random scenes ----------------------------------------------------


def devkit_ap(detections, targets, label, iou_threshold, use_07_metric):
    """A plain transliteration of the VOC devkit (VOCevaldet.m + VOCap.m) for one class."""
    objects = []
    for t in targets:
        difficult = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))
        objects.append(
            [
                {"box": b, "difficult": bool(d), "found": False}
                for b, lab, d in zip(t["boxes"].tolist(), t["labels"].tolist(), difficult)
                if lab == label
            ]
        )
    npos = sum(not o["difficult"] for image in objects for o in image)
    ranked = [
        (score, i, box)
        for i, d in enumerate(detections)
        for box, score, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
        if lab == label
    ]
    ranked.sort(key=lambda entry: -entry[0])
    tp, fp = [], []
    for _, i, bb in ranked:
        ovmax, jmax = -math.inf, -1
        for j, obj in enumerate(objects[i]):
            gt = obj["box"]
            iw = min(bb[2], gt[2]) - max(bb[0], gt[0])
            ih = min(bb[3], gt[3]) - max(bb[1], gt[1])
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= iou_threshold:
            if not objects[i][jmax]["difficult"]:
                if not objects[i][jmax]["found"]:
                    tp.append(1)
                    fp.append(0)
                    objects[i][jmax]["found"] = True
                else:
                    tp.append(0)
                    fp.append(1)
        else:
            tp.append(0)
            fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = list(tp / npos)
    prec = list(tp / np.maximum(tp + fp, 1))
    if use_07_metric:
        return (
            sum(max([p for p, r in zip(prec, rec) if r >= k / 10], default=0) for k in range(11))
            / 11
        )
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum(
        (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )


@pytest.mark.parametrize(("interpolation", "use_07"), [("voc07", True), ("voc2010", False)])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_voc_map_matches_a_plain_loop_of_the_devkit(interpolation, use_07, iou_threshold):
    detections, targets = random_scenes(random.Random(1), 60, difficult=True)
    result = M.voc_map(
        detections, targets, iou_threshold=iou_threshold, interpolation=interpolation
    )
    assert len(result.ap_per_class) == 3
    for label, ap in result.ap_per_class.items():
        expected = devkit_ap(detections, targets, label, iou_threshold, use_07)
        assert ap == pytest.approx(expected, abs=1e-12), label


def test_coco101_with_coco_matching_equals_pycocotools_ap50():
    detections, targets = random_scenes(random.Random(2), 80)
    ours = M.voc_map(detections, targets, interpolation="coco101", matching="coco")
    theirs = cocoeval.coco_metrics(detections, targets)
    # Same matching, same recall points, same ranking: equal up to float rounding (pycocotools
    # adds 2.2e-16 to the precision's denominator).
    assert ours.map == pytest.approx(theirs["AP50"], abs=1e-12)
    strict = M.voc_map(
        detections, targets, iou_threshold=0.75, interpolation="coco101", matching="coco"
    )
    assert strict.map == pytest.approx(theirs["AP75"], abs=1e-12)


def test_area_ap_differs_from_pycocotools_ap50_by_at_most_one_percent():
    # The envelope p(r) is non-increasing, so its area lies between the left and right sums
    # over the grid 0, 0.01, ..., 1: with S the sum of p at the 101 points,
    # (S - p(0)) / 100 <= area <= (S - p(1)) / 100, while COCO reports S / 101. Hence
    # |area - S / 101| <= 1/100 per class, and for the mean. The gap is real, not rounding.
    detections, targets = random_scenes(random.Random(3), 80)
    area = M.voc_map(detections, targets, interpolation="voc2010", matching="coco").map
    ap50 = cocoeval.coco_metrics(detections, targets)["AP50"]
    assert 1e-6 < abs(area - ap50) <= 0.01


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1))
def test_voc_map_does_not_depend_on_image_order(seed):
    rng = random.Random(seed)
    detections, targets = random_scenes(rng, 12, difficult=True)
    if not any(bool((~t["difficult"]).any()) for t in targets):
        return
    order = list(range(len(targets)))
    rng.shuffle(order)
    result = M.voc_map(detections, targets)
    shuffled = M.voc_map([detections[i] for i in order], [targets[i] for i in order])
    assert shuffled.ap_per_class == pytest.approx(result.ap_per_class, abs=1e-15)
    assert all(0.0 <= ap <= 1.0 for ap in result.ap_per_class.values())


@pytest.mark.parametrize("matching", ["voc", "coco"])
def test_matching_in_small_blocks_of_images_gives_the_same_result(monkeypatch, matching):
    detections, targets = random_scenes(random.Random(4), 30, difficult=True)
    whole = M.voc_map(detections, targets, matching=matching)
    monkeypatch.setattr(M, "_BLOCK_ELEMENTS", 1)  # one image per block
    assert M.voc_map(detections, targets, matching=matching).ap_per_class == whole.ap_per_class


# --- input forms ----------------------------------------------------------------------------------


class Detections(NamedTuple):
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def test_accepts_named_tuples_numpy_arrays_and_lists():
    detections, targets = random_scenes(random.Random(6), 10, difficult=True)
    expected = M.voc_map(detections, targets).ap_per_class
    as_tuples = [Detections(d["boxes"], d["scores"], d["labels"]) for d in detections]
    as_numpy = [{k: v.numpy() for k, v in t.items()} for t in targets]
    assert M.voc_map(as_tuples, as_numpy).ap_per_class == expected
    as_lists = [{k: v.tolist() for k, v in d.items()} for d in detections]
    assert M.voc_map(as_lists, targets).ap_per_class == pytest.approx(expected, abs=1e-15)


# --- bad input ------------------------------------------------------------------------------------


def test_rejects_different_numbers_of_images():
    with pytest.raises(ValueError, match="one entry per image, got 2 detections and 1 targets"):
        M.voc_map([det([A], [0.9]), det([A], [0.9])], [tgt([A])])


def test_rejects_fields_of_different_lengths():
    bad = {"boxes": torch.tensor([A, B]), "scores": torch.tensor([0.9]), "labels": [1, 1]}
    with pytest.raises(ValueError, match=r"detections\[1\] must have one row per box.*scores 1"):
        M.voc_map([det([A], [0.9]), bad], [tgt([A]), tgt([A])])
    with pytest.raises(ValueError, match=r"targets\[0\].*difficult 3"):
        M.voc_map([det([A], [0.9])], [tgt([A], difficult=[False, True, False])])


def test_rejects_invalid_boxes_naming_the_image():
    with pytest.raises(ValueError, match=r"targets\[1\]\.boxes must satisfy x2 >= x1"):
        M.voc_map([det([A], [0.9])] * 2, [tgt([A]), tgt([[5.0, 0.0, 1.0, 1.0]])])
    with pytest.raises(ValueError, match=r"detections\[0\]\.boxes contains non-finite"):
        M.voc_map([det([[0.0, 0.0, math.nan, 1.0]], [0.9])], [tgt([A])])
    with pytest.raises(ValueError, match=r"detections\[0\]\.boxes must have shape \[N, 4\]"):
        bad = {"boxes": torch.zeros(2, 5), "scores": [0.9, 0.8], "labels": [1, 1]}
        M.voc_map([bad], [tgt([A])])


def test_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"detections\[0\]\.labels must be class ids >= 1 .*got 0"):
        M.voc_map([det([A], [0.9], [0])], [tgt([A])])
    with pytest.raises(
        ValueError, match=r"targets\[0\]\.labels must be class ids in 1\.\.2.*got 3"
    ):
        M.voc_map([det([A], [0.9])], [tgt([A], [3])], num_classes=3)
    with pytest.raises(
        ValueError, match=r"labels must hold integers or booleans, got torch.float32"
    ):
        M.voc_map([det([A], [0.9])], [{"boxes": torch.tensor([A]), "labels": torch.tensor([1.0])}])


def test_rejects_missing_fields_and_non_finite_scores():
    with pytest.raises(ValueError, match=r"detections\[0\] has no 'scores'"):
        M.voc_map([{"boxes": [A], "labels": [1]}], [tgt([A])])
    with pytest.raises(ValueError, match=r"detections\[0\]\.scores must be finite, got nan"):
        M.voc_map([det([A], [math.nan])], [tgt([A])])


def test_rejects_bad_options():
    detections, targets = [det([A], [0.9])], [tgt([A])]
    with pytest.raises(ValueError, match="interpolation must be 'voc07', 'voc2010' or 'coco101'"):
        M.voc_map(detections, targets, interpolation="11point")
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 0"):
        M.voc_map(detections, targets, iou_threshold=0)
    with pytest.raises(ValueError, match="matching must be 'voc' or 'coco'"):
        M.voc_map(detections, targets, matching="greedy")
    with pytest.raises(ValueError, match=r"image_sizes must hold one positive \(height, width\)"):
        M.ap_by_size(detections, targets, image_sizes=[(300, 300), (300, 300)])
    with pytest.raises(ValueError, match="recall must be non-decreasing"):
        M.average_precision(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.2]))


def test_no_ground_truth_is_an_error_not_nan():
    with pytest.raises(ValueError, match="no ground-truth object that counts"):
        M.voc_map([det([A], [0.9])], [tgt([A], difficult=[True])])
    with pytest.raises(ValueError, match="empty"):
        M.voc_map([], [])
