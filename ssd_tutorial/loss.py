"""The MultiBox loss: localisation on the positives, confidence with hard negative mining.

For a batch with ``N`` positive default boxes (those matched to an object, see
:mod:`ssd_tutorial.matching`)::

    L = (L_conf + alpha * L_loc) / N

* ``L_loc``: Smooth L1 (beta 1), summed over the positives' four offsets, between the
  predicted offsets and the offsets that move each positive default box onto its object
  (:func:`ssd_tutorial.boxes.encode`, variances 0.1 and 0.2). Negatives have no box to regress.
* ``L_conf``: softmax cross-entropy, summed over the positives (their object's class) and the
  *hard negatives* (class 0, background). A batch has a few dozen positives per image and
  thousands of negatives, most of them easy; the hard negatives are, per image, the negatives
  with the highest background loss, at most ``neg_pos_ratio`` (3) per positive of that image.

**Computing it.** Mining ranks every negative by its background loss, so that pass covers all
``B x P`` default boxes, but it is a ranking and needs no gradient. The differentiable
cross-entropy is then computed for the chosen boxes only (positives and hard negatives, about
``4N`` rows), as the reference implementation does: the same value and gradients as computing
it for every box and masking, with a backward pass over a few thousand rows instead of all.

**No positives.** Matching gives every object a default box, so ``N = 0`` only when no image of
the batch has an object. The 3:1 rule then mines no negatives, both sums are empty and the loss
is exactly 0 (with zero gradients), because the sums are divided by ``max(N, 1)``. This is what
torchvision's ``SSD.compute_loss`` does. An image without objects in a batch that has some
likewise contributes nothing: its negatives are not mined (3 x 0 = 0), as in torchvision and
the reference implementation.

**Differences from torchvision** (``SSD.compute_loss``), all intended:

* torchvision's box coder weights ``(10, 10, 5, 5)`` are our variances ``(0.1, 0.2)``
  inverted: the same offsets.
* When an image has more than ``P / (neg_pos_ratio + 1)`` positives there are fewer negatives
  than ``neg_pos_ratio`` times the positives. torchvision then also "mines" positives (ranked
  last with loss ``-inf``) and counts their confidence loss twice; here every available
  negative is taken and each default box counts once.
* Bad input (labels outside ``1..C-1``, NaN or inf in the predictions or the ground truth)
  raises a ``ValueError`` instead of producing an error deep inside or a NaN loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd_tutorial.boxes import IOU_THRESHOLD, VARIANCES
from ssd_tutorial.checks import check_num_classes, describe, non_finite_rows
from ssd_tutorial.matching import match_objects

#: Hard negatives kept per positive (the paper's 3:1).
NEG_POS_RATIO: float = 3
#: ``beta`` of the Smooth L1 localisation loss: quadratic below 1, linear above.
SMOOTH_L1_BETA: float = 1.0


class NonFinitePredictionError(ValueError):
    """The network predicted NaN or inf (usually a diverging run, not bad data)."""


class LossTerms(NamedTuple):
    """The MultiBox loss of a batch, and its parts (all already divided by ``max(N, 1)``).

    Attributes:
        localization (Tensor[]): Smooth L1 of the positives' offsets / N (without ``alpha``).
        confidence (Tensor[]): cross-entropy of positives and hard negatives / N.
        total (Tensor[]): ``confidence + alpha * localization``, the value to minimise.
        num_positives (int): N, the number of positive default boxes in the batch.
    """

    localization: Tensor
    confidence: Tensor
    total: Tensor
    num_positives: int


class MultiBoxLoss(nn.Module):
    """SSD's training loss: match, encode, mine hard negatives, and sum the two terms.

    Args:
        neg_pos_ratio: at most this many hard negatives per positive, per image.
        alpha: weight of the localisation term in the total.
        variances: scales of the offset encoding (centre, size).
        iou_threshold: matching threshold, see :func:`ssd_tutorial.matching.match`.
    """

    def __init__(
        self,
        neg_pos_ratio: float = NEG_POS_RATIO,
        alpha: float = 1.0,
        variances: tuple[float, float] = VARIANCES,
        iou_threshold: float = IOU_THRESHOLD,
    ) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.variances = variances
        self.iou_threshold = iou_threshold

    def forward(
        self,
        loc: Tensor,
        conf: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        priors: Tensor,
    ) -> LossTerms:
        """The loss of one batch.

        Args:
            loc (Tensor[B, P, 4]): predicted offsets ``(dcx, dcy, dw, dh)`` per default box.
            conf (Tensor[B, P, C]): predicted class logits, class 0 is background.
            gt_boxes (list of B Tensor[n_i, 4]): objects, corner form, relative.
            gt_labels (list of B Tensor[n_i]): their labels in ``1..C-1``.
            priors (Tensor[P, 4]): the default boxes, centre form, relative.

        Returns:
            LossTerms, computed in float32 (also under autocast).
        """
        _check_predictions(loc, conf, priors, len(gt_boxes))
        num_classes = conf.shape[-1]
        matches = match_objects(gt_boxes, gt_labels, priors, self.iou_threshold, num_classes)
        with torch.autocast(loc.device.type, enabled=False):
            loc, conf = loc.float(), conf.float()
            _check_finite(loc, "loc")
            _check_finite(conf, "conf")
            positive = matches.positive

            # Mining ranks the negatives by their background loss, -log softmax(conf)[0]. A
            # ranking needs no gradient: only the chosen boxes enter the differentiable loss,
            # which keeps the backward pass to them instead of all B * P default boxes.
            with torch.no_grad():
                background_loss = -F.log_softmax(conf, dim=-1)[..., 0]
            hard_negative = hard_negative_mask(background_loss, positive, self.neg_pos_ratio)

            # Cross-entropy of the positives (their object's class) and hard negatives (0).
            image, prior = (positive | hard_negative).nonzero(as_tuple=True)
            targets = matches.prior_labels()[image, prior]
            confidence = F.cross_entropy(conf[image, prior], targets, reduction="sum")

            image, prior, target_offsets = matches.positive_offsets(priors, self.variances)
            localization = F.smooth_l1_loss(
                loc[image, prior], target_offsets.float(), reduction="sum", beta=SMOOTH_L1_BETA
            )

        num_positives = len(image)
        normalizer = max(num_positives, 1)
        localization, confidence = localization / normalizer, confidence / normalizer
        return LossTerms(
            localization, confidence, confidence + self.alpha * localization, num_positives
        )


def hard_negative_mask(
    background_loss: Tensor, positive_mask: Tensor, neg_pos_ratio: float = NEG_POS_RATIO
) -> Tensor:
    """The hard negatives: per image, the negatives with the highest background loss.

    Image ``i`` with ``n_i`` positives keeps ``min(floor(neg_pos_ratio * n_i), P - n_i)``
    negatives, those with the largest ``background_loss`` (ties broken by ``topk``).

    Args:
        background_loss (Tensor[B, P]): per default box, the confidence loss it would have as
            background (the cross-entropy against class 0), finite.
        positive_mask (Tensor[B, P], bool): the positive default boxes.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        Tensor[B, P], bool: True for the selected negatives (never for a positive).
    """
    if background_loss.ndim != 2 or positive_mask.shape != background_loss.shape:
        raise ValueError(
            "background_loss and positive_mask must both be [B, P], got "
            f"{list(background_loss.shape)} and {list(positive_mask.shape)}"
        )
    if positive_mask.dtype != torch.bool:
        raise ValueError(f"positive_mask must be a bool tensor, got {positive_mask.dtype}")
    if non_finite_rows(background_loss) is not None:
        raise ValueError("background_loss must be finite, it contains NaN or inf")
    num_positive = positive_mask.sum(dim=1)
    num_hard = torch.minimum(
        torch.floor(num_positive * float(neg_pos_ratio)).long(),
        positive_mask.shape[1] - num_positive,
    )
    # One topk for the whole batch, as large as the largest image's quota; positives rank last.
    ranked = background_loss.masked_fill(positive_mask, float("-inf"))
    top = ranked.topk(int(num_hard.max()) if len(num_hard) else 0, dim=1).indices
    within_quota = torch.arange(top.shape[1], device=top.device) < num_hard.unsqueeze(1)
    return torch.zeros_like(positive_mask).scatter_(1, top, within_quota)


def _check_predictions(loc: Tensor, conf: Tensor, priors: Tensor, num_images: int) -> None:
    num_priors = priors.shape[0] if isinstance(priors, Tensor) and priors.ndim == 2 else None
    expected_loc = [num_images, num_priors, 4]
    if not isinstance(loc, Tensor) or list(loc.shape) != expected_loc:
        raise ValueError(
            f"loc must be [B, P, 4] = {expected_loc} (B images, P priors), got {describe(loc)}"
        )
    if not isinstance(conf, Tensor) or conf.ndim != 3 or list(conf.shape[:2]) != expected_loc[:2]:
        raise ValueError(
            f"conf must be [B, P, C] with B, P = {expected_loc[:2]}, got {describe(conf)}"
        )
    check_num_classes(conf.shape[2], "conf")
    if not (loc.is_floating_point() and conf.is_floating_point()):
        raise ValueError(f"loc and conf must be floating point, got {loc.dtype}, {conf.dtype}")


def _check_finite(predictions: Tensor, name: str) -> None:
    """Raise if ``predictions[B, P, K]`` holds a NaN or inf, naming the first default box."""
    bad = non_finite_rows(predictions)
    if bad is not None:
        image, prior = bad.nonzero()[0].tolist()
        raise NonFinitePredictionError(
            f"{name} contains NaN or inf for {int(bad.sum())} default box(es), "
            f"first at image {image}, default box {prior}"
        )
