"""Dataset files on disk: reading images, and what happens to invalid samples.

The VOC and COCO readers check every sample when they are created (annotation parsed, classes
known, boxes inside the image, image file present with a readable header of the annotated size).
A problem raises :class:`InvalidSampleError` naming the file; with ``skip_invalid=True`` the
whole image is left out instead, with a warning that names it, so that no object is ever left
unlabelled and nothing disappears silently. A file whose header is fine but whose pixel data is
damaged can only be found when it is decoded: :func:`read_image` then raises, naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

Item = TypeVar("Item")
Sample = TypeVar("Sample")


class InvalidSampleError(ValueError):
    """A sample of a dataset on disk is missing, unreadable or inconsistent."""


def check_image_file(path: Path, size: tuple[int, int]) -> None:
    """Check that an image file exists and its header says it is ``size = (height, width)``.

    Reads the header only, which is fast enough to check every image of a dataset.

    Raises:
        InvalidSampleError: if the file is missing, not a readable image, or of another size.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise InvalidSampleError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidSampleError(f"image file {path} is not a readable image: {error}") from None
    _check_size(path, (height, width), size)


def _check_size(path: Path, actual: tuple[int, ...], expected: tuple[int, int]) -> None:
    if tuple(actual) != tuple(expected):
        raise InvalidSampleError(
            f"image file {path} is {tuple(actual)} (height, width) but its annotation says "
            f"{tuple(expected)}"
        )


def read_image(path: Path, expected_size: tuple[int, int] | None = None) -> tv_tensors.Image:
    """Decode an image file to RGB ``uint8 [3, H, W]``.

    Args:
        path: an image file Pillow can read (JPEG, PNG, ...); grey or RGBA images are
            converted to RGB.
        expected_size: ``(height, width)`` the annotation gives, checked if given.

    Raises:
        InvalidSampleError: if the file cannot be decoded or has another size.
    """
    try:
        with Image.open(path) as file:
            image = pil_to_tensor(file.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidSampleError(f"image file {path} could not be decoded: {error}") from None
    if expected_size is not None:
        _check_size(path, image.shape[1:], expected_size)
    return tv_tensors.Image(image)


def index_samples(
    items: Iterable[Item], parse: Callable[[Item], Sample], skip_invalid: bool
) -> list[Sample]:
    """``[parse(item) for item in items]``, raising or skipping (with a warning) invalid ones.

    ``parse`` raises :class:`InvalidSampleError` for an invalid item. With ``skip_invalid``
    that item is left out and ``warnings.warn`` reports it; otherwise the error propagates.
    """
    samples = []
    for item in items:
        try:
            samples.append(parse(item))
        except InvalidSampleError as error:
            if not skip_invalid:
                raise
            warnings.warn(f"skipping invalid sample: {error}", stacklevel=3)
    return samples


def pixel_boxes(boxes: list[list[float]], canvas_size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """Corner-form pixel boxes ``[N, 4]`` (``N`` may be 0) as ``tv_tensors.BoundingBoxes``."""
    return tv_tensors.BoundingBoxes(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        format="XYXY",
        canvas_size=canvas_size,
    )
