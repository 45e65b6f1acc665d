"""Checks at the package's boundary that several public functions share, written once.

Validation happens where data enters (see the style guide): :func:`~ssd_tutorial.loss`'s
MultiBox loss, :func:`~ssd_tutorial.postprocess.detect`, :func:`~ssd_tutorial.matching.match`
and the metrics all take tensors from the user and must name what is wrong. The checks they have
in common live here, so that the same mistake gets the same message everywhere; so does the
import of an optional dependency (:func:`require_extra`), which names the package extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor


def describe(value: Any) -> list[int] | str:
    """What an argument is, for an error message: a tensor's shape, else its type's name."""
    return list(value.shape) if isinstance(value, Tensor) else type(value).__name__


def check_num_classes(num_classes: int, name: str) -> None:
    """Raise unless there are at least two classes: the background and one object class."""
    if num_classes < 2:
        raise ValueError(f"{name} needs C >= 2 classes (background + 1), got C = {num_classes}")


def check_iou_threshold(iou_threshold: float) -> None:
    """Raise unless the IoU a match needs is in ``(0, 1]`` (0 would match everything)."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def class_names_with_background(class_names: Sequence[str], num_classes: int) -> tuple[str, ...]:
    """The names of labels ``0..C-1``: ``class_names`` as they are, or with ``"background"``
    put first when they name only the ``C - 1`` object classes.

    Raises:
        ValueError: if there are neither ``C`` nor ``C - 1`` names.
    """
    if len(class_names) == num_classes - 1:
        class_names = ("background", *class_names)
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names must name the model's {num_classes} classes (background first) or "
            f"its {num_classes - 1} object classes, got {len(class_names)} names"
        )
    return tuple(class_names)


def invalid_labels(labels: Tensor, num_classes: int | None) -> Tensor:
    """``Tensor[N]`` bool: the labels outside ``1..num_classes - 1`` (0 is the background);
    without ``num_classes``, the labels below 1."""
    if num_classes is None:
        return labels < 1
    return (labels < 1) | (labels >= num_classes)


def non_finite_rows(values: Tensor) -> Tensor | None:
    """``values[..., K]`` -> bool ``[...]``, the rows holding a NaN or inf; ``None`` if none does.

    The fast path is one sum, NaN or inf whenever a value is; only then are the rows compared
    (the sum can also overflow on huge but finite values, which gives an all-False mask).
    """
    if bool(torch.isfinite(values.sum())):
        return None
    bad = ~torch.isfinite(values).all(dim=-1)
    return bad if bool(bad.any()) else None


def require_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail naming the package extra that installs it.

    Args:
        module: what to import, e.g. ``"onnxruntime"``.
        extra: the ``[project.optional-dependencies]`` entry that lists it, e.g. ``"export"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is not installed; this part of ssd_tutorial needs it: "
            f"pip install ssd-tutorial[{extra}]"
        ) from error
