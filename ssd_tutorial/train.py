"""Training SSD: SGD with warm-up and step decay, mixed precision, checkpoints that resume exactly.

The loop is plain PyTorch, short enough to read in one sitting:

    for each epoch:   seed the epoch's randomness from (seed, epoch)
        for each batch:   forward -> MultiBox loss -> backward -> SGD step -> LR schedule
        save a checkpoint (model, optimiser, scheduler, grad scaler, counters, RNG states)

Every epoch's data order and augmentation depend only on ``(seed, epoch)``, so a run resumed
from a checkpoint continues with exactly the losses an uninterrupted run would have had.

**Several processes.** Started by ``torchrun`` (see :mod:`ssd_tutorial.distributed`), each
process trains on its shard of every global batch (a ``DistributedSampler``): the trainer wraps
the model in ``DistributedDataParallel``, which averages the gradients, and normalises the loss
by the positives of the whole global batch, so W processes take the step one process would take
on the global batch. Only rank 0 shows progress, writes logs and checkpoints and evaluates; the
others wait for it at a barrier. Checkpoints hold the plain model's weights, so they load in one
process or in several alike.

The module holds the configuration (:class:`TrainConfig`, the presets, the schedule) and the
:class:`Trainer` that uses it, which is why it is longer than the package's others; the
checkpoint format that inference reads is :mod:`ssd_tutorial.checkpoint`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ssd_tutorial import distributed
from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.checkpoint import load_checkpoint, model_info
from ssd_tutorial.checkpoint import load_model as load_model  # re-exported for old scripts
from ssd_tutorial.loss import LossTerms, MultiBoxLoss, NonFinitePredictionError


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run. Defaults follow the SSD paper's Pascal VOC recipe.

    Attributes:
        epochs: passes over the training data.
        optimizer: ``"sgd"`` (with momentum, the paper's choice) or ``"adamw"`` (converges in
            fewer steps when training small models from scratch, as the CPU chapter does).
        lr: peak learning rate (after warm-up), for the global batch (all processes
            together). Nothing rescales it when the batch changes: with k times the batch,
            the linear scaling rule (Goyal et al., 2017) suggests k times the rate, with a
            warm-up.
        momentum, weight_decay: SGD settings (0.9 and 5e-4 in the paper); AdamW uses the
            weight decay too.
        warmup_steps: steps over which the LR rises linearly from ``lr * warmup_factor``.
        schedule: after the warm-up, ``"step"`` (the paper's: the LR is multiplied by
            ``gamma`` after each of the ``milestones``) or ``"cosine"`` (it falls from ``lr``
            to 0 along half a cosine, reaching 0 at ``max_steps``, which it needs; short runs
            gain most from it, since no step is spent at a rate that is already too low or
            still too high).
        milestones: steps after which the LR is multiplied by ``gamma`` (``"step"`` only).
        max_steps: stop after this many steps in total (``None``: run all epochs).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        amp: mixed precision: the forward pass under ``torch.autocast`` in ``"bf16"`` or
            ``"fp16"`` (with gradient scaling) on CUDA, in ``"bf16"`` on a CPU that computes in
            bfloat16 (:func:`cpu_has_bf16`); float32 with ``None``, on other CPUs and devices,
            and for ``"fp16"`` on a CPU. The weights, the loss and the optimiser stay float32.
        compile: run the model through ``torch.compile``.
        sync_bn: under several processes, compute batch-norm statistics over the global batch
            (``SyncBatchNorm``, CUDA only) instead of each process's shard; no effect in one
            process.
        seed: seeds weights-independent randomness: data order, augmentation, workers.
        log_every: write a CSV row every this many steps.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    warmup_factor: float = 1e-3
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    max_steps: int | None = None
    grad_clip: float | None = None
    amp: str | None = "bf16"
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {self.amp!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if self.schedule == "cosine" and (self.max_steps is None or self.milestones):
            raise ValueError(
                "schedule='cosine' needs max_steps (where the rate reaches 0) and no milestones, "
                f"got max_steps={self.max_steps}, milestones={self.milestones}"
            )
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")


#: Reference schedules, in steps at batch size 32: the SSD300 VOC recipe of the reference
#: PyTorch code (120k iterations, decay at 80k and 100k) and torchvision's COCO recipe
#: (120 epochs, decay at epochs 80 and 110; about 3665 steps per epoch at batch 32). And the
#: recipe of the small teaching model trained from scratch on a CPU (``ssd_tiny``): AdamW at a
#: high rate (its batch norm allows it) reaches a useful accuracy in a few hundred steps where
#: SGD needs thousands. Its weight decay is AdamW's usual 0.05: decoupled from the gradient, it
#: shrinks each weight by ``lr * 0.05`` per step, so it is not the 100-fold stronger pull that
#: the number suggests next to SGD's 5e-4. :func:`ssd_tutorial.zoo.shapes_recipe` adds a cosine
#: decay.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny_cpu": {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.05, "warmup_steps": 50},
    "voc_reference": {"lr": 1e-3, "milestones": (80_000, 100_000), "max_steps": 120_000},
    "coco_torchvision": {
        "lr": 2e-3,
        "milestones": (80 * 3665, 110 * 3665),
        "max_steps": 120 * 3665,
        "warmup_steps": 1000,
    },
}


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at ``step``: linear warm-up, then step or cosine decay."""
    if config.schedule == "cosine":
        start, end = config.warmup_steps, config.max_steps
        progress = min(max(step - start, 0) / max(end - start, 1), 1.0)
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = config.gamma ** sum(step >= m for m in config.milestones)
    if step < config.warmup_steps:
        progress = step / config.warmup_steps
        factor *= config.warmup_factor + (1 - config.warmup_factor) * progress
    return factor


class Trainer:
    """Trains an SSD model on batches of ``(images, boxes, labels, ...)``.

    In a process group of several processes (started by ``torchrun``, see
    :mod:`ssd_tutorial.distributed`) the model is wrapped in ``DistributedDataParallel`` (its
    weights broadcast from rank 0) and each process gets its shard of the global batch: a
    ``DataLoader`` with a ``DistributedSampler``, whose epoch :meth:`fit` sets.

    Args:
        model: an SSD (forward gives ``loc[B, P, 4]``, ``conf[B, P, C]``; has ``config`` and
            ``num_classes``).
        config: the run's hyper-parameters.
        device: where to train (default: CUDA if available, else CPU); under several
            processes, this process's device.
        loss_fn: defaults to :class:`~ssd_tutorial.loss.MultiBoxLoss` with the paper's settings.
        out_dir: where ``train.csv``, ``eval.csv`` and ``last.pt`` go (``None``: nothing is
            written); with tensorboard installed, the same metrics go to ``out_dir/tensorboard``.
            Only rank 0 writes.
        progress: show tqdm progress bars (on rank 0).
        class_names: names of the classes, background first; saved in checkpoints so that
            :func:`ssd_tutorial.checkpoint.load_model` gives a ready-to-use detector.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device | str | None = None,
        loss_fn: nn.Module | None = None,
        out_dir: Path | str | None = None,
        progress: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if class_names is not None and len(class_names) != model.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names (background included) but the model "
                f"has {model.num_classes} classes"
            )
        self.class_names = tuple(class_names) if class_names is not None else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.config = config
        self.model = _prepare_model(model, config, self.device)
        parallel = _data_parallel(self.model, self.device)
        self.forward = torch.compile(parallel) if config.compile else parallel
        self.loss_fn = loss_fn or MultiBoxLoss()
        self.priors = default_boxes(model.config, device=self.device)
        self.optimizer = _optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate_factor(step, config)
        )
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.tensorboard = (
            _tensorboard_writer(self.out_dir) if distributed.is_main_process() else None
        )
        self.progress = progress and distributed.is_main_process()
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []

    def fit(
        self,
        loader: Iterable,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    ) -> list[dict[str, float]]:
        """Train from the current epoch to ``config.epochs`` (or ``max_steps``).

        ``evaluate(model)``, if given, runs after every epoch (on rank 0 only, while the other
        processes wait); its metrics join the history. If ``loader`` has a sampler with
        ``set_epoch`` (a ``DistributedSampler``), it is told each epoch, so that the shuffled
        order depends on ``(seed, epoch)`` as in a single process.
        Returns the history: one dict per logged step and one per evaluation.
        """
        config = self.config
        sampler = getattr(loader, "sampler", None)
        while self.epoch < config.epochs and not self._done():
            _seed_epoch(config.seed, self.epoch, distributed.rank())
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            self.model.train()
            batches = tqdm(
                loader,
                desc=f"epoch {self.epoch + 1}/{config.epochs}",
                disable=not self.progress,
                leave=False,
            )
            for batch in batches:
                row = self.train_step(batch)
                if self.step % config.log_every == 0 or self._done():
                    self._log("train", {"epoch": self.epoch + 1, **row})
                batches.set_postfix(
                    loss=f"{row['loss']:.3f}",
                    loc=f"{row['loc']:.3f}",
                    conf=f"{row['conf']:.3f}",
                    img_s=f"{row['img_per_s']:.0f}",
                )
                if self._done():
                    break
            self.epoch += 1
            if evaluate is not None and distributed.is_main_process():
                self.model.eval()
                self._log("eval", {"epoch": self.epoch, "step": self.step, **evaluate(self.model)})
            if self.out_dir is not None:
                self.save_checkpoint(self.out_dir / "last.pt")
            distributed.barrier()  # nobody runs ahead while rank 0 evaluates and saves
        return self.history

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimisation step on one batch; returns the step's losses and speed.

        Under several processes ``batch`` is this process's shard of the global batch; the
        losses, positives and speed returned are those of the global batch, on every process.
        If the loss fails in one process (non-finite predictions, bad targets), every process
        raises at this step instead of waiting for the others.
        """
        start = time.perf_counter()
        images, boxes, labels = batch[0], batch[1], batch[2]
        images = images.to(self.device, non_blocking=True)
        boxes = [b.to(self.device, non_blocking=True) for b in boxes]
        labels = [t.to(self.device, non_blocking=True) for t in labels]
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loc, conf = self.forward(images)
        advice = "lower the learning rate, add warm-up or gradient clipping, or check the data"
        try:
            terms: LossTerms = self.loss_fn(loc, conf, boxes, labels, self.priors)
        except Exception as error:
            _tell_the_other_processes_of_a_failure(self.device)
            if isinstance(error, NonFinitePredictionError):
                raise FloatingPointError(
                    f"non-finite predictions at step {self.step + 1} (epoch {self.epoch + 1}): "
                    f"{error}; {advice}"
                ) from error
            raise
        objective, terms = _global_batch_loss(terms)
        loss = terms.total.item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at step {self.step + 1} (epoch {self.epoch + 1}): "
                f"total {loss}, localization {terms.localization.item()}, "
                f"confidence {terms.confidence.item()}; {advice}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        return {
            "step": self.step,
            "lr": lr,
            "loss": loss,
            "loc": terms.localization.item(),
            "conf": terms.confidence.item(),
            "positives": terms.num_positives,
            "img_per_s": len(images) * distributed.world_size() / (time.perf_counter() - start),
        }

    def save_checkpoint(self, path: Path | str) -> None:
        """Everything needed to continue exactly: weights, optimiser, schedule, RNG states.

        The weights are the plain model's (no ``module.`` prefix of ``DistributedDataParallel``)
        and every process holds the same ones, so rank 0 alone writes; the others return.
        """
        if not distributed.is_main_process():
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "model": self.model.state_dict(),
            "model_info": model_info(self.model),
            "class_names": self.class_names,
            "image_normalization": (self.model.image_mean, self.model.image_std),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_config": dataclasses.asdict(self.config),
            "rng": _rng_states(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(checkpoint, tmp)
        tmp.replace(path)  # never leave a half-written checkpoint behind

    def load_checkpoint(self, path: Path | str) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` and continue from it.

        Under several processes every process reads it (the same file).
        """
        checkpoint = load_checkpoint(path, self.model, map_location=self.device)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        _set_rng_states(checkpoint["rng"])

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _log(self, kind: str, row: dict[str, float]) -> None:
        """Keep a row in the history, append it to ``out_dir/{kind}.csv`` and to TensorBoard
        (rank 0 only)."""
        self.history.append(row)
        if self.out_dir is None or not distributed.is_main_process():
            return
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, row["step"])
            self.tensorboard.flush()
        path = self.out_dir / f"{kind}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


def _tensorboard_writer(out_dir: Path | None) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``out_dir/tensorboard`` if tensorboard is installed."""
    if out_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the CSV files hold the same numbers
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _prepare_model(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """``model`` on ``device``, with ``SyncBatchNorm`` if the config asks."""
    if config.sync_bn and distributed.world_size() > 1:
        if device.type != "cuda":
            raise ValueError(
                f"sync_bn needs CUDA devices (torch's SyncBatchNorm has no {device.type} "
                "implementation); train without it, each process then normalises its own shard"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device)


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under several processes, else ``model``."""
    if distributed.world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _global_batch_loss(terms: LossTerms) -> tuple[torch.Tensor, LossTerms]:
    """The loss this process back-propagates, and the loss terms of the whole global batch.

    One process with the global batch minimises ``S / N``: ``S`` the loss summed over all
    images, ``N`` their positives. Process ``r`` of ``W`` sees a shard with sum ``S_r`` and
    ``N_r`` positives, and :class:`~ssd_tutorial.loss.MultiBoxLoss` gives it
    ``S_r / max(N_r, 1)``, so averaging those would weigh a shard with few objects as much as
    one with many. Instead the positives are summed over the processes (one all-reduce) and
    process ``r`` back-propagates ``W * S_r / N``; ``DistributedDataParallel`` averages the
    gradients over the ``W`` processes, which gives exactly the gradient of ``S / N``, the
    single-process one. ``S_r`` is ``loss_r * max(N_r, 1)`` (both are 0 when ``N_r = 0``).

    In a single process both are ``terms.total`` and ``terms`` themselves.
    """
    processes = distributed.world_size()
    if processes == 1:
        return terms.total, terms
    local_normalizer = max(terms.num_positives, 1)
    parts = torch.stack([terms.localization, terms.confidence, terms.total]).detach()
    sums = torch.cat([parts * local_normalizer, parts.new_tensor([terms.num_positives])]).float()
    sums = distributed.all_reduce_sum(sums)
    if math.isnan(sums[3].item()):
        raise RuntimeError(
            "another training process failed in this step's loss; its own error says why"
        )
    num_positives = round(sums[3].item())
    normalizer = max(num_positives, 1)
    objective = terms.total * (processes * local_normalizer / normalizer)
    localization, confidence, total = sums[:3] / normalizer
    return objective, LossTerms(localization, confidence, total, num_positives)


def _tell_the_other_processes_of_a_failure(device: torch.device) -> None:
    """Join the all-reduce of :func:`_global_batch_loss` with NaN sums, before raising.

    The other processes wait in that all-reduce for this process's loss. Left alone they
    would wait for the process group's time-out (or for ``torchrun`` to kill them); a NaN
    count of positives tells them that a process failed, and they stop at the same step.
    """
    if distributed.world_size() > 1:
        distributed.all_reduce_sum(torch.full((4,), math.nan, device=device))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (x86's AVX512-BF16 or AMX instructions).

    On such a CPU oneDNN runs the convolutions of a bfloat16 autocast in bfloat16, and a
    training step of the tiny SSD takes about 40% less time than in float32; elsewhere autocast
    would convert to bfloat16 and back around float32 arithmetic, and be slower.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(
        getattr(torch.cpu, check, lambda: False)() for check in checks
    )


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp is None:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "bf16" and cpu_has_bf16():
        return torch.bfloat16
    return None


def _seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Make an epoch's shuffling, worker seeds and augmentation depend on (seed, epoch) only.

    Under several processes, on (seed, epoch, rank): each process augments its own images
    with its own random draws, rather than all repeating rank 0's.
    """
    epoch_seed = seed * 100_003 + epoch + rank * 1_000_000_007
    random.seed(epoch_seed)
    np.random.seed(epoch_seed % 2**32)  # noqa: NPY002 (user transforms may use the global RNG)
    torch.manual_seed(epoch_seed)


def _rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
