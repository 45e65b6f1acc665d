import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection import ssd300_vgg16
from torchvision.ops import nms as torchvision_nms

from ssd_tutorial import postprocess
from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import box_iou, center_to_corners, decode
from ssd_tutorial.postprocess import Detections, detect, nms

PRIORS = default_boxes(SSD300)


def random_boxes(generator: torch.Generator, n: int, scale: float = 1.0) -> torch.Tensor:
    """``n`` corner-form boxes inside ``[0, scale]``, from tiny to large."""
    center = torch.rand(n, 2, generator=generator) * scale
    size = (torch.rand(n, 2, generator=generator) * 0.5 + 0.01) * scale
    return torch.cat((center - size / 2, center + size / 2), dim=1)


def random_priors(generator: torch.Generator, n: int) -> torch.Tensor:
    """Centre-form default boxes, several sharing each centre as in an SSD."""
    centers = torch.rand((n + 2) // 3, 2, generator=generator).repeat_interleave(3, dim=0)[:n]
    sizes = torch.rand(n, 2, generator=generator) * 0.45 + 0.05
    return torch.cat((centers, sizes), dim=1)


def trained_like_logits(generator: torch.Generator, num_images: int, num_priors: int, C: int):
    """Most default boxes confidently background, a few hundred per image on an object."""
    conf = torch.randn(num_images, num_priors, C, generator=generator)
    conf[..., 0] += 7
    images = torch.arange(num_images)[:, None]
    boxes = torch.randint(0, num_priors, (num_images, 300), generator=generator)
    classes = torch.randint(1, C, (num_images, 300), generator=generator)
    conf[images, boxes, classes] += 4 + 6 * torch.rand(num_images, 300, generator=generator)
    return conf


def reference_detect(loc, conf, priors, conf_threshold, nms_threshold, top_k, candidates):
    """The stages one image and one class at a time, with torchvision's NMS.

    Ties follow the documented rules: candidates are the first of a stable descending sort,
    images collect their classes in order and sort them stably.
    """
    results = []
    for offsets, probabilities in zip(loc, F.softmax(conf, dim=-1)):
        boxes = decode(offsets, priors).clamp(0, 1)
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, conf.shape[2]):
            scores = probabilities[:, label]
            best = scores.argsort(descending=True, stable=True)[:candidates]
            best = best[scores[best] > conf_threshold]
            keep = best[torchvision_nms(boxes[best], scores[best], nms_threshold)]
            kept_boxes.append(boxes[keep])
            kept_scores.append(scores[keep])
            kept_labels.append(torch.full((len(keep),), label))
        scores, order = torch.cat(kept_scores).sort(descending=True, stable=True)
        order = order[:top_k]
        results.append(
            Detections(torch.cat(kept_boxes)[order], scores[:top_k], torch.cat(kept_labels)[order])
        )
    return results


def torchvision_detect(loc, conf, priors, size=300, **options):
    """torchvision's ``SSD.postprocess_detections``, fed pixels, answering in relative units."""
    # Only the post-processing is used: the network's weights can stay unallocated.
    with torch.device("meta"):
        model = ssd300_vgg16(
            weights=None, weights_backbone=None, num_classes=conf.shape[2], **options
        )
    anchors = [center_to_corners(priors) * size] * len(loc)
    outputs = {"bbox_regression": loc, "cls_logits": conf}
    found = model.postprocess_detections(outputs, anchors, [(size, size)] * len(loc))
    return [Detections(d["boxes"] / size, d["scores"], d["labels"]) for d in found]


def assert_same_detections(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.labels.dtype == torch.int64
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores)
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-5, rtol=0)


def assert_within_limits(found, conf_threshold, nms_threshold, top_k, num_classes):
    for image in found:
        assert len(image.boxes) == len(image.scores) == len(image.labels) <= top_k
        assert (image.scores > conf_threshold).all()
        assert (image.scores[1:] <= image.scores[:-1]).all()
        assert ((image.labels >= 1) & (image.labels < num_classes)).all()
        assert ((image.boxes >= 0) & (image.boxes <= 1)).all()
        for label in image.labels.unique():
            boxes = image.boxes[image.labels == label]
            assert (box_iou(boxes, boxes).triu(1) <= nms_threshold).all()


# --- nms ---------------------------------------------------------------------------------------


def test_nms_keeps_the_best_and_drops_what_overlaps_it():
    boxes = torch.tensor(
        [
            [0.0, 0, 10, 10],  # 0.9: kept
            [1, 0, 11, 10],  # 0.8: IoU 0.82 with box 0, dropped
            [5, 0, 15, 10],  # 0.7: IoU 0.33 with box 0, kept
            [20, 20, 30, 30],  # 0.95: overlaps nothing, kept first
            [6, 0, 16, 10],  # 0.6: IoU 0.82 with box 2, dropped
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    assert nms(boxes, scores, 0.45).tolist() == [3, 0, 2]


def test_nms_lets_only_kept_boxes_suppress():
    # Box 2 overlaps box 1 (IoU 0.54) but box 1 was dropped by box 0, so box 2 stays.
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]


def test_nms_drops_only_overlaps_strictly_above_the_threshold():
    boxes = torch.tensor([[0.0, 0, 2, 1], [1, 0, 3, 1]])  # IoU exactly 1/3
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 1 / 3).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_nms_of_no_boxes_is_empty():
    kept = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.int64


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 60),
    iou_threshold=st.floats(0, 1),
    distinct_scores=st.sampled_from([3, 1000, None]),
)
def test_nms_equals_torchvision(seed, n, iou_threshold, distinct_scores):
    generator = torch.Generator().manual_seed(seed)
    boxes = random_boxes(generator, n, scale=100)
    scores = torch.rand(n, generator=generator)
    if distinct_scores is not None:  # many equal scores: ties must go the same way
        scores = (scores * distinct_scores).floor()
    assert torch.equal(
        nms(boxes, scores, iou_threshold), torchvision_nms(boxes, scores, iou_threshold)
    )


def test_nms_visits_equal_scores_in_input_order_like_torchvision():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4 + [[50.0, 50, 60, 60]] * 2)
    scores = torch.tensor([0.5, 0.7, 0.7, 0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4]
    assert torch.equal(nms(boxes, scores, 0.5), torchvision_nms(boxes, scores, 0.5))


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "message"),
    [
        (torch.zeros(3, 4), torch.zeros(2), 0.5, r"boxes must be \[N, 4\] and scores \[N\]"),
        (torch.zeros(3, 4), torch.tensor([0.1, math.nan, 0.2]), 0.5, "scores contains NaN"),
        (torch.zeros(3, 4), torch.zeros(3), 1.5, r"iou_threshold must be in \[0, 1\], got 1.5"),
        (torch.tensor([[1.0, 0, 0, 1]]), torch.zeros(1), 0.5, "x2 >= x1"),
    ],
)
def test_nms_rejects_bad_input(boxes, scores, threshold, message):
    with pytest.raises(ValueError, match=message):
        nms(boxes, scores, threshold)


# --- detect ------------------------------------------------------------------------------------


def probabilities_as_logits(rows) -> torch.Tensor:
    return torch.tensor(rows).log()[None]


def test_detect_known_values():
    # Default boxes 0 and 1 overlap (IoU 0.82), box 2 is elsewhere; classes background, cat, dog.
    priors = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.27, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.4]])
    conf = probabilities_as_logits([[0.1, 0.6, 0.3], [0.2, 0.5, 0.25], [0.995, 0.004, 0.001]])
    (found,) = detect(torch.zeros(1, 3, 4), conf, priors)
    # Box 1 loses to box 0 in both classes; box 2 is below 0.01. The cat and the dog on box 0
    # are both kept: classes do not suppress each other.
    torch.testing.assert_close(found.scores, torch.tensor([0.6, 0.3]))
    assert found.labels.tolist() == [1, 2]
    torch.testing.assert_close(found.boxes, torch.tensor([[0.15, 0.15, 0.35, 0.35]] * 2))


def test_detect_decodes_offsets_and_clamps_boxes_to_the_image():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.05, 0.9, 0.2, 0.4]])
    loc = torch.tensor([[[1.0, -2.0, 0.0, 5 * math.log(2)], [0.0, 0.0, 0.0, 0.0]]])
    conf = probabilities_as_logits([[0.2, 0.8], [0.3, 0.7]])
    (found,) = detect(loc, conf, priors)
    # Box 0: centre (0.5 + 1 * 0.1 * 0.2, 0.5 - 2 * 0.1 * 0.2) = (0.52, 0.46), height doubled
    # to 0.4. Box 1 sticks out of the image on the left and at the bottom.
    expected = torch.tensor([[0.42, 0.26, 0.62, 0.66], [0.0, 0.7, 0.15, 1.0]])
    torch.testing.assert_close(found.boxes, expected)


#: Settings of detect and torchvision's names for them (torchvision keeps 400 candidates per
#: class unless told otherwise).
PAPER_SETTINGS = {"conf_threshold": 0.01, "nms_threshold": 0.45, "top_k": 200}
TORCHVISION_NAMES = {
    "conf_threshold": "score_thresh",
    "nms_threshold": "nms_thresh",
    "top_k": "detections_per_img",
    "candidates_per_class": "topk_candidates",
}


@pytest.mark.parametrize(
    ("seed", "kind", "num_images", "num_classes", "options", "at_least"),
    [
        (0, "trained-like", 2, 6, {**PAPER_SETTINGS, "candidates_per_class": 150}, 51),
        (1, "trained-like", 2, 6, {**PAPER_SETTINGS, "candidates_per_class": 150}, 51),
        (0, "untrained", 2, 6, {**PAPER_SETTINGS, "candidates_per_class": 150}, 51),
        (1, "untrained", 2, 6, {**PAPER_SETTINGS, "candidates_per_class": 150}, 51),
        # Other thresholds; every image fills its top_k of 25.
        (
            2,
            "trained-like",
            3,
            4,
            {"conf_threshold": 0.3, "nms_threshold": 0.6, "top_k": 25, "candidates_per_class": 40},
            75,
        ),
    ],
)
def test_detect_equals_torchvision_postprocess_detections(
    seed, kind, num_images, num_classes, options, at_least
):
    generator = torch.Generator().manual_seed(seed)
    # Offsets small enough that torchvision's clamp of dw, dh (at 20.7 here) never applies.
    loc = torch.randn(num_images, len(PRIORS), 4, generator=generator)
    if kind == "trained-like":
        conf = trained_like_logits(generator, num_images, len(PRIORS), num_classes)
    else:
        conf = torch.randn(num_images, len(PRIORS), num_classes, generator=generator)
    ours = detect(loc, conf, PRIORS, **options)
    theirs = torchvision_detect(
        loc, conf, PRIORS, **{TORCHVISION_NAMES[name]: value for name, value in options.items()}
    )
    assert_same_detections(ours, theirs)
    assert sum(len(d.boxes) for d in ours) >= at_least  # enough detections to compare


@given(
    seed=st.integers(0, 2**31 - 1),
    num_images=st.integers(1, 3),
    num_priors=st.integers(1, 40),
    num_classes=st.integers(2, 5),
    quantized=st.booleans(),
    conf_threshold=st.sampled_from([0.0, 0.01, 0.2, 0.5]),
    nms_threshold=st.sampled_from([0.0, 0.3, 0.45, 1.0]),
    top_k=st.integers(1, 30),
    candidates=st.integers(1, 20),
)
def test_detect_equals_one_image_one_class_at_a_time(
    seed,
    num_images,
    num_priors,
    num_classes,
    quantized,
    conf_threshold,
    nms_threshold,
    top_k,
    candidates,
):
    generator = torch.Generator().manual_seed(seed)
    priors = random_priors(generator, num_priors)
    loc = torch.randn(num_images, num_priors, 4, generator=generator)
    conf = torch.randn(num_images, num_priors, num_classes, generator=generator) * 2
    if quantized:  # few distinct logits and offsets: equal scores and equal boxes everywhere
        conf, loc = conf.round(), loc.round() * 0
    options = (conf_threshold, nms_threshold, top_k, candidates)
    found = detect(loc, conf, priors, *options)
    assert_same_detections(found, reference_detect(loc, conf, priors, *options))
    assert_within_limits(found, conf_threshold, nms_threshold, top_k, num_classes)


def test_detect_caps_candidates_per_image_and_class():
    generator = torch.Generator().manual_seed(3)
    loc = torch.zeros(2, len(PRIORS), 4)
    conf = torch.randn(2, len(PRIORS), 5, generator=generator)
    found = detect(loc, conf, PRIORS, candidates_per_class=1)
    for image in found:
        assert sorted(image.labels.tolist()) == [1, 2, 3, 4]


def test_detect_keeps_the_top_k_of_each_image():
    generator = torch.Generator().manual_seed(4)
    loc = torch.randn(2, len(PRIORS), 4, generator=generator)
    conf = torch.randn(2, len(PRIORS), 4, generator=generator)
    everything = detect(loc, conf, PRIORS, top_k=10_000)
    best = detect(loc, conf, PRIORS, top_k=7)
    for all_of_image, top in zip(everything, best):
        assert len(all_of_image.boxes) > 7
        for a, b in zip(all_of_image, top):
            assert torch.equal(a[:7], b)


def test_detect_on_a_batch_equals_detect_image_by_image():
    generator = torch.Generator().manual_seed(5)
    loc = torch.randn(4, len(PRIORS), 4, generator=generator)
    conf = trained_like_logits(generator, 4, len(PRIORS), 5)
    conf[2, :, 0] = 100  # an image with no detection in the middle of the batch
    batch = detect(loc, conf, PRIORS)
    singles = [detect(loc[i : i + 1], conf[i : i + 1], PRIORS)[0] for i in range(4)]
    assert len(batch[2].boxes) == 0 and len(batch[1].boxes) > 0
    for a, b in zip(batch, singles):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detect_without_detections_gives_empty_tensors(dtype):
    conf = torch.zeros(3, len(PRIORS), 4, dtype=dtype)
    conf[..., 0] = 50
    found = detect(torch.zeros(3, len(PRIORS), 4, dtype=dtype), conf, PRIORS.to(dtype))
    assert len(found) == 3
    for image in found:
        assert image.boxes.shape == (0, 4) and image.boxes.dtype == dtype
        assert image.scores.shape == (0,) and image.scores.dtype == dtype
        assert image.labels.shape == (0,) and image.labels.dtype == torch.int64


def test_detect_of_no_images_is_an_empty_list():
    assert detect(torch.zeros(0, len(PRIORS), 4), torch.zeros(0, len(PRIORS), 3), PRIORS) == []


def test_detect_breaks_ties_by_default_box_index():
    # Five identical default boxes and scores: the first one wins, also for the one place.
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 5)
    conf = torch.zeros(1, 5, 2)
    for candidates in (1, 5):
        (found,) = detect(torch.zeros(1, 5, 4), conf, priors, candidates_per_class=candidates)
        assert found.labels.tolist() == [1]
    (found,) = detect(torch.zeros(1, 5, 4), conf, priors, nms_threshold=1.0, top_k=3)
    torch.testing.assert_close(found.scores, torch.full((3,), 0.5))


LOC, CONF = torch.zeros(2, len(PRIORS), 4), torch.zeros(2, len(PRIORS), 3)


def with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[1, 5, 0] = math.nan
    return t


@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        ((LOC[..., :3], CONF, PRIORS), {}, r"expected loc \[B, P, 4\].*got loc \[2, 8732, 3\]"),
        ((LOC, CONF[:1], PRIORS), {}, r"must agree on B and P, got loc \[2, 8732, 4\], conf \[1,"),
        ((LOC, CONF, PRIORS[:100]), {}, r"agree on B and P.*priors \[100, 4\]"),
        ((LOC, CONF[..., :1], PRIORS), {}, "conf needs C >= 2 classes"),
        ((LOC, CONF.long(), PRIORS), {}, "conf must be floating point"),
        ((with_nan(LOC), CONF, PRIORS), {}, r"loc contains non-finite values \(NaN or inf\)"),
        ((LOC, with_nan(CONF), PRIORS), {}, "conf contains non-finite values"),
        ((LOC, CONF, PRIORS), {"conf_threshold": 1.0}, r"conf_threshold must be in \[0, 1\)"),
        ((LOC, CONF, PRIORS), {"conf_threshold": -0.1}, "conf_threshold"),
        ((LOC, CONF, PRIORS), {"nms_threshold": 1.5}, r"nms_threshold must be in \[0, 1\]"),
        ((LOC, CONF, PRIORS), {"top_k": 0}, "top_k must be at least 1, got 0"),
        ((LOC, CONF, PRIORS), {"candidates_per_class": 0}, "candidates_per_class must be at"),
    ],
)
def test_detect_rejects_bad_input(arguments, options, message):
    with pytest.raises(ValueError, match=message):
        detect(*arguments, **options)


def test_rank_by_rank_nms_settles_chains_of_suppression_across_blocks():
    # Box r overlaps box r + 1 (IoU 0.6) but not r + 2: greedy NMS keeps every other box, and
    # whether box r survives depends on all the boxes before it, inside and across blocks.
    lengths = [1, 5, 8, 9, 30, 3]
    width = max(lengths)
    shift = torch.arange(width, dtype=torch.float32) * 0.25 / 4
    chain = torch.stack((shift, torch.zeros(width), shift + 0.25, torch.full((width,), 0.25)), 1)
    boxes = chain.expand(len(lengths), -1, -1).clone()
    keep = postprocess._nms_rank_by_rank(boxes, torch.tensor(lengths), 0.45)
    for row, n in enumerate(lengths):
        expected = torch.zeros(width, dtype=torch.bool)
        expected[torchvision_nms(chain[:n], -torch.arange(n, dtype=torch.float32), 0.45)] = True
        assert torch.equal(keep[row], expected), row
        assert keep[row, :n].tolist() == [r % 2 == 0 for r in range(n)]
