"""The checkpoint file: what a training run saves, and loading it back into a model.

A checkpoint is a ``torch.save`` dict. :class:`ssd_tutorial.train.Trainer` writes it; the keys
that describe the model are read here, so that evaluation, detection and export load a model
without importing the training loop:

* ``model``: the state dict of the plain model (no ``DistributedDataParallel`` prefix);
* ``model_info``: :func:`model_info`, checked before any weight is loaded;
* ``class_names``: the run's class names, background first, or ``None``;
* ``image_normalization``: ``(image_mean, image_std)`` the weights expect.

The training state (optimiser, scheduler, grad scaler, counters, RNG states) sits next to these
and is the trainer's own business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssd_tutorial.model import ARCHITECTURES, SSD, build_ssd


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about its model, to refuse loading into another one."""
    return {
        "class": type(model).__name__,
        "architecture": getattr(model, "architecture", None),
        "anchors": model.config.name,
        "image_size": model.config.image_size,
        "num_boxes": model.config.num_boxes,
        "num_classes": model.num_classes,
    }


def load_checkpoint(
    path: Path | str, model: nn.Module, map_location: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` and return the whole checkpoint.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the checkpoint was written for another model (other anchors, input
            size or number of classes) or is not a checkpoint of this package.
    """
    checkpoint = _read_checkpoint(path, map_location)
    expected, found = model_info(model), checkpoint["model_info"]
    if expected != found:
        differences = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        raise ValueError(
            f"{path} was written for another model: "
            + ", ".join(
                f"{k} {a!r} in the checkpoint, {b!r} here" for k, (a, b) in differences.items()
            )
        )
    model.load_state_dict(checkpoint["model"])
    return checkpoint


def load_model(
    path: Path | str, map_location: torch.device | str = "cpu"
) -> tuple[SSD, tuple[str, ...] | None]:
    """The model a checkpoint was trained as, with its weights: for evaluation and detection.

    Returns:
        ``(model, class_names)``: the model in eval mode on ``map_location``, and the class
        names saved with the checkpoint (background first), or ``None`` if the run had none.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_checkpoint`, and if the checkpoint's model
        was not built by :func:`ssd_tutorial.model.build_ssd` (build it yourself, then use
        :func:`load_checkpoint`).
    """
    checkpoint = _read_checkpoint(path, map_location)
    info = checkpoint["model_info"]
    if info.get("architecture") not in ARCHITECTURES:
        raise ValueError(
            f"{path} holds a {info.get('class')} that build_ssd cannot rebuild (architecture "
            f"{info.get('architecture')!r}): build the model yourself and use load_checkpoint"
        )
    model = build_ssd(info["architecture"], info["num_classes"])
    model.image_mean, model.image_std = checkpoint["image_normalization"]
    model.load_state_dict(checkpoint["model"])
    class_names = checkpoint.get("class_names")
    return model.to(map_location).eval(), tuple(class_names) if class_names else None


def _read_checkpoint(path: Path | str, map_location: torch.device | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # pickle, zip and torch errors alike: the file is unusable
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or "model_info" not in checkpoint:
        raise ValueError(f"{path} is not an ssd_tutorial checkpoint (no 'model_info')")
    return checkpoint
