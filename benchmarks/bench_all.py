"""All the speed comparisons in one table: ours against torchvision's SSD, in one process.

Run from the repository root::

    make bench                                       # quick mode, writes benchmarks/RESULTS.md
    make bench QUICK=0                               # longer timings, the same rows
    python benchmarks/bench_all.py --quick           # print the table only
    python benchmarks/bench_all.py --threads 1       # steadier on a shared machine
    python benchmarks/bench_all.py --device cuda --bf16 --channels-last

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

``--quick`` takes one timing round with short runs (the SSD300 rows: one timed call per side
after the warm-up); the full run takes the best of three rounds of longer runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from bench_matching_loss import make_batch
from bench_matching_loss import tasks as matching_loss_tasks
from bench_postprocess import check_same, trained_like_logits
from bench_postprocess import torchvision_ssd as postprocess_ssd
from timing import Comparison, best_of_rounds, environment
from torch import nn
from torchvision.models.detection import ssd300_vgg16

from ssd_tutorial.anchors import SSD300, default_boxes
from ssd_tutorial.boxes import center_to_corners
from ssd_tutorial.loss import MultiBoxLoss
from ssd_tutorial.model import SSD, from_torchvision
from ssd_tutorial.postprocess import detect
from ssd_tutorial.preprocess import preprocess
from ssd_tutorial.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: Added to the background logit of every default box of the random SSD300 (see above).
BACKGROUND_BIAS = 10.0
COCO_CLASSES = 91

Tasks = dict[str, tuple[Callable[[], object], Callable[[], object]]]
#: The least speed-up each row aims at (for training: throughput; for inference: latency).
TARGETS = {
    "matching + encoding, batch 32": 1.0,
    "loss, forward + backward, batch 32": 1.0,
    "post-processing, batch 32": 2.0,
    "training step SSD300, batch 8": 1.0,
    "inference SSD300, batch 1": 1.0,
    "inference SSD300, batch 8": 1.0,
}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    load = os.getloadavg()  # before this run adds its own
    device = torch.device(args.device)
    fast_run_time, model_run_time, rounds = (0.3, 0.0, 1) if args.quick else (1.0, 10.0, 3)

    _progress("matching, loss and post-processing, batch 32")
    tasks = {**matching_and_loss(32, device), **postprocessing(32, device)}
    results = best_of_rounds(tasks, rounds, fast_run_time)

    theirs, ours = ssd300_pair(device, args.channels_last)
    for batch in (1, 8):
        _progress(f"inference SSD300, batch {batch}")
        tasks = inference(theirs, ours, batch, device, args.bf16, args.channels_last)
        results += best_of_rounds(tasks, rounds, model_run_time)
    # Last: the steps change both models' weights.
    _progress("training step SSD300, batch 8")
    tasks = training_step(theirs, ours, 8, device, args.bf16, args.channels_last)
    results += best_of_rounds(tasks, rounds, model_run_time)

    results.sort(key=lambda r: list(TARGETS).index(r.task))
    options = (("bf16 autocast", args.bf16), ("channels last", args.channels_last))
    setting = ", ".join(
        [describe_device(device), f"{torch.get_num_threads()} threads"]
        + [name for name, on in options if on]
    )
    print(f"\n{results_table(results)}\n\n{setting}\n{environment()}")
    if args.write:
        command = shlex.join(["python", "benchmarks/bench_all.py", *(argv or sys.argv[1:])])
        RESULTS.write_text(results_page(results, setting, command, load))
        print(f"\nwritten to {RESULTS}")


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


def ssd300_pair(device: torch.device, channels_last: bool) -> tuple[nn.Module, SSD]:
    """torchvision's ``ssd300_vgg16`` (91 classes, random weights) and our copy of it."""
    torch.manual_seed(0)
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    with torch.no_grad():
        # Channel a * C + c of a classifier is class c of the cell's default box a.
        for conv in theirs.head.classification_head.module_list:
            conv.bias[0::COCO_CLASSES] += BACKGROUND_BIAS
    ours = from_torchvision(theirs)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return (
        theirs.to(device, memory_format=memory_format),
        ours.to(device, memory_format=memory_format),
    )


def inference(
    theirs: nn.Module,
    ours: SSD,
    batch: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
) -> Tasks:
    """From 300x300 RGB images in [0, 1] to detections, ours and torchvision's."""
    theirs.eval()
    ours.eval()
    generator = torch.Generator().manual_seed(batch)
    size = ours.config.image_size
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    image_list = list(images)
    priors = default_boxes(ours.config, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    candidates = theirs.topk_candidates

    @torch.no_grad()
    def ours_outputs():
        with _autocast(device, bf16):
            x = preprocess(images, size, ours.image_mean, ours.image_std)
            loc, conf = ours(x.contiguous(memory_format=memory_format))
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
    return {f"inference SSD300, batch {batch}": (ours_detect, their_detect)}


def training_step(
    theirs: nn.Module,
    ours: SSD,
    batch: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
) -> Tasks:
    """One SGD step on the same images and objects: ours through ``Trainer``, and theirs."""
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

    config = TrainConfig(lr=1e-4, amp="bf16" if bf16 else None, channels_last=channels_last)
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

    return {f"training step SSD300, batch {batch}": (ours_step, their_step)}


def results_table(results: list[Comparison]) -> str:
    """Markdown: task, both medians, the speed-up, its target and whether it is met."""
    lines = [
        "| task | ours (ms) | torchvision (ms) | speed-up | target | met? |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results:
        target = TARGETS[r.task]
        lines.append(
            f"| {r.task} | {r.ours_s * 1e3:.1f} | {r.theirs_s * 1e3:.1f} | {r.speedup:.2f}x "
            f"| ≥ {target:.1f}x | {'yes' if r.speedup >= target else 'no'} |"
        )
    return "\n".join(lines)


def results_page(
    results: list[Comparison], setting: str, command: str, load: tuple[float, float, float]
) -> str:
    """The text of RESULTS.md; the book's appendix includes it from the marker on.

    ``load`` is the machine's load average before the run: other jobs that shared it.
    """
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    missed = [r for r in results if r.speedup < TARGETS[r.task]]
    notes = [
        f"- {r.task}: ours takes {r.ours_s / r.theirs_s:.2f}x torchvision's time, a speed-up "
        f"of {r.speedup:.2f}x where the target is {TARGETS[r.task]:.1f}x."
        for r in missed
    ]
    summary = "Targets not met:\n\n" + "\n".join(notes) if notes else "All targets are met."
    return f"""# Benchmark results

Written by `benchmarks/bench_all.py --write`; see `benchmarks/README.md`.

<!-- results -->

Measured on {date} with

```
{command}
```

on {setting} ({environment()}). Load average of the machine before the run (1, 5, 15
min): {", ".join(f"{x:.2f}" for x in load)}.

{results_table(results)}

Median times (ms); speed-up is torchvision's time over ours, above 1 when ours is faster. For
the training step this is the ratio of throughputs, for inference of latencies.

{summary}
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
        "--channels-last", action="store_true", help="channels-last SSD300 weights and inputs"
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
