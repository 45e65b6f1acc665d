"""Matching and the MultiBox loss: ours (batched) vs torchvision's SSD (a loop over images).

Run from the repository root::

    python benchmarks/bench_matching_loss.py            # batch 32 on the CPU
    python benchmarks/bench_matching_loss.py --quick    # a shorter run
    python benchmarks/bench_matching_loss.py --device cuda --batch 256
    python benchmarks/bench_matching_loss.py --threads 1    # steadier on a shared CPU

Both sides get the same SSD300 default boxes (8732) and the same seeded batch of images with
1-20 objects each. torchvision's side is what ``SSD.forward`` does in training: per image,
``box_iou`` + ``SSDMatcher``, then ``SSD.compute_loss`` (which encodes the positives with its
``BoxCoder`` and mines hard negatives). Its boxes and anchors are in pixels, as in torchvision.

Tasks: "matching + encoding" produces the training targets in the form torchvision does
(labels of every default box, offsets of the positives only), with
``match_objects(...).positive_offsets(...)``, which is what our loss uses; the dense row is the
book's ``match()`` + ``encode()``, offsets for all ``B x P`` default boxes. "loss" is the
whole loss, matching included, on both sides. Each time is the best of ``--rounds`` medians
(the CPU may be shared); the two loss values are printed to show both sides agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timing import batch_arguments, best_of_rounds, environment, table
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import center_to_corners, encode
from ssd_tutorial.loss import MultiBoxLoss
from ssd_tutorial.matching import match, match_objects

NUM_CLASSES = 21


def make_batch(num_images: int, device: str, seed: int = 0):
    """Seeded ground truth (1-20 objects per image, relative corners) and random predictions."""
    generator = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in torch.randint(1, 21, (num_images,), generator=generator).tolist():
        center = torch.rand(n, 2, generator=generator)
        size = torch.rand(n, 2, generator=generator) * 0.6 + 0.02
        corners = torch.cat((center - size / 2, center + size / 2), dim=1).clamp(0, 1)
        boxes.append(corners.to(device))
        labels.append(torch.randint(1, NUM_CLASSES, (n,), generator=generator).to(device))
    num_priors = SSD300.num_boxes
    loc = torch.randn(num_images, num_priors, 4, generator=generator).to(device)
    conf = torch.randn(num_images, num_priors, NUM_CLASSES, generator=generator).to(device)
    return boxes, labels, loc.requires_grad_(), conf.requires_grad_()


def torchvision_ssd() -> SSD:
    """torchvision's SSD300 settings; only its matcher, box coder and loss are used."""
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]])
    return SSD(nn.Identity(), anchors, (SSD300.image_size,) * 2, NUM_CLASSES, head=nn.Identity())


def tasks(batch: int, device: str) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """The four comparisons of this benchmark on a batch of ``batch`` images: task name ->
    ``(ours, torchvision's)``; the two loss tasks return the loss."""
    priors = default_boxes(SSD300, device=device)
    gt_boxes, gt_labels, loc, conf = make_batch(batch, device)
    model = torchvision_ssd()
    size = SSD300.image_size
    anchors = center_to_corners(priors) * size
    targets = [{"boxes": b * size, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)]
    criterion = MultiBoxLoss()

    def ours_targets():
        matches = match_objects(gt_boxes, gt_labels, priors)
        return matches.positive_offsets(priors), matches.prior_labels()

    def ours_dense_targets():
        matched_boxes, labels = match(gt_boxes, gt_labels, priors)
        return encode(matched_boxes, priors), labels

    def torchvision_matches():
        return [model.proposal_matcher(box_iou(t["boxes"], anchors)) for t in targets]

    def torchvision_targets():
        results = []
        for target, matched in zip(targets, torchvision_matches()):
            foreground = torch.where(matched >= 0)[0]
            objects = matched[foreground]
            offsets = model.box_coder.encode_single(target["boxes"][objects], anchors[foreground])
            labels = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
            labels[foreground] = target["labels"][objects]
            results.append((offsets, labels))
        return results

    def ours_loss():
        return criterion(loc, conf, gt_boxes, gt_labels, priors).total

    def torchvision_loss():
        outputs = {"bbox_regression": loc, "cls_logits": conf}
        losses = model.compute_loss(
            targets, outputs, [anchors] * len(targets), torchvision_matches()
        )
        return losses["bbox_regression"] + losses["classification"]

    def backward(loss_fn):
        def step():
            loc.grad = conf.grad = None
            loss = loss_fn()
            loss.backward()
            return loss

        return step

    return {
        "matching + encoding": (ours_targets, torchvision_targets),
        "match() + encode(), dense [B, P, 4]": (ours_dense_targets, torchvision_targets),
        "loss (forward)": (ours_loss, torchvision_loss),
        "loss (forward + backward)": (backward(ours_loss), backward(torchvision_loss)),
    }


def main(argv: list[str] | None = None) -> None:
    args = batch_arguments(__doc__.splitlines()[0], argv)
    comparisons = tasks(args.batch, args.device)
    results = best_of_rounds(comparisons, args.rounds, args.min_run_time)
    num_objects = sum(len(b) for b in make_batch(args.batch, args.device)[0])
    print(
        f"Batch of {args.batch} images, {num_objects} objects, {SSD300.num_boxes} default "
        f"boxes, {NUM_CLASSES} classes, device {args.device}\n"
    )
    print(table(results))
    # They may differ in the 4th digit: torchvision matches in pixels, where rounding breaks
    # exact IoU ties between equal default boxes differently than in relative coordinates.
    ours_loss, torchvision_loss = comparisons["loss (forward)"]
    print(f"\nloss: ours {ours_loss().item():.4f}, torchvision {torchvision_loss().item():.4f}")
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
