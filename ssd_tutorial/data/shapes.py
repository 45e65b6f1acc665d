"""Synthetic shapes: the package's own detection dataset, generated on the fly.

Each image shows a few coloured shapes (circles, squares, triangles, ellipses, wide and tall
rectangles, stars, crosses) of sizes from a few pixels to most of the image, on a textured
background. Shapes overlap and are cut by the image border. The labels are exact: the box of an
object is the bounding box of the pixels where it is visible (not hidden by a shape drawn on top
of it, not outside the image), so there is no annotation noise.

Item ``i`` of ``SyntheticShapes(seed=s)`` depends only on ``(s, i)``: it is the same in every
worker process, in any order, on any machine with the same torch version.

Drawing is vectorised: each shape is a boolean mask computed from the pixel-centre coordinate
grid of its box (pixel ``(row, col)`` has centre ``(col + 0.5, row + 0.5)``, so a pixel belongs
to a shape when its centre does). An "owner" map records which object each pixel shows; the
visible boxes and masks follow from it. The background is built on small grids and upsampled
with two matrix products. Python loops run only over the few objects of an image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ssd_tutorial.boxes import check_boxes

#: Class names; index 0 is the background, the dataset labels are 1..8.
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "circle",
    "square",
    "triangle",
    "ellipse",
    "wide_rectangle",
    "tall_rectangle",
    "star",
    "cross",
)

#: Range of the object size ``s``, the side of a square of the same area as the object's box, as
#: a fraction of ``sqrt(H * W)``; the box covers ``s**2`` of the image area. Sampled
#: log-uniformly, so about a fifth of the objects are small (see :mod:`ssd_tutorial.data.sizes`).
DEFAULT_SIZE_RANGE: tuple[float, float] = (0.03, 0.6)
#: Only small objects: in images of 128 pixels a side or more every box covers less than 1/300
#: of the image (COCO's "small", see :mod:`ssd_tutorial.data.sizes`), pixel rounding included.
SMALL_SIZE_RANGE: tuple[float, float] = (0.025, 0.045)

# Width / height ranges per class; ellipses are wide or tall with equal chance.
_ASPECT_RANGES: dict[str, tuple[float, float]] = {
    "circle": (1.0, 1.0),
    "square": (1.0, 1.0),
    "triangle": (0.8, 1.25),
    "ellipse": (1.6, 2.5),
    "wide_rectangle": (2.0, 3.5),
    "tall_rectangle": (1 / 3.5, 1 / 2),
    "star": (0.9, 1.1),
    "cross": (0.9, 1.1),
}
# Half thickness of a cross's arms, as a fraction of the half side.
_CROSS_ARM = 1 / 3


def _star_polygon(points: int = 5, inner: float = 0.45) -> Tensor:
    """Vertices ``[2 * points, 2]`` of a star stretched to fill the square ``[-1, 1]^2``."""
    angles = torch.arange(2 * points, dtype=torch.float64) * math.pi / points - math.pi / 2
    radii = torch.tensor([1.0, inner], dtype=torch.float64).repeat(points)
    vertices = torch.stack((radii * angles.cos(), radii * angles.sin()), dim=1)
    low, high = vertices.min(0).values, vertices.max(0).values
    return (2 * (vertices - low) / (high - low) - 1).float()


_STAR = _star_polygon()


def _inside_polygon(u: Tensor, v: Tensor, vertices: Tensor) -> Tensor:
    """Even-odd rule: is each point ``(u, v)`` (any shape) inside the polygon ``[K, 2]``?"""
    a, b = vertices, vertices.roll(-1, dims=0)
    ax, ay, bx, by = (t.view(-1, *([1] * u.ndim)) for t in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    # Count the edges that a ray from the point towards +u crosses.
    spans = (ay > v) != (by > v)
    crossing_u = ax + (v - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
    return ((spans & (u < crossing_u)).sum(0) % 2) == 1


# Each shape as a test on local coordinates: (u, v) in [-1, 1]^2 spans the object's box.
_SHAPE_TESTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "ellipse": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: (u.abs() <= 1) & (v.abs() <= 1),
    "wide_rectangle": lambda u, v: (u.abs() <= 1) & (v.abs() <= 1),
    "tall_rectangle": lambda u, v: (u.abs() <= 1) & (v.abs() <= 1),
    # Apex at the top centre, base along the bottom edge.
    "triangle": lambda u, v: (v <= 1) & (2 * u.abs() <= v + 1),
    "cross": lambda u, v: (
        (u.abs() <= 1) & (v.abs() <= 1) & ((u.abs() <= _CROSS_ARM) | (v.abs() <= _CROSS_ARM))
    ),
    "star": lambda u, v: _inside_polygon(u, v, _STAR),
}


def shape_mask(label: int, box: Tensor, height: int, width: int) -> tuple[int, int, Tensor]:
    """Pixels covered by one shape, on the part of the image its box overlaps.

    Args:
        label: class index in ``1..len(CLASS_NAMES) - 1``.
        box (Tensor[4]): the full shape's box ``(x1, y1, x2, y2)`` in pixels; it may extend
            past the image.
        height, width: image size in pixels.

    Returns:
        ``(top, left, mask)``: ``mask`` is a ``bool`` tensor ``[h, w]`` for the image rows
        ``top:top + h`` and columns ``left:left + w`` whose pixel centres lie in the box
        (``h`` or ``w`` is 0 when the box misses every pixel centre).
    """
    x1, y1, x2, y2 = box.tolist()
    left, right = max(math.ceil(x1 - 0.5), 0), min(math.floor(x2 - 0.5) + 1, width)
    top, bottom = max(math.ceil(y1 - 0.5), 0), min(math.floor(y2 - 0.5) + 1, height)
    xs = torch.arange(left, max(right, left), dtype=torch.float32) + 0.5
    ys = torch.arange(top, max(bottom, top), dtype=torch.float32) + 0.5
    u = ((xs - (x1 + x2) / 2) / ((x2 - x1) / 2)).view(1, -1)
    v = ((ys - (y1 + y2) / 2) / ((y2 - y1) / 2)).view(-1, 1)
    u, v = torch.broadcast_tensors(u, v)
    return top, left, _SHAPE_TESTS[CLASS_NAMES[label]](u, v)


def draw_scene(
    background: Tensor,
    labels: Tensor,
    boxes: Tensor,
    colors: Tensor,
    min_visible: float = 0.5,
    min_pixels: int = 4,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Paint shapes in order (later ones on top) and measure what remains visible of each.

    Args:
        background (Tensor[3, H, W]): float image in ``[0, 1]``.
        labels (Tensor[N]): int64 class indices in ``1..len(CLASS_NAMES) - 1``.
        boxes (Tensor[N, 4]): each full shape's box ``(x1, y1, x2, y2)`` in pixels, with
            ``x2 > x1`` and ``y2 > y1``; it may extend past the image border.
        colors (Tensor[N, 3]): RGB in ``[0, 1]``.
        min_visible: an object whose visible pixels are fewer than this fraction of its pixels
            inside the image is left out entirely (not painted, no label), so that no shape is
            a fragment too small to recognise.
        min_pixels: objects with fewer pixels inside the image are left out too.

    Returns:
        ``(image, boxes, labels, owner)``: ``image`` float ``[3, H, W]``; for the ``K <= N``
        objects kept, in drawing order: ``boxes`` float ``[K, 4]``, the exact pixel bounding
        box ``(x1, y1, x2, y2)`` of the visible part (``x2`` is one past the last column) and
        ``labels`` int64 ``[K]``; ``owner`` int64 ``[H, W]``, the position in ``0..K-1`` of the
        object seen at each pixel, -1 for background (the masks are ``owner == k``).
    """
    check_boxes(boxes, "boxes")
    if bool(((boxes[:, 2:] - boxes[:, :2]) <= 0).any()):
        raise ValueError(f"boxes must have x2 > x1 and y2 > y1, got {boxes.tolist()}")
    _, height, width = background.shape
    regions = [shape_mask(int(label), box, height, width) for label, box in zip(labels, boxes)]
    pixels = torch.tensor([int(mask.sum()) for _, _, mask in regions], dtype=torch.long)
    owner = _paint_owners(regions, range(len(regions)), height, width)
    visible = torch.bincount(owner.flatten() + 1, minlength=len(regions) + 1)[1:]
    keep = (pixels >= min_pixels) & (visible >= min_visible * pixels)
    kept = keep.nonzero().flatten().tolist()
    if len(kept) < len(regions):
        # Leaving an object out only uncovers the others, so they stay above min_visible.
        owner = _paint_owners(regions, kept, height, width)
    image = background.clone()
    visible_boxes = torch.zeros(len(kept), 4)
    for position, index in enumerate(kept):
        # Work on the object's region only: its visible pixels cannot lie outside it.
        top, left, mask = regions[index]
        rows, cols = slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1])
        seen = owner[rows, cols] == position
        image[:, rows, cols] = torch.where(seen, colors[index].view(3, 1, 1), image[:, rows, cols])
        visible_boxes[position] = _mask_box(seen) + torch.tensor([left, top, left, top])
    return image, visible_boxes, labels[kept], owner


def _paint_owners(
    regions: list[tuple[int, int, Tensor]], order: Iterable[int], height: int, width: int
) -> Tensor:
    """Map ``[H, W]`` of the position in ``order`` of the shape seen at each pixel (-1: none)."""
    owner = torch.full((height, width), -1, dtype=torch.long)
    for position, index in enumerate(order):
        top, left, mask = regions[index]
        view = owner[top : top + mask.shape[0], left : left + mask.shape[1]]
        view[mask] = position
    return owner


def _mask_box(mask: Tensor) -> Tensor:
    """Bounding box ``(x1, y1, x2, y2)`` of the True pixels of ``[h, w]``; ``x2``, ``y2`` are
    one past the last column and row."""
    cols, rows = mask.any(dim=0), mask.any(dim=1)
    # argmax returns the first maximum: the first True from each end.
    x1, x2 = cols.byte().argmax(), len(cols) - cols.flip(0).byte().argmax()
    y1, y2 = rows.byte().argmax(), len(rows) - rows.flip(0).byte().argmax()
    return torch.stack((x1, y1, x2, y2)).float()


class SyntheticShapes(Dataset):
    """Images of coloured shapes with exact boxes, generated from ``(seed, index)``.

    Args:
        length: number of images.
        image_size: ``int`` for square images or ``(height, width)``.
        seed: images of different seeds are independent.
        objects_per_image: ``(min, max)`` number of shapes drawn (inclusive). Some may be left
            out when mostly hidden (see :func:`draw_scene`), so an image has at most ``max``.
        size_range: ``(min, max)`` object size ``s`` (see :data:`DEFAULT_SIZE_RANGE`); use
            :data:`SMALL_SIZE_RANGE` for a split of small objects only.
        transforms: optional callable ``(image, target) -> (image, target)``, e.g.
            :func:`ssd_tutorial.data.transforms.train_transforms`.
        return_masks: also return the visible pixels of each object as ``target["masks"]``.

    Each item is ``(image, target)``: ``image`` a ``tv_tensors.Image`` uint8 ``[3, H, W]``;
    ``target["boxes"]`` ``tv_tensors.BoundingBoxes`` ``[K, 4]`` XYXY in pixels,
    ``target["labels"]`` int64 ``[K]`` in ``1..8`` (names in :data:`CLASS_NAMES`), and with
    ``return_masks`` ``target["masks"]`` a ``tv_tensors.Mask`` bool ``[K, H, W]``.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        length: int = 1000,
        image_size: int | tuple[int, int] = 300,
        seed: int = 0,
        objects_per_image: tuple[int, int] = (1, 6),
        size_range: tuple[float, float] = DEFAULT_SIZE_RANGE,
        transforms: Callable | None = None,
        return_masks: bool = False,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be positive (height, width), got {image_size}")
        low, high = objects_per_image
        if not 0 <= low <= high:
            raise ValueError(
                f"objects_per_image must be (min, max) with 0 <= min <= max, "
                f"got {objects_per_image}"
            )
        if not 0 < size_range[0] <= size_range[1] <= 1:
            raise ValueError(
                f"size_range must be (min, max) with 0 < min <= max <= 1, got {size_range}"
            )
        self.length = length
        self.image_size = (height, width)
        self.seed = seed
        self.objects_per_image = (low, high)
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.transforms = transforms
        self.return_masks = return_masks

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Tensor]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        index %= self.length
        generator = torch.Generator().manual_seed(_item_seed(self.seed, index))
        height, width = self.image_size
        background = _background(generator, height, width)
        labels, boxes, colors = self._sample_objects(generator, background)
        image, visible_boxes, labels, owner = draw_scene(background, labels, boxes, colors)
        image = _lighting_and_noise(generator, image)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                visible_boxes, format="XYXY", canvas_size=(height, width)
            ),
            "labels": labels,
        }
        if self.return_masks:
            target["masks"] = tv_tensors.Mask(owner == torch.arange(len(labels)).view(-1, 1, 1))
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def _sample_objects(self, generator: torch.Generator, background: Tensor) -> tuple[Tensor, ...]:
        """Labels ``[N]``, full boxes ``[N, 4]`` in pixels and colours ``[N, 3]``."""
        _, height, width = background.shape
        low, high = self.objects_per_image
        count = int(torch.randint(low, high + 1, (1,), generator=generator))
        labels = torch.randint(1, len(CLASS_NAMES), (count,), generator=generator)
        uniform = torch.rand(count, 5, generator=generator)
        log_low, log_high = math.log(self.size_range[0]), math.log(self.size_range[1])
        side = torch.exp(log_low + (log_high - log_low) * uniform[:, 0]) * math.sqrt(height * width)
        aspect_low, aspect_high = _aspect_bounds(labels)
        aspect = aspect_low + (aspect_high - aspect_low) * uniform[:, 1]
        is_ellipse = labels == CLASS_NAMES.index("ellipse")
        aspect = torch.where(is_ellipse & (uniform[:, 2] < 0.5), 1 / aspect, aspect)
        half_size = torch.stack((side * aspect.sqrt(), side / aspect.sqrt()), dim=1) / 2
        # Centres anywhere in the image: large shapes are often cut by the border.
        center = uniform[:, 3:] * torch.tensor([width, height])
        boxes = torch.cat((center - half_size, center + half_size), dim=1)
        return labels, boxes, _contrasting_colors(generator, background, count)


def _item_seed(seed: int, index: int) -> int:
    """A 64-bit seed for item ``index``, well mixed so neighbouring items are independent."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint64)[0])


def _aspect_bounds(labels: Tensor) -> tuple[Tensor, Tensor]:
    table = torch.tensor([(1.0, 1.0)] + [_ASPECT_RANGES[name] for name in CLASS_NAMES[1:]])
    return table[labels, 0], table[labels, 1]


def _background(generator: torch.Generator, height: int, width: int) -> Tensor:
    """Float ``[3, H, W]`` in about ``[0, 1]``: a base colour, a gradient and smooth noise.

    Everything is built on small grids (4x4 for the colour, the gradient and coarse noise,
    16x16 for finer noise) and upsampled once, so the cost per pixel is a single matrix product.
    """
    base = 0.15 + 0.7 * torch.rand(3, 1, 1, generator=generator)
    angle = 2 * math.pi * float(torch.rand(1, generator=generator))
    strength = 0.3 * torch.rand(3, 1, 1, generator=generator)
    centres = (torch.arange(4) + 0.5) / 4 - 0.5
    gradient = strength * (
        math.cos(angle) * centres.view(1, 1, 4) + math.sin(angle) * centres.view(1, 4, 1)
    )
    coarse = base + gradient + 0.08 * torch.randn(3, 4, 4, generator=generator)
    fine = _upsample(coarse, 16, 16) + 0.05 * torch.randn(3, 16, 16, generator=generator)
    return _upsample(fine, height, width)


def _upsample(grid: Tensor, height: int, width: int) -> Tensor:
    """Bilinear upsampling of ``[C, h, w]`` to ``[C, H, W]`` (as ``F.interpolate``).

    Bilinear interpolation is separable, ``rows @ grid @ columns.T``: two small matrix products,
    several times faster than ``F.interpolate`` for these shapes.
    """
    return (
        _upsampling_matrix(grid.shape[1], height)
        @ grid
        @ _upsampling_matrix(grid.shape[2], width).T
    )


def _upsampling_matrix(cells: int, size: int) -> Tensor:
    """``[size, cells]`` matrix of 1-D linear interpolation from ``cells`` to ``size`` samples."""
    unit_signals = torch.eye(cells).unsqueeze(0)
    return F.interpolate(unit_signals, size=size, mode="linear", align_corners=False)[0].T


def _contrasting_colors(generator: torch.Generator, background: Tensor, count: int) -> Tensor:
    """Random RGB colours ``[count, 3]``, pushed away from the background's mean colour."""
    colors = torch.rand(count, 3, generator=generator)
    mean = background.mean(dim=(1, 2))
    too_close = (colors - mean).norm(dim=1) < 0.35
    return torch.where(too_close.unsqueeze(1), 1 - colors, colors)


def _lighting_and_noise(generator: torch.Generator, image: Tensor) -> Tensor:
    """Uneven lighting over the whole scene plus pixel noise; returns uint8 ``[3, H, W]``."""
    _, height, width = image.shape
    light = 1 + 0.2 * _upsample(torch.randn(1, 3, 3, generator=generator), height, width)
    noise = 0.03 * torch.randn(1, height, width, generator=generator)
    # +0.5 then truncation rounds to the nearest integer (values are non-negative).
    return (255 * (image * light + noise) + 0.5).clamp_(0, 255).to(torch.uint8)
