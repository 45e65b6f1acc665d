"""Data loaders: how images become the batches of training and evaluation, decided in one place.

The command line (:mod:`ssd_tutorial.cli`), the book's models (:mod:`ssd_tutorial.zoo`) and the
ablations (:mod:`ssd_tutorial.ablation`) build their loaders with the two functions here:

* :func:`train_pipeline` decides how training images are augmented and batched: SSD's
  per-image pipeline (:func:`~ssd_tutorial.data.transforms.train_transforms`) followed by
  :func:`~ssd_tutorial.data.transforms.collate`; or, when horizontal flips are the only
  augmentation, no per-image transforms at all and the whole batch flipped and normalised at
  once (:func:`~ssd_tutorial.data.transforms.collate_flipped`, a third of the per-image
  pipeline's time).
* :func:`make_loader` decides the rest, each default overridable: loading processes
  (:func:`default_num_workers`, the cores shared out among the training processes), page-locked
  memory for copies to a CUDA device, workers kept alive between epochs when there are any,
  and under ``torchrun`` each process's shard of the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ssd_tutorial import distributed
from ssd_tutorial.data.transforms import collate, collate_flipped, train_transforms

#: The augmentation steps that only the per-image pipeline does (switches of
#: :func:`~ssd_tutorial.data.transforms.train_transforms`; all on unless switched off).
PER_IMAGE_STEPS: tuple[str, ...] = ("photometric", "zoom_out", "iou_crop")


class TrainPipeline(NamedTuple):
    """How training samples are augmented and batched (see :func:`train_pipeline`).

    Attributes:
        transforms: ``(image, target) -> (image, target)`` for each sample as it is read, or
            ``None``: the dataset's items go to ``collate_fn`` as they are (uint8 images).
        collate_fn: the ``collate_fn`` of the loader, samples -> a
            :class:`~ssd_tutorial.data.transforms.Batch`.
    """

    transforms: Callable | None
    collate_fn: Callable


def train_pipeline(size: int, augmentations: Mapping[str, bool] | None = None) -> TrainPipeline:
    """The transforms and the collate function of training at ``size`` px.

    With any of :data:`PER_IMAGE_STEPS` on, the samples go through
    ``train_transforms(size, **augmentations)`` one by one and are stacked by
    :func:`~ssd_tutorial.data.transforms.collate`. With flips alone (or nothing), the samples are
    read without transforms and :func:`~ssd_tutorial.data.transforms.collate_flipped` flips
    (with probability 0.5, or 0 if ``flip`` is off) and normalises the batch as a whole, which
    gives the same batches as the per-image pipeline at a third of its cost; the dataset must
    then give uint8 images of ``size`` px already (e.g. an
    :class:`~ssd_tutorial.data.pool.ImagePool` drawn at that size).

    Args:
        size: the network's input side, in pixels.
        augmentations: switches of :func:`~ssd_tutorial.data.transforms.train_transforms`
            (``photometric``, ``zoom_out``, ``iou_crop``, ``flip``, each on unless ``False``);
            ``None`` or ``{}`` is all of SSD's.
    """
    augmentations = dict(augmentations or {})
    if any(augmentations.get(step, True) for step in PER_IMAGE_STEPS):
        return TrainPipeline(train_transforms(size, **augmentations), collate)
    flip_probability = 0.5 if augmentations.get("flip", True) else 0.0
    return TrainPipeline(None, partial(collate_flipped, p=flip_probability))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    shard: bool = False,
    seed: int = 0,
    collate_fn: Callable[[Any], Any] | None = None,
    device: torch.device | str | None = None,
    workers: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """Batches of ``dataset`` for training or evaluation, with the package's loading defaults.

    Args:
        dataset: gives ``(image, target)`` samples.
        batch_size: images per step; with ``shard`` under several processes the global batch,
            split evenly over them (:func:`~ssd_tutorial.distributed.local_batch_size`).
        shuffle: a new order every epoch (ignored with ``sampler``).
        sampler: the order of the samples, instead of ``shuffle``; not with ``shard``.
        shard: under ``torchrun``, give this process its equal part of every global batch (a
            ``DistributedSampler`` seeded with ``seed``, whose epoch the trainer sets); in one
            process it changes nothing.
        seed: the ``DistributedSampler``'s seed.
        collate_fn: samples -> batch (default :func:`~ssd_tutorial.data.transforms.collate`;
            :func:`train_pipeline` gives the one of training).
        device: where the batches go; copies to CUDA get page-locked memory by default.
        workers: loading processes per training process (default
            :func:`default_num_workers`); 0 loads in this process.
        pin_memory: page-locked batches (default: on for a CUDA ``device``).
        persistent_workers: keep the loading processes between epochs (default: on when
            there are any).

    Raises:
        ValueError: if the batch size is below 1 or does not split evenly over the processes,
            or if both ``sampler`` and ``shard`` are given.
    """
    processes = distributed.world_size()
    if shard and sampler is not None:
        raise ValueError("make_loader takes a sampler or shard=True, not both")
    if shard and processes > 1:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        batch_size = distributed.local_batch_size(batch_size, processes)
    else:
        batch_size = distributed.local_batch_size(batch_size, 1)
    if workers is None:
        workers = default_num_workers(processes)
    if pin_memory is None:
        pin_memory = device is not None and torch.device(device).type == "cuda"
    if persistent_workers is None:
        persistent_workers = workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        collate_fn=collate_fn or collate,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
    )


def default_num_workers(num_processes: int, cpu_count: int | None = None) -> int:
    """Data-loading workers per training process: the machine's cores shared out, at most 8.

    Decoding and augmenting images is what starves a GPU; 8 workers keep one busy at SSD300's
    input size, and more processes per machine leave fewer cores to each.
    """
    cpus = cpu_count if cpu_count is not None else _available_cpus()
    return min(8, cpus // num_processes)


def _available_cpus() -> int:
    """The cores this process may run on (a container or ``taskset`` may allow fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
