from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou as torchvision_box_iou

import conftest
from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import center_to_corners, corners_to_center, encode
from ssd_tutorial.loss import LossTerms, MultiBoxLoss, hard_negative_mask
from ssd_tutorial.matching import match

PRIORS = default_boxes(SSD300)
NUM_CLASSES = 21
IMAGE_SIZE = 300


#: The loss tests' objects are at least 0.02 of the image a side.
random_batch = partial(conftest.random_batch, min_size=0.02, num_classes=NUM_CLASSES)


def random_predictions(generator: torch.Generator, num_images: int, num_priors: int = 8732):
    loc = torch.randn(num_images, num_priors, 4, generator=generator).requires_grad_()
    conf = torch.randn(num_images, num_priors, NUM_CLASSES, generator=generator).requires_grad_()
    return loc, conf


def torchvision_ssd() -> SSD:
    """A real torchvision SSD object; only its loss, box coder and matcher are used."""
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]])
    return SSD(nn.Identity(), anchors, (IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, head=nn.Identity())


def torchvision_loss(model: SSD, loc, conf, gt_boxes, gt_labels, priors):
    """``SSD.compute_loss`` fed as in ``SSD.forward``, with anchors and boxes in pixels.

    The matcher gets the IoU of the relative boxes: an object inside several equal default
    boxes has exactly equal IoU with them, and pixel coordinates round differently from
    relative ones, which would hand such ties to a different default box.
    """
    prior_corners = center_to_corners(priors)
    matched_idxs = []
    for boxes in gt_boxes:
        if len(boxes) == 0:
            matched_idxs.append(torch.full((len(priors),), -1, dtype=torch.int64))
        else:
            matched_idxs.append(model.proposal_matcher(torchvision_box_iou(boxes, prior_corners)))
    anchors = prior_corners * IMAGE_SIZE
    targets = [{"boxes": b * IMAGE_SIZE, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)]
    head_outputs = {"bbox_regression": loc, "cls_logits": conf}
    return model.compute_loss(targets, head_outputs, [anchors] * len(targets), matched_idxs)


@pytest.mark.parametrize("seed", range(3))
def test_loss_equals_torchvision_compute_loss(seed):
    generator = torch.Generator().manual_seed(seed)
    gt_boxes, gt_labels = random_batch(generator, num_images=6)
    gt_boxes[1], gt_labels[1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    loc, conf = random_predictions(generator, num_images=6)
    ours = MultiBoxLoss()(loc, conf, gt_boxes, gt_labels, PRIORS)
    theirs = torchvision_loss(torchvision_ssd(), loc, conf, gt_boxes, gt_labels, PRIORS)
    torch.testing.assert_close(ours.localization, theirs["bbox_regression"])
    torch.testing.assert_close(ours.confidence, theirs["classification"])
    torch.testing.assert_close(ours.total, ours.confidence + ours.localization)

    ours_grads = torch.autograd.grad(ours.total, (loc, conf))
    theirs_total = theirs["bbox_regression"] + theirs["classification"]
    for a, b in zip(ours_grads, torch.autograd.grad(theirs_total, (loc, conf))):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_loss_by_hand_for_one_object():
    priors = corners_to_center(
        torch.tensor(
            [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.4], [0.5, 0.5, 1.0, 1.0], [0.6, 0.0, 1, 0.4]]
        )
    )
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.45]])  # IoU 0.9 and 0.89 with the first two
    loc = torch.zeros(1, 4, 4)
    conf = torch.zeros(1, 4, 3)
    conf[0, 2, 0] = 5.0  # an easy negative
    conf[0, 3, 0] = -1.0  # a hard negative
    terms = MultiBoxLoss(neg_pos_ratio=0.5)(loc, conf, [gt], [torch.tensor([2])], priors)
    assert terms.num_positives == 2
    # Localisation: Smooth L1 of the target offsets (predicted 0), over 2 positives.
    offsets = encode(gt.expand(2, 4), priors[:2])
    expected_loc = F.smooth_l1_loss(torch.zeros(2, 4), offsets, reduction="sum") / 2
    torch.testing.assert_close(terms.localization, expected_loc)
    # Confidence: 2 positives of class 2 (uniform logits: log 3 each) and 0.5 * 2 = 1 negative,
    # the harder one (prior 3).
    hard = F.cross_entropy(conf[0, 3:4], torch.tensor([0]))
    torch.testing.assert_close(terms.confidence, (2 * torch.log(torch.tensor(3.0)) + hard) / 2)


def test_alpha_weights_the_localization_term():
    generator = torch.Generator().manual_seed(5)
    gt_boxes, gt_labels = random_batch(generator, num_images=2)
    loc, conf = random_predictions(generator, num_images=2)
    one = MultiBoxLoss()(loc, conf, gt_boxes, gt_labels, PRIORS)
    two = MultiBoxLoss(alpha=2.0)(loc, conf, gt_boxes, gt_labels, PRIORS)
    torch.testing.assert_close(two.localization, one.localization)
    torch.testing.assert_close(two.total, one.confidence + 2 * one.localization)


def test_batch_without_objects_has_zero_loss_and_zero_gradients():
    loc, conf = random_predictions(torch.Generator().manual_seed(1), num_images=3)
    empty = [torch.zeros(0, 4)] * 3
    terms = MultiBoxLoss()(loc, conf, empty, [torch.zeros(0, dtype=torch.int64)] * 3, PRIORS)
    assert isinstance(terms, LossTerms)
    assert terms.num_positives == 0
    assert terms.total.item() == 0.0 and terms.localization.item() == 0.0
    terms.total.backward()
    assert (loc.grad == 0).all() and (conf.grad == 0).all()


def test_images_without_objects_contribute_nothing():
    generator = torch.Generator().manual_seed(2)
    gt_boxes, gt_labels = random_batch(generator, num_images=1, max_objects=5)
    gt_boxes[0], gt_labels[0] = gt_boxes[0][:3].clone(), gt_labels[0][:3].clone()
    loc, conf = random_predictions(generator, num_images=2)
    alone = MultiBoxLoss()(loc[:1], conf[:1], gt_boxes, gt_labels, PRIORS)
    with_empty = MultiBoxLoss()(
        loc, conf, [*gt_boxes, torch.zeros(0, 4)], [*gt_labels, torch.zeros(0).long()], PRIORS
    )
    torch.testing.assert_close(with_empty.total, alone.total)


def test_every_negative_is_mined_when_there_are_too_few_of_them():
    # Intended difference from torchvision: 3 positives want 9 negatives, only 1 exists;
    # we take it and count every default box once (torchvision counts positives twice).
    priors = corners_to_center(
        torch.tensor([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45], [0, 0, 0.45, 0.5], [0.5, 0.5, 1, 1]])
    )
    conf = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    gt = [torch.tensor([[0.0, 0.0, 0.5, 0.5]])]
    terms = MultiBoxLoss()(torch.zeros(1, 4, 4), conf, gt, [torch.tensor([1])], priors)
    assert terms.num_positives == 3
    expected = F.cross_entropy(conf[0], torch.tensor([1, 1, 1, 0]), reduction="sum") / 3
    torch.testing.assert_close(terms.confidence, expected)


def test_loss_under_autocast_is_computed_in_float32():
    generator = torch.Generator().manual_seed(3)
    gt_boxes, gt_labels = random_batch(generator, num_images=2)
    loc, conf = random_predictions(generator, num_images=2)
    loc16, conf16 = loc.detach().bfloat16(), conf.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = MultiBoxLoss()(loc16, conf16, gt_boxes, gt_labels, PRIORS)
    assert terms.total.dtype == torch.float32
    reference = MultiBoxLoss()(loc16.float(), conf16.float(), gt_boxes, gt_labels, PRIORS)
    torch.testing.assert_close(terms.total, reference.total)


def test_hard_negative_mask_by_hand():
    loss = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1, 0.6, 0.5]])
    positive = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    mask = hard_negative_mask(loss, positive, neg_pos_ratio=2)
    # Image 0: one positive (0.9, excluded) -> the 2 largest negatives 0.7 and 0.5.
    # Image 1: no positive -> no negative.
    assert mask.tolist() == [[False, False, True, True, False, False], [False] * 6]
    assert hard_negative_mask(loss, positive, neg_pos_ratio=10)[0].tolist() == [
        True, False, True, True, True, True  # all 5 negatives, never the positive
    ]  # fmt: skip


@st.composite
def losses_and_positives(draw):
    num_images, num_priors = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    n = num_images * num_priors
    loss = draw(st.lists(st.floats(0, 50, width=32), min_size=n, max_size=n))
    positive = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    shape = (num_images, num_priors)
    return torch.tensor(loss).reshape(shape), torch.tensor(positive).reshape(shape)


@given(losses_and_positives(), st.sampled_from([0, 1, 2.5, 3]))
def test_hard_negatives_are_the_top_loss_negatives_at_most_ratio_to_one(inputs, ratio):
    loss, positive = inputs
    mask = hard_negative_mask(loss, positive, ratio)
    assert not (mask & positive).any()
    for image in range(len(loss)):
        num_positive, num_negative = int(positive[image].sum()), int((~positive[image]).sum())
        assert int(mask[image].sum()) == min(int(ratio * num_positive), num_negative)
        chosen, left = loss[image][mask[image]], loss[image][~mask[image] & ~positive[image]]
        if len(chosen) and len(left):
            assert chosen.min() >= left.max()


def test_hard_negatives_of_a_real_batch_are_at_most_three_per_positive():
    generator = torch.Generator().manual_seed(4)
    gt_boxes, gt_labels = random_batch(generator, num_images=4)
    _, conf = random_predictions(generator, num_images=4)
    _, labels = match(gt_boxes, gt_labels, PRIORS)
    background_loss = torch.logsumexp(conf, -1) - conf[..., 0]
    mask = hard_negative_mask(background_loss.detach(), labels > 0)
    assert torch.equal(mask.sum(1), 3 * (labels > 0).sum(1))


def test_bad_predictions_are_rejected_before_they_become_nan():
    generator = torch.Generator().manual_seed(6)
    gt_boxes, gt_labels = random_batch(generator, num_images=2, max_objects=3)
    gt_boxes[0], gt_labels[0] = torch.tensor([[0.1, 0.1, 0.3, 0.3]]), torch.tensor([1])
    loc, conf = random_predictions(generator, num_images=2)
    loc, conf = loc.detach(), conf.detach()
    criterion = MultiBoxLoss()
    nan_conf = conf.clone()
    nan_conf[1, 17, 3] = float("nan")
    message = r"conf contains NaN or inf for 1 default box\(es\), first at image 1, default box 17"
    with pytest.raises(ValueError, match=message):
        criterion(loc, nan_conf, gt_boxes, gt_labels, PRIORS)
    inf_loc = loc.clone()
    inf_loc[0, 5, 2] = float("inf")
    with pytest.raises(ValueError, match=r"loc contains NaN or inf .* image 0, default box 5"):
        criterion(inf_loc, conf, gt_boxes, gt_labels, PRIORS)
    with pytest.raises(ValueError, match=r"gt_labels\[0\]\[0\] = 21: labels must be in 1\.\.20"):
        criterion(loc, conf, gt_boxes, [torch.tensor([21]), gt_labels[1]], PRIORS)
    with pytest.raises(
        ValueError, match=r"loc must be \[B, P, 4\] = \[2, 8732, 4\].*\[2, 8732, 2\]"
    ):
        criterion(loc[..., :2], conf, gt_boxes, gt_labels, PRIORS)
    with pytest.raises(ValueError, match=r"conf must be \[B, P, C\] with B, P = \[2, 8732\]"):
        criterion(loc, conf[:1], gt_boxes, gt_labels, PRIORS)
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]\[0\] = \[0.5, 0.5, 1.5, 0.75\] lies"):
        criterion(
            loc, conf, [torch.tensor([[0.5, 0.5, 1.5, 0.75]]), gt_boxes[1]], gt_labels, PRIORS
        )
    with pytest.raises(ValueError, match=r"background_loss must be finite"):
        hard_negative_mask(torch.tensor([[float("nan")]]), torch.tensor([[False]]))
    with pytest.raises(ValueError, match=r"neg_pos_ratio must be >= 0, got -1"):
        MultiBoxLoss(neg_pos_ratio=-1)


def test_a_large_finite_loc_is_not_mistaken_for_inf():
    generator = torch.Generator().manual_seed(7)
    gt_boxes, gt_labels = random_batch(generator, num_images=1, max_objects=3)
    loc, conf = random_predictions(generator, num_images=1)
    loc = loc.detach().clone()
    loc[0, :2] = 3e38  # the sum overflows; every value is finite
    terms = MultiBoxLoss()(loc, conf, gt_boxes, gt_labels, PRIORS)
    assert torch.isfinite(terms.confidence)
