import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import box_iou as torchvision_box_iou

from conftest import random_batch
from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import box_iou, center_to_corners, corners_to_center, encode
from ssd_tutorial.matching import _iou_with_priors, match, match_indices, match_objects

PRIORS = default_boxes(SSD300)


def priors_from_corners(*corners: list[float]) -> torch.Tensor:
    return corners_to_center(torch.tensor(corners))


def reference_match_indices(boxes: torch.Tensor, priors: torch.Tensor, threshold: float = 0.5):
    """Matching of one image, written as plainly as possible (loops over objects)."""
    num_priors = len(priors)
    if len(boxes) == 0:
        return torch.full((num_priors,), -1)
    iou = box_iou(boxes, center_to_corners(priors))  # [n, P]
    best_iou, best_object = iou.max(dim=0)
    matched = torch.where(best_iou >= threshold, best_object, -1)
    for j in range(len(boxes)):  # later objects overwrite earlier ones
        matched[iou[j].argmax()] = j
    return matched


def test_batched_iou_is_bit_for_bit_torchvision_box_iou():
    # The matcher's fast IoU must give exactly torchvision's numbers: IoU ties between equal
    # default boxes are common (an object inside several of them), and equal numbers break
    # them the same way.
    gt_boxes, _ = random_batch(torch.Generator().manual_seed(11), num_images=8)
    boxes, prior_corners = torch.cat(gt_boxes), center_to_corners(PRIORS)
    assert torch.equal(_iou_with_priors(boxes, prior_corners), box_iou(boxes, prior_corners))
    assert torch.equal(
        _iou_with_priors(boxes, prior_corners), torchvision_box_iou(boxes, prior_corners)
    )


def test_one_object_takes_every_default_box_above_the_threshold():
    priors = priors_from_corners(
        [0.0, 0.0, 0.5, 0.5],  # the object itself: IoU 1
        [0.0, 0.0, 0.5, 0.4],  # IoU 0.8
        [0.0, 0.0, 0.5, 0.25],  # IoU exactly 0.5: positive (>= threshold)
        [0.0, 0.0, 0.5, 0.2],  # IoU 0.4
        [0.5, 0.5, 1.0, 1.0],  # no overlap
    )
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    boxes, labels = match([gt], [torch.tensor([7])], priors)
    assert labels.tolist() == [[7, 7, 7, 0, 0]]
    torch.testing.assert_close(boxes[0, :3], gt.expand(3, 4))
    # Background default boxes get their own box: their offsets encode to zero.
    torch.testing.assert_close(boxes[0, 3:], center_to_corners(priors[3:]))


def test_object_below_the_threshold_still_gets_its_best_default_box():
    priors = priors_from_corners([0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1, 1])
    gt = torch.tensor([[0.0, 0.0, 0.3, 0.3]])  # IoU 0.5625, 0.444, 0
    assert match_indices([gt], priors).tolist() == [[0, -1, -1]]
    gt = torch.tensor([[0.0, 0.0, 0.25, 0.25]])  # IoU 0.39, 0.64: only the forced match
    assert match_indices([gt], priors, iou_threshold=0.7).tolist() == [[-1, 0, -1]]


def test_two_objects_competing_for_one_default_box_the_later_object_wins():
    priors = priors_from_corners([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1])
    # Both objects' best default box is prior 0 (IoU 0.36 and 0.49, both below 0.5).
    first, second = [0.0, 0.0, 0.6, 0.6], [0.3, 0.3, 1.0, 1.0]
    gt = torch.tensor([first, second])
    assert match_indices([gt], priors).tolist() == [[1, -1]]
    assert match_indices([gt.flip(0)], priors).tolist() == [[1, -1]]  # order decides
    _, labels = match([gt], [torch.tensor([3, 5])], priors)
    assert labels.tolist() == [[5, 0]]
    # torchvision's SSDMatcher resolves it the same way.
    iou = box_iou(gt, center_to_corners(priors))
    assert SSDMatcher(0.5)(iou).tolist() == [1, -1]


def test_tie_for_the_best_iou_goes_to_the_first_object():
    priors = priors_from_corners([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45], [0.6, 0, 1, 1])
    # Two identical objects: the forced best box goes to the later one, the tie to the first.
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    assert match_indices([gt], priors).tolist() == [[1, 0, -1]]
    iou = box_iou(gt, center_to_corners(priors))
    assert SSDMatcher(0.5)(iou).tolist() == [1, 0, -1]


def test_tiny_object_gets_exactly_its_best_default_box():
    gt = torch.tensor([[0.401, 0.302, 0.409, 0.311]])  # smaller than every default box
    iou = box_iou(gt, center_to_corners(PRIORS))[0]
    assert iou.max() < 0.05
    boxes, labels = match([gt], [torch.tensor([4])], PRIORS)
    assert labels[0].nonzero().flatten().tolist() == [int(iou.argmax())]
    torch.testing.assert_close(boxes[0, int(iou.argmax())], gt[0])


def test_object_covering_the_whole_image():
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    iou = box_iou(gt, center_to_corners(PRIORS))[0]
    index = match_indices([gt], PRIORS)[0]
    assert (index >= 0).tolist() == (iou >= 0.5).tolist()
    # The best one is the large square s'_k of the 1x1 map: sqrt(264 * 315) / 300 = 0.959.
    best = 8732 - 4 + 1
    assert int(iou.argmax()) == best and index[best] == 0
    torch.testing.assert_close(iou[best], torch.tensor(264 * 315 / 300**2))


def test_images_without_objects_are_all_background():
    empty = torch.zeros(0, 4)
    one = torch.tensor([[0.1, 0.1, 0.4, 0.5]])
    no_labels = torch.zeros(0, dtype=torch.long)
    boxes, labels = match([empty, one, empty], [no_labels, torch.tensor([2]), no_labels], PRIORS)
    assert boxes.shape == (3, 8732, 4) and labels.shape == (3, 8732)
    assert labels.dtype == torch.int64
    assert not labels[0].any() and not labels[2].any() and labels[1].any()
    torch.testing.assert_close(boxes[0], center_to_corners(PRIORS))
    index = match_indices([empty, empty], PRIORS)
    assert (index == -1).all()


def test_batch_of_no_images():
    boxes, labels = match([], [], PRIORS)
    assert boxes.shape == (0, 8732, 4) and labels.shape == (0, 8732)


@pytest.mark.parametrize("seed", range(4))
def test_batched_matcher_equals_per_image_reference_and_torchvision(seed):
    gt_boxes, gt_labels = random_batch(torch.Generator().manual_seed(seed), num_images=12)
    index = match_indices(gt_boxes, PRIORS)
    boxes, labels = match(gt_boxes, gt_labels, PRIORS)
    prior_corners = center_to_corners(PRIORS)
    for i, (gt, gt_label) in enumerate(zip(gt_boxes, gt_labels)):
        expected = reference_match_indices(gt, PRIORS)
        assert torch.equal(index[i], expected)
        if len(gt):
            torchvision_index = SSDMatcher(0.5)(torchvision_box_iou(gt, prior_corners))
            assert torch.equal(index[i], torchvision_index)
        positive = expected >= 0
        assert torch.equal(labels[i][positive], gt_label[expected[positive]])
        assert not labels[i][~positive].any()
        assert torch.equal(boxes[i][positive], gt[expected[positive]])
        assert torch.equal(boxes[i][~positive], prior_corners[~positive])


def test_match_objects_indexes_the_concatenated_ground_truth():
    gt_boxes, gt_labels = random_batch(torch.Generator().manual_seed(9), num_images=5)
    matches = match_objects(gt_boxes, gt_labels, PRIORS)
    assert torch.equal(matches.boxes, torch.cat(gt_boxes))
    assert torch.equal(matches.first_object, torch.tensor([0, *map(len, gt_boxes)]).cumsum(0)[:-1])
    assert torch.equal(matches.image_object_index(), match_indices(gt_boxes, PRIORS))
    _, labels = match(gt_boxes, gt_labels, PRIORS)
    assert torch.equal(matches.prior_labels(), labels)


def test_positive_offsets_are_the_dense_offsets_of_the_positives():
    gt_boxes, gt_labels = random_batch(torch.Generator().manual_seed(10), num_images=4)
    matches = match_objects(gt_boxes, gt_labels, PRIORS)
    image, prior, offsets = matches.positive_offsets(PRIORS, variances=(0.2, 0.1))
    boxes, labels = match(gt_boxes, gt_labels, PRIORS)
    assert torch.equal(torch.stack((image, prior), dim=1), (labels > 0).nonzero())
    torch.testing.assert_close(offsets, encode(boxes, PRIORS, (0.2, 0.1))[labels > 0])
    background = encode(boxes, PRIORS)[labels == 0]  # own box: zero up to rounding
    torch.testing.assert_close(background, torch.zeros_like(background), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_match_works_in_the_dtype_of_the_priors(dtype):
    gt = torch.tensor([[0.1, 0.2, 0.5, 0.7]])
    boxes, labels = match([gt], [torch.tensor([1])], PRIORS.to(dtype))
    assert boxes.dtype == dtype
    expected = match_indices([gt], PRIORS)[0] >= 0
    if dtype == torch.float64:
        assert torch.equal(labels[0] > 0, expected)
    else:  # rounding may move a box across the threshold, not much more
        assert (labels[0] > 0).sum().sub(expected.sum()).abs() <= 2


@st.composite
def ground_truth(draw):
    n = draw(st.integers(0, 6))
    coord = st.floats(0, 0.875, allow_nan=False, width=32)
    size = st.floats(0.0078125, 0.5, allow_nan=False, width=32)
    rows = draw(st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n))
    t = torch.tensor(rows, dtype=torch.float32).reshape(n, 4)
    return torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), dim=1).clamp(max=1)


@given(st.lists(ground_truth(), min_size=1, max_size=4), st.sampled_from([0.3, 0.5, 0.7]))
def test_matching_properties(gt_boxes, threshold):
    index = match_indices(gt_boxes, PRIORS, threshold)
    prior_corners = center_to_corners(PRIORS)
    for i, gt in enumerate(gt_boxes):
        assert torch.equal(index[i], reference_match_indices(gt, PRIORS, threshold))
        if len(gt) == 0:
            continue
        iou = box_iou(gt, prior_corners)
        # Every default box whose best IoU reaches the threshold is positive.
        assert bool((index[i][iou.max(dim=0).values >= threshold] >= 0).all())
        # Every object keeps its best default box unless a later object took it.
        best = iou.argmax(dim=1)
        for j in range(len(gt)):
            assert int(index[i][best[j]]) >= j


def test_bad_boxes_are_rejected_naming_image_and_box():
    good = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
    labels = [torch.tensor([1]), torch.tensor([1, 2])]
    cases = {
        "gt_boxes[1][1] = [0.5, 0.5, 1.5, 0.75] lies outside the image [0, 1]": [
            0.5,
            0.5,
            1.5,
            0.75,
        ],
        "gt_boxes[1][1] = [0.5, 0.5, 0.5, 0.75] has zero or negative width": [0.5, 0.5, 0.5, 0.75],
        "gt_boxes[1][1] = [0.5, 0.75, 0.625, 0.5] has zero or negative width": [
            0.5,
            0.75,
            0.625,
            0.5,
        ],
        "gt_boxes[1][1] = [0.5, nan, 0.625, 0.75] is not finite": [0.5, float("nan"), 0.625, 0.75],
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            match([good, torch.tensor([[0.1, 0.1, 0.2, 0.2], bad])], labels, PRIORS)


def test_bad_shapes_and_labels_are_rejected():
    box = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] must be a Tensor\[n, 4\].*got \[4\]"):
        match([box[0]], [torch.tensor([1])], PRIORS)
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] must be a floating-point tensor"):
        match([box.long()], [torch.tensor([1])], PRIORS)
    with pytest.raises(ValueError, match=r"one entry per image, got 2 box tensors and 1 label"):
        match([box, box], [torch.tensor([1])], PRIORS)
    with pytest.raises(
        ValueError, match=r"gt_labels\[1\] has 2 label\(s\) but gt_boxes\[1\] has 1"
    ):
        match([box, box], [torch.tensor([1]), torch.tensor([1, 2])], PRIORS)
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must be an integer tensor"):
        match([box], [torch.tensor([1.0])], PRIORS)
    with pytest.raises(ValueError, match=r"gt_labels\[1\]\[0\] = 0: labels must be 1 or more"):
        match([box, box], [torch.tensor([1]), torch.tensor([0])], PRIORS)
    with pytest.raises(ValueError, match=r"gt_labels\[0\]\[0\] = 21: labels must be in 1\.\.20"):
        match_objects([box], [torch.tensor([21])], PRIORS, num_classes=21)
    with pytest.raises(ValueError, match=r"priors must be a Tensor\[P, 4\] \(cx, cy, w, h\)"):
        match([box], [torch.tensor([1])], PRIORS[:, :2])
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 0"):
        match_indices([box], PRIORS, iou_threshold=0)
