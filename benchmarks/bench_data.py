"""Data pipeline speed: the synthetic shapes generator, the SSD augmentation, a DataLoader.

Run from the repository root::

    python benchmarks/bench_data.py            # full
    python benchmarks/bench_data.py --quick    # a few seconds

Prints three Markdown tables:

1. images/s of :class:`SyntheticShapes` alone, one process, one thread, in wall time and per
   CPU second (process time: what one DataLoader worker produces on a core of its own), alone
   and followed by ``train_transforms``;
2. the training augmentation per image, ours (:class:`BatchedIoUCrop`) against the same
   pipeline with torchvision's ``RandomIoUCrop``, one thread;
3. images/s through a ``DataLoader`` with 2 workers, generator + ``train_transforms`` + collate,
   batches of 32: what a training loop on the synthetic data can consume at most.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from timing import compare, environment, median_seconds, table
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ssd_tutorial.data import SyntheticShapes, collate, train_transforms
from ssd_tutorial.data.transforms import BatchedIoUCrop

SIZES = (300, 128)


def generator_rate(size: int, min_run_time: float) -> float:
    """Images per second of ``SyntheticShapes`` at ``size x size``, one thread."""
    dataset = SyntheticShapes(10**6, size)
    indices = itertools.count()
    return 1 / median_seconds(lambda: dataset[next(indices)], min_run_time)


def cpu_rate(size: int, images: int, transforms: bool) -> float:
    """Images per CPU second (process time, so other programs on the machine do not count)."""
    dataset = SyntheticShapes(
        10**6, size, transforms=train_transforms(size) if transforms else None
    )
    dataset[0]
    start = time.process_time()
    for index in range(1, images + 1):
        dataset[index]
    return images / (time.process_time() - start)


def with_torchvision_crop(pipeline: v2.Compose) -> v2.Compose:
    """The same pipeline with torchvision's one-trial-at-a-time ``RandomIoUCrop``."""
    steps = [
        v2.RandomIoUCrop() if isinstance(s, BatchedIoUCrop) else s for s in pipeline.transforms
    ]
    return v2.Compose(steps)


def augmentation_comparison(size: int, min_run_time: float):
    samples = [SyntheticShapes(64, size, seed=1)[i] for i in range(64)]
    ours, theirs = train_transforms(size), with_torchvision_crop(train_transforms(size))
    cycle_ours, cycle_theirs = itertools.cycle(samples), itertools.cycle(samples)
    return compare(
        f"train_transforms({size}) per image",
        lambda: ours(*next(cycle_ours)),
        lambda: theirs(*next(cycle_theirs)),
        min_run_time,
    )


def loader_rate(size: int, batches: int, workers: int = 2, batch_size: int = 32) -> float:
    """Images per second through a DataLoader, after its first batch (worker start-up)."""
    dataset = SyntheticShapes(10**6, size, transforms=train_transforms(size))
    loader = DataLoader(dataset, batch_size, num_workers=workers, collate_fn=collate)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds)")
    args = parser.parse_args(argv)
    min_run_time, batches = (0.3, 4) if args.quick else (2.0, 40)

    torch.set_num_threads(1)
    print(environment())
    images = 50 if args.quick else 400
    print(
        "\n| 1 thread | images/s (wall) | images per CPU second | with train_transforms, "
        "per CPU second |\n| --- | ---: | ---: | ---: |"
    )
    for size in SIZES:
        print(
            f"| synthetic shapes {size}x{size} | {generator_rate(size, min_run_time):.0f} | "
            f"{cpu_rate(size, images, False):.0f} | {cpu_rate(size, images, True):.0f} |"
        )

    print("\nAugmentation per image, 1 thread (torchvision = same pipeline, its RandomIoUCrop):")
    print(table([augmentation_comparison(size, min_run_time) for size in SIZES]))

    print("\n| DataLoader, 2 workers, batch 32, train_transforms | images/s |\n| --- | ---: |")
    for size in SIZES:
        print(f"| generated at {size}, trained at {size} | {loader_rate(size, batches):.0f} |")


if __name__ == "__main__":
    main()
