"""Where an SSD spends its time and its arithmetic: stage timings, latency, FLOPs.

The SSD paper reports that about 80% of the forward time goes into the base network. To check
such a claim, :func:`profile_stages` times the four stages of one inference pass separately,
each on the real output of the stage before it:

1. **base network**: ``model.base.backbone`` (VGG-16 through fc7, or MobileNet), image ->
   its source maps;
2. **extra layers**: ``model.base.extras``, the backbone's last map -> the smaller maps;
3. **multibox heads**: ``model.head``, all source maps -> ``loc``, ``conf``;
4. **post-processing**: :func:`ssd_tutorial.postprocess.detect`, ``loc``, ``conf`` ->
   detections;

and the whole pass end to end, so that the stages can be checked to add up. Each run times
the four stages and the whole pass one after the other, after a few warm-up runs; the result is
the median of every column over the runs, so a burst of load from another process spoils one run
and not one stage. On CUDA the device is synchronised around every measurement: kernels run
asynchronously, and without the synchronisation the clock would stop before they finish.

:func:`gflops_per_image` counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, which
counts a multiply-add as 2 FLOPs (torchvision's model tables count it as 1: its 0.58 "GFLOPS"
for ``ssdlite320_mobilenet_v3_large`` are 1.17 here).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.model import SSD, count_parameters, eval_mode
from ssd_tutorial.postprocess import detect

#: The stages :func:`profile_stages` times, in the order of the pass.
STAGES: tuple[str, ...] = ("base network", "extra layers", "multibox heads", "post-processing")


@dataclass(frozen=True)
class StageProfile:
    """Median times of the stages of one inference pass.

    Attributes:
        stages: milliseconds per stage, in the order of :data:`STAGES`.
        total_ms: milliseconds of the whole pass timed end to end (about the stages' sum).
        device: where it ran, e.g. ``"cpu"`` or ``"cuda:0"``.
        batch_size: images per pass.
    """

    stages: dict[str, float]
    total_ms: float
    device: str
    batch_size: int

    def share(self, stage: str) -> float:
        """Fraction of the stages' summed time spent in ``stage``."""
        return self.stages[stage] / sum(self.stages.values())

    def rows(self) -> list[tuple[str, float, float]]:
        """One ``(stage, ms, share)`` row per stage."""
        return [(stage, ms, self.share(stage)) for stage, ms in self.stages.items()]

    def __str__(self) -> str:
        lines = [f"{'stage':16s} {'ms':>9s} {'share':>6s}"]
        lines += [f"{stage:16s} {ms:9.2f} {share:6.1%}" for stage, ms, share in self.rows()]
        lines.append(f"{'sum of stages':16s} {sum(self.stages.values()):9.2f}")
        lines.append(f"{'whole pass':16s} {self.total_ms:9.2f}")
        return "\n".join(lines)


def profile_stages(
    model: SSD,
    batch_size: int = 1,
    runs: int = 10,
    warmup: int = 2,
    images: Tensor | None = None,
    **detect_kwargs: Any,
) -> StageProfile:
    """Time each stage of ``model``'s inference pass, on the model's device.

    Args:
        model: an :class:`~ssd_tutorial.model.SSD` whose base is a
            :class:`~ssd_tutorial.backbones.MultiScaleFeatures` (backbone + extras). It runs in
            eval mode and is put back in its former mode afterwards.
        batch_size: random images per pass (1: the latency of a single image).
        runs: timed runs; every reported time is a median over them.
        warmup: untimed runs first (memory allocation, CPU caches, CUDA kernel selection).
        images (Tensor[B, 3, S, S]): a normalised batch to run on instead of random images.
            Post-processing costs more the more candidates pass its threshold: nearly all do
            for an untrained network, or for a trained one on noise.
        detect_kwargs: passed to :func:`~ssd_tutorial.postprocess.detect`, e.g.
            ``conf_threshold``.

    Returns:
        StageProfile: the medians, in milliseconds.
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"runs and batch_size must be >= 1 and warmup >= 0, got runs={runs}, "
            f"batch_size={batch_size}, warmup={warmup}"
        )
    base = model.base
    if not (hasattr(base, "backbone") and hasattr(base, "extras")):
        raise TypeError(
            f"profile_stages needs model.base to have a backbone and extras "
            f"(MultiScaleFeatures), got {type(base).__name__}"
        )
    if images is None:
        images = _random_images(model, batch_size)
    priors = default_boxes(model.config, device=images.device)
    with eval_mode(model), torch.inference_mode():
        loc, conf = model(images)  # checks the images too
        images = model.input_format(images)  # as the model's forward hands them to the base
        sources = base.backbone(images)
        all_sources = sources + base.extras(sources[-1])
        steps: dict[str, Callable[[], object]] = {
            "base network": lambda: base.backbone(images),
            "extra layers": lambda: base.extras(sources[-1]),
            "multibox heads": lambda: model.head(all_sources),
            "post-processing": lambda: detect(loc, conf, priors, **detect_kwargs),
            "whole pass": lambda: detect(*model(images), priors, **detect_kwargs),
        }
        for _ in range(warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(runs):
            for name, step in steps.items():
                times[name].append(time_ms(step, images.device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    total = medians.pop("whole pass")
    return StageProfile(medians, total, str(images.device), len(images))


def forward_latency_ms(
    model: nn.Module, batch_size: int = 1, runs: int = 10, warmup: int = 2
) -> float:
    """Median milliseconds of ``model``'s forward pass (network only, no post-processing) on
    random images of its input size, on its device, in eval mode."""
    images = _random_images(model, batch_size)
    with eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(images)
        return statistics.median(time_ms(lambda: model(images), images.device) for _ in range(runs))


def gflops_per_image(
    forward: Callable[[Tensor], object],
    image_size: int,
    device: torch.device | str = "cpu",
    in_channels: int = 3,
) -> float:
    """FLOPs of ``forward`` on one ``in_channels x S x S`` input (an RGB image by default) on
    ``device``, in billions, 2 per multiply-add. Convolutions and matrix products count; the
    element-wise work (activations, batch norm, softmax, NMS) does not."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(torch.randn(1, in_channels, image_size, image_size, device=device))
    return counter.get_total_flops() / 1e9


def stage_gflops(model: SSD) -> dict[str, float]:
    """GFLOPs per image of the network's stages: base network, extra layers, multibox heads
    (the first three :data:`STAGES`; post-processing is element-wise work, not counted)."""
    size, device = model.config.image_size, next(model.parameters()).device
    with eval_mode(model):
        backbone = gflops_per_image(model.base.backbone, size, device)
        base = gflops_per_image(model.base, size, device)
        total = gflops_per_image(model, size, device)
    return dict(zip(STAGES, (backbone, base - backbone, total - base)))


def model_costs(model: SSD, runs: int = 10, warmup: int = 2) -> dict[str, float]:
    """What a network costs: ``parameters``, ``gflops`` per image (:func:`gflops_per_image`) and
    ``latency_ms``, the median forward pass of one image on the model's device
    (:func:`forward_latency_ms`)."""
    with eval_mode(model):
        device = next(model.parameters()).device
        gflops = gflops_per_image(model, model.config.image_size, device)
    return {
        "parameters": count_parameters(model),
        "gflops": gflops,
        "latency_ms": forward_latency_ms(model, 1, runs, warmup),
    }


def _random_images(model: nn.Module, batch_size: int) -> Tensor:
    parameter = next(model.parameters())
    size = model.config.image_size
    return torch.randn(batch_size, 3, size, size, device=parameter.device, dtype=parameter.dtype)


def time_ms(step: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``step()`` in milliseconds, waiting for CUDA kernels to finish."""
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
