"""A trained model for the book, made on the spot: the tiny SSD trained on the synthetic shapes.

No weights can be downloaded where the book is built, so the book trains its own.
:func:`shapes_model` trains ``build_ssd("ssd_tiny", ...)`` on
:class:`~ssd_tutorial.data.shapes.SyntheticShapes` with :func:`shapes_recipe` the first time it
is asked for (under three minutes on two CPU cores in quick mode) and loads it from a cache folder
afterwards, so that the chapters on training, inference and evaluation share one run. The
discussion chapters train variants with the same recipe (another network, other default boxes,
other augmentations), each under its own ``name``.

The recipe is made for two CPU cores (``benchmarks/bench_learning.py`` measures it against the
earlier one):

* a pool of training images (:data:`SHAPES_POOL_IMAGES`) drawn once per process
  (:class:`~ssd_tutorial.data.pool.ImagePool`) and augmented in the training process, with no
  loader worker: on two cores a worker takes the training step's threads away from it; a
  full run's pool is larger, so that it goes through it about as often as a quick run does
  through its own, instead of learning the pool's images by heart;
* the flips done on whole batches (:func:`~ssd_tutorial.data.transforms.collate_flipped`);
* AdamW at a high rate with a cosine decay to zero (:data:`~ssd_tutorial.train.PRESETS`
  ``tiny_cpu``, ``schedule="cosine"``);
* the forward pass in bfloat16 on a CPU that computes in it (``Trainer``'s default
  ``amp="bf16"``, :func:`~ssd_tutorial.train.cpu_has_bf16`), in float32 elsewhere;
* horizontal flips only (:data:`SHORT_RUN_AUGMENTATIONS`): in a run of a few passes over the
  pool, SSD's zoom out and IoU crops spread the object sizes over a range the validation
  images never show, and cost more than they give; they pay off in long runs that would
  otherwise overfit (chapter 12 measures both).

The cache folder is ``$SSD_TUTORIAL_CACHE`` (the book build sets ``_build/cache``) or
``~/.cache/ssd_tutorial``. Each run keeps its checkpoint and its ``train.csv`` and ``eval.csv``
logs there, for the training chapter's curves.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from ssd_tutorial import quick_mode
from ssd_tutorial.checkpoint import load_checkpoint
from ssd_tutorial.data.catalog import open_dataset
from ssd_tutorial.data.loading import make_loader, train_pipeline
from ssd_tutorial.data.pool import ImagePool
from ssd_tutorial.data.shapes import CLASS_NAMES, SyntheticShapes
from ssd_tutorial.data.transforms import eval_transforms, train_transforms
from ssd_tutorial.evaluate import evaluate_model
from ssd_tutorial.model import SSD, build_ssd
from ssd_tutorial.train import PRESETS, TrainConfig, Trainer

#: Training steps (batches of 32) of :func:`shapes_model`: in quick mode (under three minutes
#: of training on two CPU cores with bfloat16 arithmetic), and at full size.
SHAPES_STEPS: dict[str, int] = {"quick": 1600, "full": 5600}
#: Steps between two evaluations during training (one "epoch" of the run).
STEPS_PER_EPOCH = 100
BATCH_SIZE = 32
IMAGE_SIZE = 128
#: Training images in the pool that a run draws its batches from, in quick mode and at full
#: size: about 13 and 22 passes over the pool in :data:`SHAPES_STEPS`.
SHAPES_POOL_IMAGES: dict[str, int] = {"quick": 4000, "full": 8000}
#: The augmentations of :func:`shapes_model` unless asked otherwise: horizontal flips only
#: (switches of :func:`~ssd_tutorial.data.transforms.train_transforms`).
SHORT_RUN_AUGMENTATIONS: dict[str, bool] = {
    "photometric": False,
    "zoom_out": False,
    "iou_crop": False,
}


def shapes_recipe(steps: int, seed: int = 0) -> TrainConfig:
    """The ``tiny_cpu`` preset for ``steps`` steps, the learning rate falling to 0 along a
    cosine; ``seed`` sets the data order and augmentation (see :class:`TrainConfig`)."""
    return TrainConfig(
        **PRESETS["tiny_cpu"],
        schedule="cosine",
        seed=seed,
        epochs=-(-steps // STEPS_PER_EPOCH),
        max_steps=steps,
        log_every=10,
    )


def training_loader(
    size: int = IMAGE_SIZE,
    augmentations: Mapping[str, bool] | None = None,
    pool_images: int | None = None,
) -> DataLoader:
    """The batches of one epoch of :func:`shapes_model`'s training: :data:`STEPS_PER_EPOCH`
    batches of :data:`BATCH_SIZE`, drawn without repetition from a pool of ``pool_images``
    training images of ``size`` px (rendered once per process and size; a pool smaller than an
    epoch is gone through several times, each in a new order) and augmented as they are read,
    in this process (no worker).

    Args:
        size: image side in pixels (the model's input size).
        augmentations: switches of :func:`~ssd_tutorial.data.transforms.train_transforms`;
            ``None`` gives :data:`SHORT_RUN_AUGMENTATIONS`, ``{}`` all of SSD's.
        pool_images: size of the pool (default :data:`SHAPES_POOL_IMAGES`, by quick mode).
    """
    pool_images = pool_images or SHAPES_POOL_IMAGES[_mode()]
    if augmentations is None:
        augmentations = SHORT_RUN_AUGMENTATIONS
    # Flips alone are done on the whole batch at once (see train_pipeline).
    transforms, collate_fn = train_pipeline(size, augmentations)
    pool = ImagePool.with_transforms(_rendered_pool(size, pool_images), transforms)
    # A new permutation of the pool every epoch, from the RNG the trainer seeds per epoch.
    sampler = RandomSampler(pool, num_samples=STEPS_PER_EPOCH * BATCH_SIZE)
    return make_loader(pool, BATCH_SIZE, sampler=sampler, collate_fn=collate_fn, workers=0)


@lru_cache(maxsize=2)
def _rendered_pool(size: int, length: int) -> ImagePool:
    return ImagePool(open_dataset("synthetic", "train", length=length, image_size=size))


def shapes_data(
    split: str,
    length: int,
    augment: bool = True,
    size: int = IMAGE_SIZE,
    augmentations: Mapping[str, bool] | None = None,
) -> SyntheticShapes:
    """A split of the synthetic shapes (:func:`~ssd_tutorial.data.catalog.open_dataset`) drawn
    and fed at ``size`` px (the tiny model's 128 by default), with the training transforms
    (``augmentations`` switches their steps, see
    :func:`~ssd_tutorial.data.transforms.train_transforms`) or the evaluation ones."""
    if augment:
        transforms = train_transforms(size, **(augmentations or {}))
    else:
        transforms = eval_transforms(size)
    return open_dataset("synthetic", split, transforms=transforms, length=length, image_size=size)


def shapes_model(
    steps: int | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    *,
    name: str = "ssd_tiny",
    build: Callable[[int], SSD] | None = None,
    augmentations: Mapping[str, bool] | None = None,
    seed: int = 0,
    validate: bool = True,
    pool_images: int | None = None,
    train_if_missing: bool = True,
) -> tuple[SSD, tuple[str, ...]]:
    """An SSD trained on the synthetic shapes, trained now or loaded from the cache.

    Args:
        steps: training steps of 32 images (default :data:`SHAPES_STEPS`, by quick mode).
        cache_dir: where runs are kept (default: see the module docstring).
        progress: print the loss and the validation mAP after every epoch of training.
        name: names the run's cache folder (:func:`shapes_run_dir`); give every variant its own.
        build: ``build(num_classes)`` makes the untrained network (default: the tiny SSD,
            ``build_ssd("ssd_tiny", num_classes)``); images are drawn at its input size.
        augmentations: switches of :func:`~ssd_tutorial.data.transforms.train_transforms`,
            e.g. ``{"flip": False}``; ``{}`` is all of SSD's (default:
            :data:`SHORT_RUN_AUGMENTATIONS`).
        seed: of the whole run: the initial weights, the data order and the augmentation. Runs
            that differ only in their seed show how much training alone moves the results.
        validate: score the validation images after every epoch of training (the ``eval.csv``
            of the training chapter's curves, and the mAP that ``progress`` prints); runs that
            are scored once they are done (chapter 12's variants) save that time with ``False``.
        pool_images: the training images the batches are drawn from (the first ones of the
            training split; default :data:`SHAPES_POOL_IMAGES`, by quick mode); a small pool
            is a training set that the network can overfit.
        train_if_missing: train when the cache has no finished run; with ``False`` a missing run
            is an error (the book's live detector page must show the chapters' model, which
            the chapters trained, rather than train one of its own).

    Returns:
        ``(model, class_names)``: the model in eval mode on the CPU, and
        :data:`~ssd_tutorial.data.shapes.CLASS_NAMES`.

    Raises:
        FileNotFoundError: the cache has no finished run and ``train_if_missing`` is ``False``.
    """
    steps = steps or _default_steps()
    pool_images = pool_images or SHAPES_POOL_IMAGES[_mode()]
    build = build or partial(build_ssd, "ssd_tiny")
    run = shapes_run_dir(steps, cache_dir, name, seed)
    checkpoint = run / "model.pt"
    with torch.random.fork_rng():  # the same initial weights every time, the caller's RNG intact
        torch.manual_seed(seed)
        model = build(len(CLASS_NAMES))
    if not checkpoint.is_file() and not train_if_missing:
        raise FileNotFoundError(
            f"no trained model at {checkpoint}: run the chapters first (chapter 8 trains it), "
            f"with SSD_TUTORIAL_CACHE and SSD_TUTORIAL_QUICK as they were then"
        )
    if not checkpoint.is_file():
        shutil.rmtree(run, ignore_errors=True)  # the logs of an interrupted run, if any
        recipe = shapes_recipe(steps, seed)
        _train(model, recipe, run, progress, augmentations, validate, pool_images)
    load_checkpoint(checkpoint, model)
    return model.eval(), CLASS_NAMES


def _train(
    model: SSD,
    recipe: TrainConfig,
    run: Path,
    progress: bool,
    augmentations: Mapping[str, bool] | None,
    validate: bool,
    pool_images: int,
) -> None:
    """Train ``model`` with ``recipe`` on the first ``pool_images`` training images and leave
    ``run / "model.pt"`` when done; score the validation images after every epoch if
    ``validate``."""
    size = model.config.image_size
    steps = recipe.max_steps
    trainer = Trainer(
        model,
        recipe,
        device="cpu",
        out_dir=run,
        progress=False,
        class_names=CLASS_NAMES,
    )
    train = training_loader(size, augmentations, pool_images)
    val = make_loader(shapes_data("val", 300, augment=False, size=size), 100, workers=0)

    def evaluate_and_report(model: SSD) -> dict[str, float]:
        metrics = evaluate_model(model, val, class_names=CLASS_NAMES, progress=False)
        if progress:
            loss, found = trainer.history[-1]["loss"], metrics["map"]
            print(f"step {trainer.step}/{steps}: loss {loss:.2f}, val mAP@0.5 {found:.3f}")
        return metrics

    if progress:
        # One line per epoch rather than a progress bar: a notebook cell that runs for
        # minutes would otherwise send thousands of display updates.
        print(f"training {run.name} ({steps} steps of {BATCH_SIZE} images)")
    trainer.fit(train, evaluate_and_report if validate else None)
    trainer.save_checkpoint(run / "model.pt")  # written last: its presence means a finished run


def shapes_run_dir(
    steps: int | None = None,
    cache_dir: Path | str | None = None,
    name: str = "ssd_tiny",
    seed: int = 0,
) -> Path:
    """The folder of the :func:`shapes_model` run ``name`` of ``steps`` steps (default as there)
    with ``seed``: ``model.pt`` once the run has finished, ``train.csv`` and ``eval.csv`` (see
    :class:`~ssd_tutorial.train.Trainer`)."""
    steps = steps or _default_steps()
    if cache_dir is None:
        cache_dir = os.environ.get("SSD_TUTORIAL_CACHE") or Path.home() / ".cache" / "ssd_tutorial"
    suffix = f"_seed{seed}" if seed else ""
    return Path(cache_dir) / f"{name}_shapes_{steps}_steps{suffix}"


def _default_steps() -> int:
    return SHAPES_STEPS[_mode()]


def _mode() -> str:
    return "quick" if quick_mode() else "full"
