"""Ablations: the tiny SSD trained with one thing changed, and measured the same way.

The discussion chapter tests the paper's claims by training variants of the tiny SSD with the
house recipe, each under its own name and cache folder (:func:`ssd_tutorial.zoo.shapes_model`),
and scoring them all alike: :func:`evaluate_variant` gives the mAP overall and per object size
on the validation shapes, :func:`detection_latency` the time of a forward pass plus the
post-processing. :func:`run_variant` does both steps for a named variant, :func:`run_seeds` once
per seed of :data:`SEEDS` and gives each metric's mean and standard deviation over the runs, and
:func:`compare` reads the difference of two variants against that spread. The builders make the
variants' networks: the tiny base with other default boxes, or fed another input size
(:func:`tiny_ssd`), with :func:`with_ratios` for configs that differ in their aspect ratios.
:func:`results_table` prints the results side by side.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from ssd_tutorial.anchors import SSD_TINY, AnchorConfig, default_boxes
from ssd_tutorial.backbones import TINY_STAGES, tiny_features
from ssd_tutorial.data.loading import make_loader
from ssd_tutorial.data.sizes import LARGE_AREA, SMALL_AREA
from ssd_tutorial.data.transforms import collate
from ssd_tutorial.evaluate import ap_by_size, predict, voc_map
from ssd_tutorial.model import SSD, config_for_size, count_parameters
from ssd_tutorial.postprocess import detect
from ssd_tutorial.profiling import time_ms
from ssd_tutorial.variants import SelectedSources, TopDownContext, select_maps
from ssd_tutorial.zoo import SHORT_RUN_AUGMENTATIONS, shapes_data, shapes_model

#: Object-size buckets by box area relative to the image (:mod:`ssd_tutorial.data.sizes`):
#: COCO's small and large thresholds, as fractions of the image area.
SIZE_BUCKETS: dict[str, tuple[float, float]] = {
    "small": (0.0, SMALL_AREA),
    "medium": (SMALL_AREA, LARGE_AREA),
    "large": (LARGE_AREA, 1.0),
}

#: The augmentation ablation: variant name -> switches of
#: :func:`~ssd_tutorial.data.transforms.train_transforms` (the book's flips only, all on, each
#: one off, all off).
AUGMENTATION_ABLATION: dict[str, dict[str, bool]] = {
    "flips only": dict(SHORT_RUN_AUGMENTATIONS),
    "all": {},
    "no photometric": {"photometric": False},
    "no zoom out": {"zoom_out": False},
    "no IoU crop": {"iou_crop": False},
    "no flip": {"flip": False},
    "none": {"photometric": False, "zoom_out": False, "iou_crop": False, "flip": False},
}


#: The verdicts of :func:`compare` on a claim that one variant scores higher than another.
HELD, DID_NOT_HOLD, UNDECIDED = VERDICTS = ("held", "did not hold", "undecided at this budget")

#: Table 3 of the SSD paper (Liu et al., ECCV 2016), "effects of using multiple output layers":
#: SSD300 on VOC2007 test predicting from fewer and fewer source layers, the remaining layers'
#: boxes re-tiled to keep about 8732 in all. Each row: the layers used, the mAP with the default
#: boxes that cross the image border kept and without them, and the number of boxes.
PAPER_OUTPUT_LAYERS: tuple[tuple[tuple[str, ...], float, float, int], ...] = (
    (("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"), 74.3, 63.4, 8732),
    (("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2"), 74.6, 63.1, 8764),
    (("conv4_3", "conv7", "conv8_2", "conv9_2"), 73.8, 68.4, 8942),
    (("conv4_3", "conv7", "conv8_2"), 70.7, 69.2, 9864),
    (("conv4_3", "conv7"), 64.2, 64.4, 9025),
    (("conv7",), 62.4, 64.0, 8664),
)

#: Seeds of the runs of every variant in :func:`run_seeds`: three runs give a mean and a spread.
SEEDS: tuple[int, ...] = (0, 1, 2)


def tiny_ssd(
    config: AnchorConfig = SSD_TINY,
    image_size: int | None = None,
    *,
    stages: tuple[tuple[int, ...], ...] = TINY_STAGES,
    top_down: bool = False,
    sources: Sequence[int] | None = None,
) -> Callable[[int], SSD]:
    """A ``build(num_classes)`` for :func:`~ssd_tutorial.zoo.shapes_model`: the tiny SSD with
    one part changed.

    Args:
        config: the default boxes (for the tiny base's 128 px input unless ``image_size``).
        image_size: feed the base this many pixels; ``config`` is then resized to the maps the
            base gives at that size (:func:`~ssd_tutorial.model.config_for_size`).
        stages: the base's conv widths per stage
            (:data:`~ssd_tutorial.variants.DEEPER_TINY_STAGES` for a deeper base).
        top_down: add FPN-style context to the finest source map
            (:class:`~ssd_tutorial.variants.TopDownContext`).
        sources: predict from these source maps only (0 the finest), with their own default
            boxes (:class:`~ssd_tutorial.variants.SelectedSources`,
            :func:`~ssd_tutorial.variants.select_maps`).
    """
    return partial(_build_tiny, config, image_size, stages, top_down, sources)


def _build_tiny(
    config: AnchorConfig,
    image_size: int | None,
    stages: tuple[tuple[int, ...], ...],
    top_down: bool,
    sources: Sequence[int] | None,
    num_classes: int,
) -> SSD:
    base = tiny_features(stages)
    if top_down:
        base = TopDownContext(base)
    if image_size is not None:
        config = config_for_size(base, config, image_size)
    if sources is not None:
        base, config = SelectedSources(base, sources), select_maps(config, sources)
    return SSD(base, config, num_classes)


def with_ratios(
    config: AnchorConfig, ratios: tuple[float, ...], name: str | None = None
) -> AnchorConfig:
    """``config`` with the same aspect ratios ``a >= 1`` on every map (plus the two squares).

    ``ratios=()`` leaves the squares only (2 boxes per cell), ``(2,)`` gives 4 per cell and
    ``(2, 3)`` 6, the ratio-1 squares being always there.
    """
    if config.shapes:
        raise ValueError(f"config {config.name!r} lists explicit shapes, it has no aspect ratios")
    label = ", ".join(["1", *(f"{r:g}" for r in ratios)])
    return dataclasses.replace(
        config,
        name=name or f"{{{label}}}",
        aspect_ratios=(tuple(ratios),) * len(config.feature_maps),
    )


def evaluate_variant(
    model: SSD, num_images: int, batch_size: int = 50, split: str = "val"
) -> dict[str, float]:
    """VOC2007 mAP of ``model`` on the first ``num_images`` shapes of ``split``, drawn at its
    input size, overall and per object size (:data:`SIZE_BUCKETS`).

    ``split="train"`` scores the first training images, those a run with ``pool_images``
    trained on: the gap to the validation mAP measures overfitting.

    Returns:
        ``map``, ``map_small``, ``map_medium``, ``map_large``, and ``objects_small`` etc. (the
        number of objects in each bucket).
    """
    images = shapes_data(split, num_images, augment=False, size=model.config.image_size)
    loader = make_loader(images, batch_size, workers=0)
    detections, targets = predict(model, loader, progress=False)
    num_classes = model.num_classes
    metrics = {"map": voc_map(detections, targets, num_classes=num_classes).map}
    by_size = ap_by_size(detections, targets, area_ranges=SIZE_BUCKETS, num_classes=num_classes)
    for bucket, result in by_size.items():
        metrics[f"map_{bucket}"] = result.map
        metrics[f"objects_{bucket}"] = sum(result.num_positives.values())
    return metrics


def run_variant(
    name: str,
    steps: int | None = None,
    *,
    build: Callable[[int], SSD] | None = None,
    augmentations: Mapping[str, bool] | None = None,
    num_images: int = 300,
    progress: bool = True,
    seed: int = 0,
    pool_images: int | None = None,
) -> dict[str, float]:
    """Train (or load from the cache) the variant ``name``, evaluate it and time it.

    Args:
        name, steps, build, augmentations, progress, seed: as in
            :func:`~ssd_tutorial.zoo.shapes_model` (the default augmentations are the book's
            model's, flips only; ``AUGMENTATION_ABLATION`` has the others).
        num_images: validation images for :func:`evaluate_variant`.
        pool_images: train on the first this many training images only (default: the zoo's
            pool, :data:`~ssd_tutorial.zoo.SHAPES_POOL_IMAGES`), and score those too.

    Returns:
        :func:`evaluate_variant`'s metrics, with ``boxes`` (the number of default boxes),
        ``parameters``, ``image_size`` and ``latency_ms`` (:func:`detection_latency` for one
        image, in ms); with ``pool_images``, also ``train_map`` (the mAP on the training
        images, at most ``num_images`` of them) and ``gap`` (``train_map - map``).
    """
    model, _ = shapes_model(
        steps,
        name=name,
        build=build,
        augmentations=augmentations,
        progress=progress,
        seed=seed,
        validate=False,  # scored below, once, overall and by object size
        pool_images=pool_images,
    )
    metrics = evaluate_variant(model, num_images)
    if pool_images is not None:
        seen = evaluate_variant(model, min(pool_images, num_images), split="train")["map"]
        metrics |= {"train_map": seen, "gap": seen - metrics["map"]}
    return {
        **metrics,
        "boxes": model.config.num_boxes,
        "parameters": count_parameters(model),
        "image_size": model.config.image_size,
        "latency_ms": 1000 * detection_latency(model),
    }


def run_seeds(
    name: str, steps: int | None = None, seeds: Sequence[int] = SEEDS, **options: Any
) -> dict[str, Any]:
    """:func:`run_variant` once per seed, and each metric's mean and spread over the runs.

    Args:
        name, steps: as in :func:`run_variant`.
        seeds: one training run per seed (at least two, for a spread).
        options: for :func:`run_variant` (``build``, ``augmentations``, ``num_images``, ...).

    Returns:
        For every metric of :func:`run_variant` that all runs have: its mean over the runs
        under the same key, and the sample standard deviation under ``<key>_std`` (a value
        that all runs share, such as ``boxes``, is kept as it is, with no spread); ``runs``,
        the list of the runs' own metrics.
    """
    if len(seeds) < 2:
        raise ValueError(f"a spread needs at least 2 seeds, got {list(seeds)}")
    runs = [run_variant(name, steps, seed=seed, **options) for seed in seeds]
    summary: dict[str, Any] = {"runs": runs}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run]
        if len(values) < len(runs):
            continue
        if all(value == values[0] for value in values):
            summary[key] = values[0]  # a property of the variant, such as its number of boxes
        else:
            summary[key] = statistics.fmean(values)
            summary[f"{key}_std"] = statistics.stdev(values)
    return summary


def compare(
    better: Mapping[str, Any], worse: Mapping[str, Any], key: str
) -> tuple[float, float, str]:
    """Whether variant ``better`` beats ``worse`` on metric ``key``, against the run-to-run noise.

    Both are :func:`run_seeds` summaries. The difference of the two means has a standard error
    of ``sqrt(s_a**2 / n_a + s_b**2 / n_b)`` (``s`` the standard deviation over a variant's
    ``n`` runs); a difference of more than two standard errors is called real, in the
    direction of its sign. With three runs a side that is a rough test: it tells a clear
    difference from noise, not a small one.

    Returns:
        ``(difference, standard_error, verdict)``: the verdict on the claim "``better`` scores
        higher" is one of :data:`VERDICTS`: ``"held"`` (higher by more than two standard
        errors), ``"did not hold"`` (lower by as much) or ``"undecided at this budget"``.
    """
    difference = better[key] - worse[key]
    error = math.sqrt(
        better.get(f"{key}_std", 0.0) ** 2 / len(better["runs"])
        + worse.get(f"{key}_std", 0.0) ** 2 / len(worse["runs"])
    )  # a metric equal in all runs of a variant has no spread
    if abs(difference) <= 2 * error:
        return difference, error, UNDECIDED
    return difference, error, HELD if difference > 0 else DID_NOT_HOLD


@torch.inference_mode()
def detection_latency(
    model: SSD, batch_size: int = 1, repeats: int = 20, **detect_options: float
) -> float:
    """Median seconds of one forward pass plus :func:`~ssd_tutorial.postprocess.detect`.

    Runs on validation images at the model's input size, on the model's device, in eval mode
    (the model is left in it), after two warm-up passes; the default boxes are made once
    beforehand, as a deployed detector would. The median of ``repeats`` runs resists the odd
    slow run of a busy machine.

    Args:
        model: an SSD.
        batch_size: images per forward pass.
        repeats: timed runs.
        detect_options: for :func:`~ssd_tutorial.postprocess.detect` (thresholds, top-k).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = next(model.parameters()).device
    val = shapes_data("val", batch_size, augment=False, size=model.config.image_size)
    images = collate([val[i] for i in range(batch_size)]).images.to(device)
    priors = default_boxes(model.config, device=device)
    model.eval()

    def step() -> None:
        loc, conf = model(images)
        detect(loc, conf, priors, **detect_options)

    for _ in range(2):
        step()
    return statistics.median(time_ms(step, device) for _ in range(repeats)) / 1000


def results_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """A plain-text table: one row per variant (``results`` keys), one column per metric.

    Floats are printed with 3 decimals, other values as they are; a metric with a spread
    (``<key>_std``, see :func:`run_seeds`) as ``mean ± std``; a metric a variant lacks (e.g. a
    size bucket without objects) as ``-``.
    """
    header = ["variant", *columns]
    rows = [
        [name, *(_cell(metrics.get(c), metrics.get(f"{c}_std")) for c in columns)]
        for name, metrics in results.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _cell(value: object, spread: float | None = None) -> str:
    if value is None:
        return "-"
    if spread is not None:
        return f"{value:.3f} ± {spread:.3f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
