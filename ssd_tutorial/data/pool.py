"""A pool of rendered images: drawn once, augmented anew every time one is read.

Drawing a synthetic image costs about as much CPU time as a training step spends on it (2 ms
at 128 px on one core), and on two cores a loader worker that draws while the step runs takes
the step's threads away from it: the step slows down by as much as the worker saves. A pool
draws ``n`` images once, keeps them in memory (uint8, 48 KiB each at 128 px), and applies the
training transforms when an item is read, in the training process itself, so that every
epoch still sees new augmentations of the same images. That is the situation of a real data
set too: a finite set of photos, augmented afresh in every pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset


class ImagePool(Dataset):
    """The first ``length`` items of ``dataset``, computed once; ``transforms`` at every read.

    Args:
        dataset: gives ``(image, target)`` items, e.g.
            :class:`~ssd_tutorial.data.shapes.SyntheticShapes` without transforms.
        length: how many of its items to keep (default: all of them).
        transforms: ``(image, target) -> (image, target)`` applied to a kept item each time it
            is read (e.g. :func:`~ssd_tutorial.data.transforms.train_transforms`); the kept
            item itself is never changed.

    Raises:
        ValueError: if ``length`` is negative or larger than ``dataset``.
    """

    def __init__(
        self,
        dataset: Dataset,
        length: int | None = None,
        transforms: Callable | None = None,
    ) -> None:
        available = len(dataset)
        length = available if length is None else length
        if not 0 <= length <= available:
            raise ValueError(f"length must be in 0..{available} (the dataset's size), got {length}")
        self.items = [dataset[i] for i in range(length)]
        self.transforms = transforms

    @classmethod
    def with_transforms(cls, pool: ImagePool, transforms: Callable | None) -> ImagePool:
        """The same kept items (shared, not copied) read through other ``transforms``."""
        view = cls.__new__(cls)
        view.items, view.transforms = pool.items, transforms
        return view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.items[index]
        if self.transforms is None:
            return image, target
        return self.transforms(image, dict(target))
