"""The SSD network: parameters, GFLOPs per image and forward time, ours next to torchvision's.

Run from the repository root: ``python benchmarks/bench_model.py [--quick]``.

GFLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as
2 FLOPs (torchvision's model table, e.g. 34.858 "GFLOPS" for ssd300_vgg16, counts it as 1).
Times are medians of the forward pass of one image (batch 1) on this machine's CPU, ours and
torchvision's ``model.head(model.backbone(x))`` measured in the same process (same weights),
in 3 rounds (1 with ``--quick``).
"""

from __future__ import annotations

import argparse

import torch
from timing import compare, environment, median_seconds, table
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import ssd300_vgg16

from ssd_tutorial.model import build_ssd, count_parameters, from_torchvision


def gflops_per_image(forward, image_size: int) -> float:
    """FLOPs of ``forward`` on one ``3 x S x S`` image, in billions (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        forward(torch.randn(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    args = parser.parse_args()
    min_run_time, rounds = (0.5, 1) if args.quick else (2.0, 3)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)  # inference only, in this thread (where the timers run too)

    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    ours = from_torchvision(theirs).eval()

    def their_forward(x):
        return theirs.head(list(theirs.backbone(x).values()))

    print(environment())
    print("\n| model | classes | input | parameters | GFLOPs per image (2 per MAC) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, num_classes in (("ssd300", 21), ("ssd300_coco", 91), ("ssd512", 21), ("ssd_tiny", 6)):
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
    # several rounds: on a shared machine the load can change between two measurements
    rows = [
        compare(
            f"SSD300 forward, 1 image, round {r + 1}",
            lambda: ours(image),
            lambda: their_forward(image),
            min_run_time,
        )
        for r in range(rounds)
    ]
    tiny = build_ssd("ssd_tiny", 6).eval()
    batch = torch.randn(16, 3, 128, 128)
    tiny_s = median_seconds(lambda: tiny(batch), min_run_time)
    print()
    print(table(rows))
    print(f"\nssd_tiny forward, batch of 16 at 128 px: {tiny_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
