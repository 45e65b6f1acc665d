"""How fast the book's tiny SSD learns: validation mAP against training seconds, by recipe.

Run from the repository root::

    make bench                                        # with the speed table, into RESULTS.md
    python benchmarks/bench_learning.py --write       # this benchmark alone (about 11 minutes)
    python benchmarks/bench_learning.py --budget 60   # a shorter budget, printed only
    python benchmarks/bench_learning.py --device cuda --write   # SSD300 at 300 px on a GPU

The recipes train from the same initial weights (seed 0) for the same wall-clock budget of
training (``--budget`` seconds, the clock paused while the model is evaluated), in one
process, one after the other, with ``--threads`` threads:

* **before**: the recipe of the book until December 2026: AdamW at 3e-3, the rate divided by 10
  after 80% of 1000 steps, every SSD augmentation, every batch drawn anew by one loader worker,
  and the tiny network as it was then, with batch norm in its five stages only (fc6, fc7 and
  the extra layers without) and every pool after its stage's ReLU;
* **after**: :func:`ssd_tutorial.zoo.shapes_recipe` with :func:`ssd_tutorial.zoo.training_loader`:
  AdamW at 1e-2 with a weight decay of 0.05 and a cosine decay over the quick mode's steps,
  the batch-normalised tiny network with its first two stages pooled before their norm and
  ReLU, the quick mode's pool of images (``zoo.SHAPES_POOL_IMAGES["quick"]``, whatever
  ``SSD_TUTORIAL_QUICK`` says) drawn once and flipped a whole batch at a time
  (:func:`ssd_tutorial.data.transforms.collate_flipped`) in the training process, and the
  forward pass in bfloat16 where the CPU has bfloat16 arithmetic
  (:func:`ssd_tutorial.train.cpu_has_bf16`: ``Trainer``'s default ``amp="bf16"``);
* **after, float32**, on such a CPU only: the same recipe with ``amp=None``, as a CPU without
  bfloat16 arithmetic runs it.

Every ``--eval-every`` seconds of training the model is scored on the 300 validation images
of the book (VOC2007 11-point mAP at IoU 0.5). The table gives the last mAP, the steps and
images per second reached, and the training time to 0.5, 0.7 and 0.8 mAP; ``--write`` puts it
in its own section of ``benchmarks/RESULTS.md`` (which ``bench_all.py --write`` keeps) and the
curves in ``benchmarks/learning_curve.png``, which the book's speed appendix shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from timing import LEARNING_END, LEARNING_START, with_learning_section
from torch.utils.data import DataLoader

from ssd_tutorial import zoo
from ssd_tutorial.anchors import SSD_TINY
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.data import CLASS_NAMES, collate
from ssd_tutorial.evaluate import evaluate_model
from ssd_tutorial.model import SSD, build_ssd
from ssd_tutorial.train import TrainConfig, Trainer, cpu_has_bf16
from ssd_tutorial.train import _seed_epoch as seed_epoch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
FIGURE = HERE / "learning_curve.png"
THRESHOLDS = (0.5, 0.7, 0.8)


@dataclass
class Curve:
    """One recipe's run: ``(training seconds, step, mAP)`` after every evaluation."""

    name: str
    points: list[tuple[float, int, float]] = field(default_factory=list)
    images: int = 0

    def time_to(self, threshold: float) -> float | None:
        return next((t for t, _, m in self.points if m >= threshold), None)


def before_recipe() -> TrainConfig:
    """The book's earlier recipe: AdamW 3e-3, 50 warm-up steps, /10 after 800 of 1000 steps,
    in float32 (it had no mixed precision on a CPU)."""
    return TrainConfig(
        optimizer="adamw",
        lr=3e-3,
        warmup_steps=50,
        milestones=(800,),
        max_steps=1000,
        epochs=10,
        amp=None,
    )


def before_network(num_classes: int) -> SSD:
    """The tiny SSD as it was before: every pool after its stage's ReLU, and no batch norm
    after fc6, fc7 and the extra layers."""
    model = SSD(tiny_features(early_pools=0), SSD_TINY, num_classes)
    for block in (model.base.backbone.conv5_to_fc7, *model.base.extras.children()):
        for name, layer in block.named_children():
            if isinstance(layer, torch.nn.BatchNorm2d) and not name.startswith("bn5"):
                setattr(block, name, torch.nn.Identity())
    return model


def before_loader(size: int, workers: int = 1) -> DataLoader:
    """Every batch drawn anew with all of SSD's augmentations, by ``workers`` loader workers."""
    data = zoo.shapes_data(
        "train", zoo.STEPS_PER_EPOCH * zoo.BATCH_SIZE, size=size, augmentations={}
    )
    return DataLoader(
        data, batch_size=zoo.BATCH_SIZE, shuffle=True, collate_fn=collate, num_workers=workers
    )


def after_loader(size: int) -> DataLoader:
    """The book's batches in quick mode, whatever ``SSD_TUTORIAL_QUICK`` says: its pool of
    images, flipped a whole batch at a time (:func:`ssd_tutorial.zoo.training_loader`)."""
    return zoo.training_loader(size, pool_images=zoo.SHAPES_POOL_IMAGES["quick"])


def train_for(
    name: str,
    model: SSD,
    config: TrainConfig,
    batches: Iterable,
    val: DataLoader,
    budget: float,
    eval_every: float,
    device: str,
) -> Curve:
    """Train until ``budget`` seconds of training (or the recipe's last step), scoring ``model``
    on ``val`` every ``eval_every`` seconds; evaluation time is not counted."""
    trainer = Trainer(model, config, device=device, progress=False)
    trainer.model.train()
    curve = Curve(name)
    trained, next_eval = 0.0, eval_every
    epoch = 0
    while True:
        seed_epoch(config.seed, epoch)  # each epoch's order and augmentation, as Trainer.fit
        start = time.perf_counter()
        for batch in batches:
            trainer.train_step(batch)
            curve.images += len(batch[0])
            trained += time.perf_counter() - start
            finished = trainer.step >= config.max_steps or trained >= budget
            if trained >= next_eval or finished:
                trainer.model.eval()
                found = evaluate_model(trainer.model, val, class_names=CLASS_NAMES, progress=False)
                curve.points.append((trained, trainer.step, found["map"]))
                print(f"{name}: {trained:6.1f} s, step {trainer.step}, mAP {found['map']:.3f}")
                next_eval += eval_every
                trainer.model.train()
            if finished:
                return curve
            start = time.perf_counter()
        epoch += 1


def table(curves: list[Curve]) -> str:
    head = "| recipe | steps | img/s | last mAP | " + " | ".join(
        f"time to {t:.1f}" for t in THRESHOLDS
    )
    rows = [
        head + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in THRESHOLDS) + " |",
    ]
    for curve in curves:
        seconds, steps, last = curve.points[-1]
        reached = [curve.time_to(t) for t in THRESHOLDS]
        cells = [f"{r:.0f} s" if r is not None else "not reached" for r in reached]
        rows.append(
            f"| {curve.name} | {steps} | {curve.images / seconds:.0f} | {last:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(rows)


def figure(curves: list[Curve], budget: float, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for curve in curves:
        ax.plot(
            [t for t, _, _ in curve.points], [m for _, _, m in curve.points], "o-", label=curve.name
        )
    for threshold in THRESHOLDS:
        ax.axhline(threshold, color="0.8", lw=0.8, zorder=0)
    ax.set_xlim(0, budget * 1.05)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation mAP@0.5 (VOC07 11-point)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per recipe")
    parser.add_argument("--eval-every", type=float, default=30.0, help="seconds between scores")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for SSD300 at 300 px")
    parser.add_argument(
        "--write", action="store_true", help=f"write to {RESULTS.name}, {FIGURE.name}"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda needs a GPU, and torch sees none")
    architecture, size = ("ssd300", 300) if args.device.startswith("cuda") else ("ssd_tiny", 128)
    val = DataLoader(
        zoo.shapes_data("val", 300, augment=False, size=size), batch_size=100, collate_fn=collate
    )
    after = zoo.shapes_recipe(zoo.SHAPES_STEPS["quick"])  # quick mode, as after_loader
    recipes = {"before": (before_recipe(), before_loader(size))}
    if args.device == "cpu" and cpu_has_bf16():  # the book's recipe as a CPU without it runs it
        recipes["after, float32"] = (dataclasses.replace(after, amp=None), after_loader(size))
    recipes["after"] = (after, after_loader(size))
    curves = []
    for name, (config, batches) in recipes.items():
        torch.manual_seed(0)
        if name == "before" and architecture == "ssd_tiny":
            model = before_network(len(CLASS_NAMES))
        else:
            model = build_ssd(architecture, len(CLASS_NAMES))
        curves.append(
            train_for(name, model, config, batches, val, args.budget, args.eval_every, args.device)
        )
    text = table(curves)
    print(text)
    if args.write:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        command = "python benchmarks/bench_learning.py " + " ".join(argv or sys.argv[1:])
        where = (
            f"{args.device} ({platform.processor() or platform.machine()}), {args.threads} threads"
        )
        section = (
            f"{LEARNING_START}\n\nMeasured on {stamp} with `{command.strip()}` on {where}, "
            f"torch {torch.__version__}; {architecture}, {args.budget:.0f} s of training per "
            f"recipe.\n\n{text}\n\n{LEARNING_END}"
        )
        page = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        RESULTS.write_text(with_learning_section(page, section))
        figure(curves, args.budget, f"{architecture}: validation mAP against training time")
        print(f"written to {RESULTS} and {FIGURE}")


if __name__ == "__main__":
    main()
