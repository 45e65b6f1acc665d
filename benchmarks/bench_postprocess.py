"""Post-processing: ours (batched over images and classes) vs torchvision's SSD (loops).

Run from the repository root::

    python benchmarks/bench_postprocess.py             # batch 32 on the CPU
    python benchmarks/bench_postprocess.py --quick     # a shorter run
    python benchmarks/bench_postprocess.py --device cuda --batch 256
    python benchmarks/bench_postprocess.py --threads 1    # steadier on a shared CPU

Both sides get the same SSD300 outputs (8732 default boxes, 21 classes) and the same settings:
score above 0.01, NMS at 0.45, 200 detections per image and 200 candidates per image and class
(torchvision's ``topk_candidates``, 400 by default, is set to our default). torchvision's side
is ``SSD.postprocess_detections``, which loops over the images and, in each, over the classes;
its anchors are the same default boxes in pixels.

Two cases:

* "trained-like": what a trained network gives. Every default box is confidently background
  (a margin of 8 in the logits, plus noise), except those overlapping one of the 1-6 objects of
  the image, whose object's class gains 14 x IoU. About 1-2 thousand candidates per image pass
  0.01, most of them on the objects.
* "untrained": random logits, as from a network before training. With 21 classes nearly every
  default box passes 0.01 in every class, so the candidate cap decides the cost.

Before timing, the script checks that both sides give the same detections (the same count per
image, then labels, scores and boxes up to rounding, compared in a canonical order because the
two sides order equal scores differently). Each time is the best of ``--rounds`` medians.
"""

from __future__ import annotations

import torch
from timing import batch_arguments, best_of_rounds, environment, table
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD

from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import center_to_corners, pairwise_iou
from ssd_tutorial.postprocess import Detections, detect

NUM_CLASSES = 21


def trained_like_logits(generator: torch.Generator, num_images: int, priors: Tensor) -> Tensor:
    """Logits ``[B, P, C]``: background everywhere but on a few objects per image."""
    conf = torch.randn(num_images, len(priors), NUM_CLASSES, generator=generator)
    conf[..., 0] += 8
    prior_corners = center_to_corners(priors)
    for image in range(num_images):
        n = int(torch.randint(1, 7, (), generator=generator))
        center = torch.rand(n, 2, generator=generator)
        size = torch.rand(n, 2, generator=generator) * 0.6 + 0.05
        objects = torch.cat((center - size / 2, center + size / 2), dim=1).clamp(0, 1)
        labels = torch.randint(1, NUM_CLASSES, (n,), generator=generator)
        overlap, nearest = pairwise_iou(objects, prior_corners).max(dim=0)
        conf[image, torch.arange(len(priors)), labels[nearest]] += 14 * overlap
    return conf


def torchvision_ssd(candidates_per_class: int) -> SSD:
    """torchvision's SSD300 settings; only its post-processing is used."""
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]])
    return SSD(
        nn.Identity(),
        anchors,
        (SSD300.image_size,) * 2,
        NUM_CLASSES,
        head=nn.Identity(),
        topk_candidates=candidates_per_class,
    )


def canonical(boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Detections sorted by label, then score, then x1: an order both sides can agree on."""
    order = boxes[:, 0].argsort(stable=True)
    for key in (scores, labels):
        order = order[key[order].argsort(stable=True)]
    return boxes[order], scores[order], labels[order]


def check_same(ours: list[Detections], theirs: list[dict[str, Tensor]], size: int) -> int:
    """Raise ``AssertionError`` unless both sides found the same; return the detection count."""
    for image, (a, b) in enumerate(zip(ours, theirs)):
        if len(a.boxes) != len(b["boxes"]):
            raise AssertionError(f"image {image}: {len(a.boxes)} vs {len(b['boxes'])} detections")
        a_boxes, a_scores, a_labels = canonical(a.boxes, a.scores, a.labels)
        b_boxes, b_scores, b_labels = canonical(b["boxes"] / size, b["scores"], b["labels"])
        torch.testing.assert_close(a_labels, b_labels, msg=f"image {image}: labels differ")
        torch.testing.assert_close(a_scores, b_scores, msg=f"image {image}: scores differ")
        torch.testing.assert_close(a_boxes, b_boxes, atol=1e-5, rtol=0)
    return sum(len(a.boxes) for a in ours)


def main(argv: list[str] | None = None) -> None:
    args = batch_arguments(__doc__.splitlines()[0], argv)

    generator = torch.Generator().manual_seed(0)
    priors = default_boxes(SSD300)
    loc = torch.randn(args.batch, len(priors), 4, generator=generator)
    cases = {
        "trained-like": trained_like_logits(generator, args.batch, priors),
        "untrained": torch.randn(args.batch, len(priors), NUM_CLASSES, generator=generator),
    }
    size = SSD300.image_size
    model = torchvision_ssd(candidates_per_class=200)
    anchors = [center_to_corners(priors).to(args.device) * size] * args.batch
    shapes = [(size, size)] * args.batch
    loc, priors = loc.to(args.device), priors.to(args.device)

    tasks = {}
    for name, conf in cases.items():
        conf = conf.to(args.device)
        outputs = {"bbox_regression": loc, "cls_logits": conf}

        def ours(conf: Tensor = conf) -> list[Detections]:
            return detect(loc, conf, priors)

        def theirs(outputs: dict[str, Tensor] = outputs) -> list[dict[str, Tensor]]:
            return model.postprocess_detections(outputs, anchors, shapes)

        candidates = int((conf.softmax(dim=-1)[..., 1:] > 0.01).sum()) / args.batch
        found = check_same(ours(), theirs(), size) / args.batch
        print(
            f"{name}: {candidates:.0f} candidates above 0.01 and {found:.0f} detections per "
            f"image, the same on both sides"
        )
        tasks[name] = (ours, theirs)

    results = best_of_rounds(tasks, args.rounds, args.min_run_time)

    print(
        f"\nBatch of {args.batch} images, {len(priors)} default boxes, {NUM_CLASSES} classes, "
        f"device {args.device}\n"
    )
    print(table(results))
    print(f"\n{environment()}")


if __name__ == "__main__":
    main()
