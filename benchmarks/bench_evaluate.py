"""Evaluation speed: ssd_tutorial.evaluate against pycocotools on the same random detections.

Each synthetic image holds 5 to 15 objects of 20 classes (in pixels of a 500x375 image) and 100
detections: jittered copies of the objects, some with a wrong class, and random boxes. Both
sides compute the same numbers at IoU 0.5 (AP with COCO's matching and 101 recall points,
overall and per size); the second table prints both sides' values to show it. pycocotools is
timed once (it is slow), ours as the median of three runs; one torch thread by default, as
pycocotools uses one core.

    python benchmarks/bench_evaluate.py           # 5000 images
    python benchmarks/bench_evaluate.py --quick   # 500 images
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from timing import environment

from ssd_tutorial import evaluate as E

IMAGE_WIDTH, IMAGE_HEIGHT = 500.0, 375.0


def random_images(
    num_images: int, detections_per_image: int = 100, num_classes: int = 21, seed: int = 0
):
    """Per-image detections and targets as dicts of tensors, boxes in pixels."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([IMAGE_WIDTH, IMAGE_HEIGHT], dtype=torch.float64)
    detections, targets = [], []
    for _ in range(num_images):
        m = int(torch.randint(5, 16, (1,), generator=g))
        top_left = torch.rand(m, 2, generator=g, dtype=torch.float64) * size * 0.8
        extent = (torch.rand(m, 2, generator=g, dtype=torch.float64) ** 2 * 0.5 + 0.01) * size
        gt_boxes = torch.cat((top_left, (top_left + extent).minimum(size)), dim=1)
        gt_labels = torch.randint(1, num_classes, (m,), generator=g)
        n = detections_per_image
        source = torch.randint(0, m, (n,), generator=g)
        wh = (gt_boxes[source, 2:] - gt_boxes[source, :2]).repeat(1, 2)
        boxes = gt_boxes[source] + torch.randn(n, 4, generator=g, dtype=torch.float64) * 0.15 * wh
        labels = gt_labels[source].clone()
        wrong = torch.rand(n, generator=g) < 0.2
        labels[wrong] = torch.randint(1, num_classes, (int(wrong.sum()),), generator=g)
        random_box = torch.rand(n, generator=g) < 0.3
        corner = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.9
        side = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.3
        boxes = torch.where(random_box[:, None], torch.cat((corner, corner + side), dim=1), boxes)
        boxes = torch.cat((boxes[:, :2], boxes[:, 2:].maximum(boxes[:, :2])), dim=1)
        scores = torch.rand(n, generator=g, dtype=torch.float64)
        detections.append({"boxes": boxes, "scores": scores, "labels": labels})
        targets.append({"boxes": gt_boxes, "labels": gt_labels})
    return detections, targets


def seconds(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cocoeval_ap(evaluator, area_index: int) -> float:
    """Mean AP over classes at the first IoU threshold, for one area range, maxDets=100."""
    precision = evaluator.eval["precision"][0, :, :, area_index, -1]
    return float(precision[:, precision[0] > -1].mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 images instead of 5000")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    num_images = 500 if args.quick else 5000
    detections, targets = random_images(num_images)
    print(f"{num_images} images, 100 detections and 5-15 objects each; {environment()}\n")

    overall_s, overall = seconds(
        lambda: E.voc_map(detections, targets, interpolation="coco101", matching="coco"), 3
    )
    by_size_s, by_size = seconds(
        lambda: E.ap_by_size(detections, targets, interpolation="coco101", matching="coco"), 3
    )
    # One COCOeval run at IoU 0.5 covers the overall AP and the three size buckets.
    theirs_s, evaluator = seconds(
        lambda: E.run_cocoeval(detections, targets, iou_thresholds=[0.5]), 1
    )
    ours_s = overall_s + by_size_s
    print("| task | ours (s) | pycocotools (s) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| AP@0.5, overall + small/medium/large | {ours_s:.2f} | {theirs_s:.2f} "
        f"| {theirs_s / ours_s:.1f}x |"
    )
    print("\n| AP@0.5 | ours | pycocotools |\n| --- | ---: | ---: |")
    ours_values = [overall.map] + [by_size[name].map for name in ("small", "medium", "large")]
    for area_index, (name, value) in enumerate(
        zip(("all", "small", "medium", "large"), ours_values)
    ):
        print(f"| {name} | {value:.6f} | {cocoeval_ap(evaluator, area_index):.6f} |")

    voc_s, voc = seconds(lambda: E.voc_map(detections, targets), 3)
    coco_s, metrics = seconds(lambda: E.coco_metrics(detections, targets), 1)
    print(f"\nours, VOC07 11-point mAP@0.5 (devkit matching): {voc_s:.2f} s, mAP {voc.map:.4f}")
    print(
        f"pycocotools, all COCO metrics (10 IoU thresholds): {coco_s:.2f} s, "
        f"AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}"
    )


if __name__ == "__main__":
    main()
