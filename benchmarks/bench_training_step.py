"""Where a training step of the book's tiny SSD spends its time on the CPU, part by part.

Run from the repository root::

    python benchmarks/bench_training_step.py              # 2 threads, 30 timed steps
    python benchmarks/bench_training_step.py --threads 1 --steps 10
    python benchmarks/bench_training_step.py --quick      # 5 timed steps

Prints two Markdown tables:

1. milliseconds per step of 32 images in each part: reading a batch from the pool and flipping
   it (:func:`ssd_tutorial.zoo.training_loader`), the forward pass, the MultiBox loss
   (matching, encoding and hard negative mining included), the backward pass and the AdamW
   step, for the tiny network as the book builds it (stages 1 and 2 pooled before their norm
   and ReLU) and with every pool last, in float32, and, on a CPU with bfloat16 arithmetic
   (:func:`ssd_tutorial.train.cpu_has_bf16`), the book's network under the bfloat16 autocast
   that ``Trainer`` uses there, all from the same weights on the same batches; then the
   seconds that scoring the 300 validation images takes;
2. images per second of whole training steps (``Trainer.train_step``, mixed precision as
   above) fed three ways: from the pool in the training process (the book's way), and from a
   ``DataLoader`` whose one or two workers draw every image anew with all of SSD's
   augmentations (the earlier way), which share the machine's cores with the step's threads.

Each part is timed with the clock around it (no profiler), the median over the timed steps after
a few warm-up steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from bench_learning import after_loader, before_loader
from timing import environment
from torch.utils.data import DataLoader

from ssd_tutorial import zoo
from ssd_tutorial.anchors import SSD_TINY, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.data import CLASS_NAMES, collate
from ssd_tutorial.evaluate import evaluate_model
from ssd_tutorial.loss import MultiBoxLoss
from ssd_tutorial.model import SSD, build_ssd
from ssd_tutorial.train import Trainer, cpu_has_bf16

PARTS = ("data", "forward", "loss", "backward", "optimiser")
WARMUP_STEPS = 3


@contextmanager
def _clock(times: dict[str, list[float]], part: str) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``times[part]``."""
    start = time.perf_counter()
    yield
    times[part].append(time.perf_counter() - start)


def step_parts(
    model: SSD, batches: Iterator, steps: int, autocast: torch.dtype | None = None
) -> dict[str, float]:
    """Median milliseconds of each of :data:`PARTS` over ``steps`` training steps of ``model``
    (AdamW with the book's preset), reading its batches from ``batches``, the forward pass under
    a CPU autocast to ``autocast`` (``None``: float32)."""
    model.train()
    priors = default_boxes(model.config)
    criterion = MultiBoxLoss()
    config = zoo.shapes_recipe(zoo.SHAPES_STEPS["quick"])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    times: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(WARMUP_STEPS + steps):
        with _clock(times, "data"):
            images, boxes, labels = next(batches)[:3]
        with (
            _clock(times, "forward"),
            torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None),
        ):
            loc, conf = model(images)
        with _clock(times, "loss"):
            terms = criterion(loc, conf, boxes, labels, priors)
        with _clock(times, "backward"):
            terms.total.backward()
        with _clock(times, "optimiser"):
            optimizer.step()
            optimizer.zero_grad()
    return {part: 1000 * statistics.median(t[WARMUP_STEPS:]) for part, t in times.items()}


def images_per_second(model: SSD, batches: Iterator, steps: int) -> float:
    """Images per second of ``steps`` whole training steps (``Trainer.train_step``) fed from
    ``batches``, the clock running from the first timed batch's request to the last step's end."""
    trainer = Trainer(model, zoo.shapes_recipe(zoo.SHAPES_STEPS["quick"]), progress=False)
    trainer.model.train()
    for _ in range(WARMUP_STEPS):
        trainer.train_step(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    return steps * zoo.BATCH_SIZE / (time.perf_counter() - start)


def _endless(make_loader: Callable[[], DataLoader]) -> Iterator:
    while True:
        yield from make_loader()


def pools_last(num_classes: int) -> SSD:
    """The tiny SSD with every pool after its stage's ReLU, as VGG orders them."""
    return SSD(tiny_features(early_pools=0), SSD_TINY, num_classes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--quick", action="store_true", help="5 timed steps per measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 5
    torch.set_num_threads(args.threads)
    num_classes = len(CLASS_NAMES)
    torch.manual_seed(0)
    book = build_ssd("ssd_tiny", num_classes)
    late = pools_last(num_classes)
    late.load_state_dict(book.state_dict())
    initial = copy.deepcopy(book.state_dict())
    variants = [("pools first, float32", book, None), ("pools last, float32", late, None)]
    if cpu_has_bf16():  # what Trainer's default amp="bf16" does on this CPU
        variants.append(("pools first, bfloat16 autocast", book, torch.bfloat16))

    book_epoch = partial(after_loader, zoo.IMAGE_SIZE)
    rows = []
    for name, model, autocast in variants:
        model.load_state_dict(initial)
        torch.manual_seed(0)  # the same batches for every row
        parts = step_parts(model, _endless(book_epoch), args.steps, autocast)
        total = sum(parts.values())
        cells = " | ".join(f"{parts[p]:.1f}" for p in PARTS)
        rows.append(f"| {name} | {cells} | {total:.1f} | {1000 * zoo.BATCH_SIZE / total:.0f} |")
    print(f"Training step of ssd_tiny, batch {zoo.BATCH_SIZE}, {environment()}\n")
    print("| network | " + " | ".join(f"{p} (ms)" for p in PARTS) + " | step (ms) | img/s |")
    print("| --- |" + " ---: |" * (len(PARTS) + 2))
    print("\n".join(rows))

    val = DataLoader(zoo.shapes_data("val", 300, augment=False), batch_size=100, collate_fn=collate)
    model = book.eval()
    start = time.perf_counter()
    evaluate_model(model, val, class_names=CLASS_NAMES, progress=False)
    print(f"\nScoring the 300 validation images: {time.perf_counter() - start:.1f} s\n")

    feeds = {
        "pool, flipped in the training process (book)": lambda: _endless(book_epoch),
        "drawn anew, all augmentations, 1 worker": lambda: iter(
            before_loader(zoo.IMAGE_SIZE, workers=1)
        ),
        "drawn anew, all augmentations, 2 workers": lambda: iter(
            before_loader(zoo.IMAGE_SIZE, workers=2)
        ),
    }
    print("| fed from | img/s |")
    print("| --- | ---: |")
    for name, batches in feeds.items():
        torch.manual_seed(0)
        speed = images_per_second(build_ssd("ssd_tiny", num_classes), batches(), args.steps)
        print(f"| {name} | {speed:.0f} |")


if __name__ == "__main__":
    main()
