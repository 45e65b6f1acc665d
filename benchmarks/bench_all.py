"""All the speed comparisons in one table: ours against torchvision's SSD, in one process.

Run from the repository root::

    make bench                                       # quick mode, writes benchmarks/RESULTS.md
    make bench QUICK=0                               # longer timings, the same rows
    python benchmarks/bench_all.py --quick           # print the table only
    python benchmarks/bench_all.py --threads 1       # steadier on a shared machine
    python benchmarks/bench_all.py --device cuda --bf16 --throughput --write

Every row times ours and torchvision's on the same inputs, one after the other, with
``torch.utils.benchmark`` (a warm-up, then medians; the CUDA queue is synchronised). The
speed-up is torchvision's median time over ours: above 1, ours is faster. Rows:

* **matching + encoding** (batch 32, SSD300's 8732 default boxes, 1-20 objects per image): the
  training targets as torchvision computes them (labels of every default box, offsets of the
  positives), ours batched, torchvision's per image (``box_iou`` + ``SSDMatcher`` +
  ``BoxCoder``); see ``bench_matching_loss.py``.
* **loss, forward + backward** (batch 32): the whole MultiBox loss, matching and hard negative
  mining included, and its backward pass: ``MultiBoxLoss`` against ``SSD.compute_loss``.
* **post-processing** (batch 32, 21 classes, trained-like logits): ``detect`` against
  ``SSD.postprocess_detections``, both at score 0.01, NMS 0.45, 200 detections and 200
  candidates per class (our default; torchvision's ``topk_candidates`` set to it); see
  ``bench_postprocess.py``. The detections are checked to be the same first.
* **training step SSD300** (batch 8): torchvision's ``ssd300_vgg16`` (91 classes) and our
  ``from_torchvision`` copy of it, the same weights, images and objects. Theirs:
  ``model(images, targets)`` in train mode (its transform normalises, and resizes the 300x300
  images to 300x300, a copy), the sum of the losses, backward, SGD step. Ours:
  ``preprocess``, then ``Trainer.train_step`` (forward, ``MultiBoxLoss``, backward, SGD step,
  learning-rate schedule). SGD with momentum 0.9 and weight decay 5e-4 on both sides.
* **inference SSD300** (batch 1 and 8): theirs ``model(images)`` in eval mode (transform,
  network, ``postprocess_detections``); ours ``preprocess`` + network + ``detect``, on the same
  300x300 images, both at score 0.01, NMS 0.45, 200 detections and 400 candidates per class
  (torchvision's default ``topk_candidates``; ours set to it, our default is 200).

No weights can be downloaded here, so the SSD300 rows use torchvision's random initialisation,
with the background bias of the classifier raised by 10: as in a trained network, most default
boxes are then confidently background and some thousands of candidates per image pass 0.01
(the script prints how many). Random weights alone would put nearly all 8732 x 90 candidates
above 0.01 and time little but NMS.

Memory format: our SSD hands its base channels-last input by default (``SSD.channels_last``),
torchvision's runs in the contiguous format unless asked. The SSD300 rows compare the two as
they come, and each is followed by an information row, without a target, in which
torchvision's model runs channels-last too: the like-for-like comparison of everything else.

On CUDA two more rows time matching and the loss at batch 256 (the GPU target: 10x
torchvision's loop over images), and ``--throughput`` adds a second table: images per second
of inference (with post-processing) and of training steps at several batch sizes (1, 8, 64
and 256 on CUDA, 1 and 8 on the CPU; ``--batches`` to choose), ours and torchvision's, with
the peak CUDA memory of each.

``--quick`` takes one timing round with short runs (the SSD300 rows: one timed call per side
after the warm-up); the full run takes the best of three rounds of longer runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_matching_loss import make_batch
from bench_matching_loss import tasks as matching_loss_tasks
from bench_postprocess import check_same, trained_like_logits
from bench_postprocess import torchvision_ssd as postprocess_ssd
from timing import (
    RESULTS_END,
    Comparison,
    best_of_rounds,
    environment,
    learning_section,
    median_seconds,
    with_learning_section,
)
from torch import nn
from torchvision.models.detection import ssd300_vgg16

from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import center_to_corners
from ssd_tutorial.loss import MultiBoxLoss
from ssd_tutorial.model import SSD
from ssd_tutorial.postprocess import detect
from ssd_tutorial.preprocess import preprocess
from ssd_tutorial.train import TrainConfig, Trainer
from ssd_tutorial.weights import from_torchvision

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: Added to the background logit of every default box of the random SSD300 (see above).
BACKGROUND_BIAS = 10.0
COCO_CLASSES = 91

Tasks = dict[str, tuple[Callable[[], object], Callable[[], object]]]
#: Suffix of the information rows in which torchvision's SSD300 runs channels-last too.
BOTH_CHANNELS_LAST = " (both channels-last)"
#: The least speed-up each row aims at (for training: throughput; for inference: latency);
#: rows not listed are for information.
TARGETS = {
    "matching + encoding, batch 32": 1.0,
    "loss, forward + backward, batch 32": 1.0,
    "post-processing, batch 32": 2.0,
    "training step SSD300, batch 8": 1.0,
    "inference SSD300, batch 1": 1.0,
    "inference SSD300, batch 8": 1.0,
}
#: On a GPU (the targets were set for an H100): the loss with its matching 10x faster than
#: torchvision's loop over images at batch 256, and training 1.3x torchvision's throughput.
CUDA_TARGETS = {
    "matching + encoding, batch 32": 1.0,
    "matching + encoding, batch 256": 10.0,
    "loss, forward + backward, batch 32": 1.0,
    "loss, forward + backward, batch 256": 10.0,
    "post-processing, batch 32": 2.0,
    "training step SSD300, batch 8": 1.3,
    "inference SSD300, batch 1": 1.0,
    "inference SSD300, batch 8": 1.0,
}
#: The throughput table's target on a GPU: images per second of SSD300 inference, with
#: post-processing, at batch 64.
CUDA_INFERENCE_TARGET = (64, 2000.0)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    load = os.getloadavg()  # before this run adds its own
    device = torch.device(args.device)
    targets = CUDA_TARGETS if device.type == "cuda" else TARGETS
    fast_run_time, model_run_time, rounds = (0.3, 0.0, 1) if args.quick else (1.0, 10.0, 3)

    _progress("matching, loss and post-processing, batch 32")
    tasks = {**matching_and_loss(32, device), **postprocessing(32, device)}
    if device.type == "cuda":
        tasks |= matching_and_loss(256, device)
    results = best_of_rounds(tasks, rounds, fast_run_time)

    theirs, ours = ssd300_pair(device)
    theirs_channels_last = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    for batch in (1, 8):
        _progress(f"inference SSD300, batch {batch}")
        tasks = inference(theirs, ours, batch, device, args.bf16)
        tasks |= inference(theirs_channels_last, ours, batch, device, args.bf16, BOTH_CHANNELS_LAST)
        results += best_of_rounds(tasks, rounds, model_run_time)
    # After the inference rows: the steps change the models' weights.
    _progress("training step SSD300, batch 8")
    tasks = training_step(theirs, ours, 8, device, args.bf16)
    tasks |= training_step(theirs_channels_last, ours, 8, device, args.bf16, BOTH_CHANNELS_LAST)
    results += best_of_rounds(tasks, rounds, model_run_time)
    results.sort(key=lambda r: row_order(r.task, targets))

    speeds = []
    if args.throughput:
        batches = args.batches or ((1, 8, 64, 256) if device.type == "cuda" else (1, 8))
        speeds = throughput(batches, device, args.bf16, model_run_time)

    setting = ", ".join(
        [describe_device(device), f"{torch.get_num_threads()} threads"]
        + (["bf16 autocast"] if args.bf16 else [])
    )
    print(f"\n{results_table(results, targets)}\n\n{setting}\n{environment()}")
    if speeds:
        print(f"\n{throughput_table(speeds, device)}")
    if args.write:
        command = shlex.join(["python", "benchmarks/bench_all.py", *(argv or sys.argv[1:])])
        page = results_page(results, targets, speeds, setting, command, load, device)
        kept = learning_section(RESULTS.read_text()) if RESULTS.exists() else ""
        RESULTS.write_text(with_learning_section(page, kept) if kept else page)
        print(f"\nwritten to {RESULTS}")


def row_order(task: str, targets: dict[str, float]) -> tuple[int, int]:
    """Rows in the order of ``targets``, each information row after the row it goes with."""
    base = task.removesuffix(BOTH_CHANNELS_LAST)
    return list(targets).index(base), int(base != task)


def matching_and_loss(batch: int, device: torch.device) -> Tasks:
    """Training targets, and the loss with its backward pass, ours and torchvision's
    (``bench_matching_loss``'s tasks)."""
    comparisons = matching_loss_tasks(batch, str(device))
    return {
        f"matching + encoding, batch {batch}": comparisons["matching + encoding"],
        f"loss, forward + backward, batch {batch}": comparisons["loss (forward + backward)"],
    }


def postprocessing(batch: int, device: torch.device) -> Tasks:
    """``detect`` against torchvision's ``postprocess_detections`` on trained-like outputs."""
    generator = torch.Generator().manual_seed(0)
    priors = default_boxes(SSD300)
    loc = torch.randn(batch, len(priors), 4, generator=generator).to(device)
    conf = trained_like_logits(generator, batch, priors).to(device)
    priors = priors.to(device)
    size = SSD300.image_size
    model = postprocess_ssd(candidates_per_class=200)
    anchors = [center_to_corners(priors) * size] * batch
    outputs = {"bbox_regression": loc, "cls_logits": conf}

    def ours():
        return detect(loc, conf, priors, candidates_per_class=200)

    def theirs():
        return model.postprocess_detections(outputs, anchors, [(size, size)] * batch)

    found = check_same(ours(), theirs(), size)
    _progress(f"post-processing: {found / batch:.0f} detections per image, the same on both sides")
    return {f"post-processing, batch {batch}": (ours, theirs)}


def ssd300_pair(device: torch.device) -> tuple[nn.Module, SSD]:
    """torchvision's ``ssd300_vgg16`` (91 classes, random weights) and our copy of it."""
    torch.manual_seed(0)
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    with torch.no_grad():
        # Channel a * C + c of a classifier is class c of the cell's default box a.
        for conv in theirs.head.classification_head.module_list:
            conv.bias[0::COCO_CLASSES] += BACKGROUND_BIAS
    ours = from_torchvision(theirs)
    return theirs.to(device), ours.to(device)


def inference(
    theirs: nn.Module,
    ours: SSD,
    batch: int,
    device: torch.device,
    bf16: bool,
    suffix: str = "",
) -> Tasks:
    """From 300x300 RGB images in [0, 1] to detections, ours and torchvision's; ``suffix``
    ends the row's name."""
    theirs.eval()
    ours.eval()
    generator = torch.Generator().manual_seed(batch)
    size = ours.config.image_size
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    image_list = list(images)
    priors = default_boxes(ours.config, device=device)
    candidates = theirs.topk_candidates

    @torch.no_grad()
    def ours_outputs():
        with _autocast(device, bf16):
            x = preprocess(images, size, ours.image_mean, ours.image_std)
            loc, conf = ours(x)
        return loc.float(), conf.float()

    @torch.no_grad()
    def ours_detect():
        return detect(*ours_outputs(), priors, candidates_per_class=candidates)

    @torch.no_grad()
    def their_detect():
        with _autocast(device, bf16):
            return theirs(image_list)

    loc, conf = ours_outputs()
    passed = int((conf.softmax(dim=-1)[..., 1:] > theirs.score_thresh).sum()) / batch
    ours_found = detect(loc, conf, priors, candidates_per_class=candidates)
    try:
        found = check_same(ours_found, their_detect(), size) / batch
        verdict = f"{found:.0f} detections per image, the same on both sides"
    except AssertionError as error:
        verdict = f"the detections differ: {str(error).splitlines()[0]}"
    _progress(f"{passed:.0f} candidates per image above {theirs.score_thresh}; {verdict}")
    return {f"inference SSD300, batch {batch}{suffix}": (ours_detect, their_detect)}


def training_step(
    theirs: nn.Module,
    ours: SSD,
    batch: int,
    device: torch.device,
    bf16: bool,
    suffix: str = "",
) -> Tasks:
    """One SGD step on the same images and objects: ours through ``Trainer``, and theirs;
    ``suffix`` ends the row's name."""
    theirs.train()
    ours.train()
    generator = torch.Generator().manual_seed(1)
    size = ours.config.image_size
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    image_list = list(images)
    gt_boxes, gt_labels, _, _ = make_batch(batch, str(device), seed=1)
    targets = [{"boxes": b * size, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)]

    with torch.no_grad():
        their_loss = sum(theirs(image_list, targets).values())
        priors = default_boxes(ours.config, device=device)
        loc, conf = ours(preprocess(images, size, ours.image_mean, ours.image_std))
        our_loss = MultiBoxLoss()(loc, conf, gt_boxes, gt_labels, priors).total
    _progress(f"loss at the same weights: ours {our_loss:.4f}, torchvision {their_loss:.4f}")

    config = TrainConfig(lr=1e-4, amp="bf16" if bf16 else None)
    trainer = Trainer(ours, config, device=device, progress=False)
    their_optimizer = torch.optim.SGD(
        theirs.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )

    def ours_step():
        x = preprocess(images, size, ours.image_mean, ours.image_std)
        return trainer.train_step((x, gt_boxes, gt_labels))

    def their_step():
        with _autocast(device, bf16):
            losses = theirs(image_list, targets)
        their_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        their_optimizer.step()

    return {f"training step SSD300, batch {batch}{suffix}": (ours_step, their_step)}


@dataclass
class Throughput:
    """Images per second and peak CUDA memory (bytes; ``None`` off CUDA) at one batch size."""

    mode: str  # "inference" or "training"
    batch: int
    ours_images_per_s: float
    theirs_images_per_s: float
    ours_peak_bytes: int | None
    theirs_peak_bytes: int | None


def throughput(
    batches: Sequence[int], device: torch.device, bf16: bool, min_run_time: float
) -> list[Throughput]:
    """Inference (with post-processing) and training steps of SSD300 at every batch size, ours
    and torchvision's as :func:`inference` and :func:`training_step` run them, on a fresh pair
    of models: every inference first, while both still hold the same weights."""
    theirs, ours = ssd300_pair(device)
    rows = []
    for mode, make_tasks in (("inference", inference), ("training", training_step)):
        for batch in batches:
            _progress(f"throughput: {mode} SSD300, batch {batch}")
            ((ours_fn, theirs_fn),) = make_tasks(theirs, ours, batch, device, bf16).values()
            ours_s, ours_peak = _time_and_peak_memory(ours_fn, device, min_run_time)
            theirs_s, theirs_peak = _time_and_peak_memory(theirs_fn, device, min_run_time)
            rows.append(
                Throughput(mode, batch, batch / ours_s, batch / theirs_s, ours_peak, theirs_peak)
            )
    return rows


def _time_and_peak_memory(
    fn: Callable[[], object], device: torch.device, min_run_time: float
) -> tuple[float, int | None]:
    """Median seconds of ``fn()``, and the most CUDA memory one call of it holds."""
    if device.type != "cuda":
        return median_seconds(fn, min_run_time), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return median_seconds(fn, min_run_time), torch.cuda.max_memory_allocated(device)


def results_table(results: list[Comparison], targets: dict[str, float]) -> str:
    """Markdown: task, both medians, the speed-up, its target and whether it is met."""
    lines = [
        "| task | ours (ms) | torchvision (ms) | speed-up | target | met? |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results:
        target = targets.get(r.task)
        verdict = ("yes" if r.speedup >= target else "no") if target else "–"
        lines.append(
            f"| {r.task} | {r.ours_s * 1e3:.1f} | {r.theirs_s * 1e3:.1f} | {r.speedup:.2f}x "
            f"| {f'≥ {target:.1f}x' if target else '–'} | {verdict} |"
        )
    return "\n".join(lines)


def throughput_table(rows: list[Throughput], device: torch.device) -> str:
    """Markdown: images per second of both sides, their ratio and peak memory, per batch size."""
    lines = [
        "| SSD300 | batch | ours (img/s) | torchvision (img/s) | ratio | ours peak (MiB) "
        "| torchvision peak (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.batch} | {r.ours_images_per_s:.1f} | {r.theirs_images_per_s:.1f} "
            f"| {r.ours_images_per_s / r.theirs_images_per_s:.2f}x | {_mib(r.ours_peak_bytes)} "
            f"| {_mib(r.theirs_peak_bytes)} |"
        )
    batch, target = CUDA_INFERENCE_TARGET
    measured = [r for r in rows if (r.mode, r.batch) == ("inference", batch)]
    if device.type == "cuda" and measured:
        speed = measured[0].ours_images_per_s
        lines.append(
            f"\nTarget: ≥ {target:.0f} img/s of inference at batch {batch} (set for an H100): "
            f"{speed:.0f} img/s, {'met' if speed >= target else 'not met'}."
        )
    return "\n".join(lines)


def _mib(size: int | None) -> str:
    return "–" if size is None else f"{size / 2**20:,.0f}"


def results_page(
    results: list[Comparison],
    targets: dict[str, float],
    speeds: list[Throughput],
    setting: str,
    command: str,
    load: tuple[float, float, float],
    device: torch.device,
) -> str:
    """The text of RESULTS.md; the book's appendix includes it from the marker on.

    ``load`` is the machine's load average before the run: other jobs that shared it.
    """
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    missed = [r for r in results if r.task in targets and r.speedup < targets[r.task]]
    notes = [
        f"- {r.task}: ours takes {r.ours_s / r.theirs_s:.2f}x torchvision's time, a speed-up "
        f"of {r.speedup:.2f}x where the target is {targets[r.task]:.1f}x."
        for r in missed
    ]
    summary = "Targets not met:\n\n" + "\n".join(notes) if notes else "All targets are met."
    throughput_part = (
        f"""
Throughput (images per second, from the median time of one call; peak memory is CUDA's
most allocated memory during one call, measured on CUDA only):

{throughput_table(speeds, device)}
"""
        if speeds
        else ""
    )
    return f"""# Benchmark results

Written by `benchmarks/bench_all.py --write`; see `benchmarks/README.md`.

<!-- results -->

Measured on {date} with

```
{command}
```

on {setting} ({environment()}). Load average of the machine before the run (1, 5, 15
min): {", ".join(f"{x:.2f}" for x in load)}.

{results_table(results, targets)}

Median times (ms); speed-up is torchvision's time over ours, above 1 when ours is faster. For
the training step this is the ratio of throughputs, for inference of latencies. Our SSD runs
its convolutions channels-last by default, torchvision's does not; in the rows marked "both
channels-last" torchvision's runs channels-last too, for information.

{summary}
{throughput_part}
{RESULTS_END}
"""


def describe_device(device: torch.device) -> str:
    """The device's name: the GPU's, or the CPU's model from /proc/cpuinfo where there is one."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{device.type} ({name})"


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short timing round")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in the SSD300 rows")
    parser.add_argument(
        "--throughput", action="store_true", help="images per second at several batch sizes"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        help="batch sizes of --throughput (default: 1 8 64 256 on CUDA, 1 8 on the CPU)",
    )
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    if args.bf16 and torch.device(args.device).type != "cuda":
        parser.error("--bf16 needs --device cuda (the Trainer uses autocast on CUDA only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


if __name__ == "__main__":
    main()
