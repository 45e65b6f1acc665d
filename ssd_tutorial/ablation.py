"""Ablations: the tiny SSD trained with one thing changed, and measured the same way.

The discussion chapter tests the paper's claims by training variants of the tiny SSD with the
house recipe, each under its own name and cache folder (:func:`ssd_tutorial.zoo.shapes_model`),
and scoring them all alike: :func:`evaluate_variant` gives the mAP overall and per object size
on the validation shapes, :func:`detection_latency` the time of a forward pass plus the
post-processing. :func:`run_variant` does both steps for a named variant. The builders make the
variants' networks: the tiny base with other default boxes, or fed another input size
(:func:`tiny_ssd`), with :func:`with_ratios` for configs that differ in their aspect ratios.
:func:`results_table` prints the results side by side.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch.utils.data import DataLoader

from ssd_tutorial.anchors import SSD_TINY, AnchorConfig, default_boxes
from ssd_tutorial.backbones import tiny_features
from ssd_tutorial.data.sizes import LARGE_AREA, SMALL_AREA
from ssd_tutorial.data.transforms import collate
from ssd_tutorial.evaluate import ap_by_size, predict, voc_map
from ssd_tutorial.model import SSD, config_for_size
from ssd_tutorial.postprocess import detect
from ssd_tutorial.profiling import time_ms
from ssd_tutorial.zoo import shapes_data, shapes_model

#: Object-size buckets by box area relative to the image (:mod:`ssd_tutorial.data.sizes`):
#: COCO's small and large thresholds, as fractions of the image area.
SIZE_BUCKETS: dict[str, tuple[float, float]] = {
    "small": (0.0, SMALL_AREA),
    "medium": (SMALL_AREA, LARGE_AREA),
    "large": (LARGE_AREA, 1.0),
}

#: The augmentation ablation: variant name -> switches of
#: :func:`~ssd_tutorial.data.transforms.train_transforms` (all on, each one off, all off).
AUGMENTATION_ABLATION: dict[str, dict[str, bool]] = {
    "all": {},
    "no photometric": {"photometric": False},
    "no zoom out": {"zoom_out": False},
    "no IoU crop": {"iou_crop": False},
    "no flip": {"flip": False},
    "none": {"photometric": False, "zoom_out": False, "iou_crop": False, "flip": False},
}


def tiny_ssd(
    config: AnchorConfig = SSD_TINY, image_size: int | None = None, seed: int | None = None
) -> Callable[[int], SSD]:
    """A ``build(num_classes)`` for :func:`~ssd_tutorial.zoo.shapes_model`: the tiny base with
    other default boxes, another input size, or other initial weights.

    Args:
        config: the default boxes (for the tiny base's 128 px input unless ``image_size``).
        image_size: feed the base this many pixels; ``config`` is then resized to the maps the
            base gives at that size (:func:`~ssd_tutorial.model.config_for_size`).
        seed: draw the initial weights from this seed instead of the zoo's (a second run of the
            same variant, to see how much results vary from run to run).
    """
    return partial(_build_tiny, config, image_size, seed)


def _build_tiny(
    config: AnchorConfig, image_size: int | None, seed: int | None, num_classes: int
) -> SSD:
    if seed is not None:
        torch.manual_seed(seed)
    base = tiny_features()
    if image_size is not None:
        config = config_for_size(base, config, image_size)
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


def evaluate_variant(model: SSD, num_images: int, batch_size: int = 50) -> dict[str, float]:
    """VOC2007 mAP of ``model`` on the first ``num_images`` validation shapes, drawn at its
    input size, overall and per object size (:data:`SIZE_BUCKETS`).

    Returns:
        ``map``, ``map_small``, ``map_medium``, ``map_large``, and ``objects_small`` etc. (the
        number of objects in each bucket).
    """
    val = shapes_data("val", num_images, augment=False, size=model.config.image_size)
    loader = DataLoader(val, batch_size=batch_size, collate_fn=collate)
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
    augmentations: Mapping[str, bool] = AUGMENTATION_ABLATION["all"],
    num_images: int = 300,
    progress: bool = True,
) -> dict[str, float]:
    """Train (or load from the cache) the variant ``name``, evaluate it and time it.

    Args:
        name, steps, build, progress: as in :func:`~ssd_tutorial.zoo.shapes_model`.
        augmentations: as there, but all of SSD's by default (``AUGMENTATION_ABLATION["all"]``),
            so that every variant is measured against SSD's own pipeline.
        num_images: validation images for :func:`evaluate_variant`.

    Returns:
        :func:`evaluate_variant`'s metrics, with ``boxes`` (the number of default boxes),
        ``image_size`` and ``latency_ms`` (:func:`detection_latency` for one image, in ms).
    """
    model, _ = shapes_model(
        steps, name=name, build=build, augmentations=augmentations, progress=progress
    )
    return {
        **evaluate_variant(model, num_images),
        "boxes": model.config.num_boxes,
        "image_size": model.config.image_size,
        "latency_ms": 1000 * detection_latency(model),
    }


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

    Floats are printed with 3 decimals, other values as they are; a metric a variant lacks
    (e.g. a size bucket without objects) shows as ``-``.
    """
    header = ["variant", *columns]
    rows = [[name, *(_cell(metrics.get(c)) for c in columns)] for name, metrics in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
