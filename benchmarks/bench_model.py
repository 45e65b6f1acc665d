"""The SSD network: parameters, GFLOPs per image and forward time, ours next to torchvision's.

Run from the repository root: ``python benchmarks/bench_model.py [--quick]``.

GFLOPs come from ``ssd_tutorial.profiling.gflops_per_image`` (``FlopCounterMode``), which
counts a multiply-add as 2 FLOPs (torchvision's model table, e.g. 34.858 "GFLOPS" for
ssd300_vgg16, counts it as 1).
Times are medians of the forward pass of one image (batch 1) on this machine's CPU, ours and
torchvision's ``model.head(model.backbone(x))`` measured in the same process (same weights),
in 21 short rounds (5 with ``--quick``): the table gives the best round of each (the one
least disturbed by other work), then the speed-up of every round. On a busy
machine, also try ``torch.set_num_threads(1)`` (``OMP_NUM_THREADS=1``): threads that wait
for each other at every layer slow small models down far more than the load itself.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import Comparison, compare, environment, median_seconds, table
from torchvision.models.detection import ssd300_vgg16

from ssd_tutorial.model import build_ssd, count_parameters
from ssd_tutorial.profiling import gflops_per_image
from ssd_tutorial.weights import from_torchvision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    args = parser.parse_args()
    min_run_time, rounds = (0.2, 5) if args.quick else (0.3, 21)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)  # inference only, in this thread (where the timers run too)

    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    ours = from_torchvision(theirs).eval()

    def their_forward(x):
        return theirs.head(list(theirs.backbone(x).values()))

    print(environment())
    print("\n| model | classes | input | parameters | GFLOPs per image (2 per MAC) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, num_classes in (
        ("ssd300", 21),
        ("ssd300_coco", 91),
        ("ssd512", 21),
        ("ssd_tiny", 6),
        ("ssd_tiny", 21),
        ("ssdlite320", 91),
    ):
        model = ours if name == "ssd300_coco" else build_ssd(name, num_classes).eval()
        size = model.config.image_size
        print(
            f"| {name} | {num_classes} | {size} | {count_parameters(model):,} | "
            f"{gflops_per_image(model, size):.2f} |"
        )
    print(
        f"| torchvision ssd300_vgg16 | 91 | 300 | {count_parameters(theirs):,} | "
        f"{gflops_per_image(their_forward, 300):.2f} |"
    )

    image = torch.randn(1, 3, 300, 300)
    # Many short rounds, ours then theirs in each: on a shared machine the load changes
    # between two measurements, and a slow spell then hits both sides alike.
    rounds_measured = [
        compare("SSD300", lambda: ours(image), lambda: their_forward(image), min_run_time)
        for _ in range(rounds)
    ]
    speedups = sorted(r.speedup for r in rounds_measured)
    summary = Comparison(
        f"SSD300 forward, 1 image, CPU (best of {rounds} rounds)",
        min(r.ours_s for r in rounds_measured),
        min(r.theirs_s for r in rounds_measured),
    )
    tiny = build_ssd("ssd_tiny", 6).eval()
    batch = torch.randn(16, 3, 128, 128)
    threads = torch.get_num_threads()
    tiny_s = median_seconds(lambda: tiny(batch), 1.0)
    torch.set_num_threads(1)
    tiny_one_thread_s = median_seconds(lambda: tiny(batch), 1.0)
    torch.set_num_threads(threads)
    print()
    print(table([summary]))
    print(
        f"\nspeed-up per round (median {statistics.median(speedups):.2f}): "
        f"{', '.join(f'{x:.2f}' for x in speedups)}"
    )
    print(
        f"\nssd_tiny forward, batch of 16 at 128 px: {tiny_s * 1e3:.1f} ms with {threads} "
        f"threads, {tiny_one_thread_s * 1e3:.1f} ms with 1"
    )


if __name__ == "__main__":
    main()
