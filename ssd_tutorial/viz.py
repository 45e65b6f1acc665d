"""Drawing boxes and images with matplotlib, for the book, the CLI and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from torch import Tensor

#: A palette that stays readable on photos (tab10 without its greys).
PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)


def show_image(
    image: np.ndarray | Tensor, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Show an image given as ``[H, W, 3]`` (numpy) or ``[3, H, W]`` (tensor, 0-1 or 0-255)."""
    if ax is None:
        _, ax = plt.subplots()
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.is_floating_point():
            image = image.clamp(0, 1)
        image = image.permute(1, 2, 0).numpy()
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(
    ax: Axes,
    boxes: Tensor | np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    colors: str | Sequence[str] | None = None,
    linewidth: float = 2.0,
    linestyle: str = "-",
    fill_alpha: float = 0.0,
) -> None:
    """Draw corner-form boxes ``[N, 4]`` (in the axes' data coordinates) with optional labels."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).tolist()
    if colors is None or isinstance(colors, str):
        colors = [colors or PALETTE[i % len(PALETTE)] for i in range(len(boxes))]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        color = colors[i % len(colors)]
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=fill_alpha > 0,
                alpha=None,
                facecolor=(*plt.matplotlib.colors.to_rgb(color), fill_alpha),
                edgecolor=color,
                linewidth=linewidth,
                linestyle=linestyle,
            )
        )
        if labels is not None and labels[i]:
            ax.text(
                x1,
                y1,
                labels[i],
                color="white",
                fontsize=9,
                va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1.5, "alpha": 0.85},
            )


def draw_detections(
    ax: Axes | None,
    image: np.ndarray | Tensor | PIL.Image.Image,
    result: Any,
    class_names: Sequence[str] | None = None,
    linewidth: float = 2.0,
    title: str | None = None,
) -> Axes:
    """Show ``image`` with the detections of ``result``, labelled ``"name 0.87"``.

    Args:
        ax: where to draw; ``None`` makes a new figure.
        image: numpy ``[H, W, 3]``, tensor ``[3, H, W]`` or PIL image.
        result: boxes ``[N, 4]`` in the image's pixels, ``scores``, ``labels`` and optionally
            ``names`` (a :class:`ssd_tutorial.detector.DetectionResult`).
        class_names: names by label, used when ``result`` has no ``names`` (labels are shown
            otherwise).

    Returns:
        The axes. Each class keeps one colour from :data:`PALETTE`.
    """
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    ax = show_image(image, ax, title)
    labels = torch.as_tensor(result.labels).tolist()
    names = getattr(result, "names", None) or [
        class_names[label] if class_names is not None else str(label) for label in labels
    ]
    scores = torch.as_tensor(result.scores).tolist()
    draw_boxes(
        ax,
        result.boxes,
        labels=[f"{name} {score:.2f}" for name, score in zip(names, scores)],
        colors=[PALETTE[(label - 1) % len(PALETTE)] for label in labels],
        linewidth=linewidth,
    )
    return ax
