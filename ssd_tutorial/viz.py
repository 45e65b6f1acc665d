"""Drawing boxes and images with matplotlib, for the book, the CLI and notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
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
