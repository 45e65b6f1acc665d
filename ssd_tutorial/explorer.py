"""Explorers: interactive pictures of SSD's mechanisms that need no kernel.

Each explorer is one HTML output: an inline script and its data as JSON, so it runs wherever
HTML outputs run scripts (Jupyter, Colab's output frame, the static book opened from disk) with
no kernel and no network. This module prepares the data; the scripts draw it and recompute only
what a control changes:

* ``anchors`` (chapter 3, :func:`anchor_explorer`): a configuration's default boxes over a photo;
* ``matching`` (chapter 5, :func:`matching_explorer`): the IoU of every default box with a box
  you draw, the forced best default box and the positives at a threshold;
* ``mining`` (chapter 6, :func:`mining_explorer`): the negatives of one image ranked by a
  model's background loss, the ones that ``neg_pos_ratio`` mines, and the two loss terms;
* ``nms`` (chapter 9, :func:`nms_explorer`): per-class non-maximum suppression, step by step;
* ``ap`` (chapter 10, :func:`ap_explorer`): the precision-recall curve of ranked detections,
  detection by detection, and its 11-point AP.

``explorer_common.js`` holds what they share (default-box geometry, IoU, drawing); each has its
own ``<name>_explorer.js``. The scripts repeat the package's arithmetic in the same order, so
their numbers equal the package's (the browser tests check it). The module prepares the data of
all five explorers, a few functions each, so it is longer than the package's others.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ssd_tutorial import anchors
from ssd_tutorial.boxes import IOU_THRESHOLD, decode
from ssd_tutorial.loss import NEG_POS_RATIO, SMOOTH_L1_BETA
from ssd_tutorial.matching import match_objects
from ssd_tutorial.model import eval_mode
from ssd_tutorial.photos import LabelledPhoto, chelsea
from ssd_tutorial.postprocess import CANDIDATES_PER_CLASS, CONF_THRESHOLD, NMS_THRESHOLD, TOP_K
from ssd_tutorial.preprocess import denormalize

#: The script of each explorer, after the shared ``explorer_common.js``.
SCRIPTS = {
    "anchors": "anchor_explorer.js",
    "matching": "matching_explorer.js",
    "mining": "mining_explorer.js",
    "nms": "nms_explorer.js",
    "ap": "ap_explorer.js",
}

_STYLE = """
.ssd-explorer { font: 13px/1.4 sans-serif; margin: 0.5em 0; }
.ssd-explorer-controls { display: flex; flex-wrap: wrap; gap: 0.3em 1em; margin-bottom: 0.5em; }
.ssd-explorer-control { display: inline-flex; align-items: center; gap: 0.3em; }
.ssd-explorer-control input[type=range] { width: 7em; }
.ssd-explorer-body { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.ssd-explorer-canvas { border: 1px solid #999; cursor: crosshair; background: #eee; }
.ssd-explorer .ssd-grid { stroke: rgba(255, 255, 255, 0.45); stroke-width: 0.6; }
.ssd-explorer .ssd-cell { fill: rgba(255, 255, 0, 0.35); stroke: #ff0; stroke-width: 1; }
.ssd-explorer .ssd-truth { fill: none; stroke: #fff; stroke-width: 2.5; stroke-dasharray: 6 3; }
.ssd-explorer .ssd-selected { fill: none; stroke: #ff0; stroke-width: 2.5; }
.ssd-explorer .ssd-matched { fill: none; stroke: #00e676; stroke-width: 1; opacity: 0.7; }
.ssd-explorer .ssd-positive { fill: none; stroke: #00e676; stroke-width: 1.5; }
.ssd-explorer .ssd-forced { fill: none; stroke: #ff1744; stroke-width: 2.5; }
.ssd-explorer .ssd-heat { fill: #ff1744; stroke: none; }
.ssd-explorer .ssd-mined { fill: none; stroke: #ff1744; stroke-width: 1.2; }
.ssd-explorer .ssd-candidate { fill: none; stroke: rgba(255, 255, 255, 0.6); stroke-width: 0.8; }
.ssd-explorer .ssd-kept { fill: none; stroke: #00e676; stroke-width: 2.2; }
.ssd-explorer .ssd-best { fill: none; stroke: #ffea00; stroke-width: 3; }
.ssd-explorer .ssd-suppressed { fill: none; stroke: #ff1744; stroke-width: 1.5;
  stroke-dasharray: 4 2; }
.ssd-explorer .ssd-label { font: 11px sans-serif; fill: #fff; paint-order: stroke; stroke: #000;
  stroke-width: 2.5px; }
.ssd-explorer .default-box { fill: none; stroke-width: 2.2; }
.ssd-explorer .ssd-plot { background: #fff; border: 1px solid #999; }
.ssd-explorer .ssd-axis { stroke: #333; stroke-width: 1; }
.ssd-explorer .ssd-axis-label { font: 11px sans-serif; fill: #333; }
.ssd-explorer .ssd-counts { border-collapse: collapse; margin-top: 0.5em; }
.ssd-explorer .ssd-counts td, .ssd-explorer .ssd-counts th { padding: 1px 8px; text-align: right; }
.ssd-explorer .ssd-current { background: rgba(255, 235, 59, 0.35); }
.ssd-explorer .ssd-total { font-weight: bold; border-top: 1px solid #999; }
.ssd-explorer .ssd-status { color: #333; margin-bottom: 0.4em; }
.ssd-explorer .ssd-readout { min-width: 2.5em; font-variant-numeric: tabular-nums; }
.ssd-explorer-side { max-height: 440px; overflow-y: auto; }
"""


def explorer_html(data: dict) -> str:
    """Self-contained HTML for one explorer's data (any ``*_data`` function's output)."""
    if data.get("explorer") not in SCRIPTS:
        raise ValueError(
            f"data['explorer'] must be one of {sorted(SCRIPTS)}, got {data.get('explorer')!r}"
        )
    element_id = f"ssd-explorer-{uuid.uuid4().hex[:8]}"
    package = resources.files("ssd_tutorial")
    scripts = [
        package.joinpath(name).read_text()
        for name in ("explorer_common.js", SCRIPTS[data["explorer"]])
    ]
    # "</" must not end the script element early when it appears inside the JSON.
    payload = json.dumps(data).replace("</", "<\\/")
    return (
        f"<style>{_STYLE}</style>\n"
        f'<div id="{element_id}"></div>\n'
        "<script>\n" + "\n".join(scripts) + "\n"
        f'window.ssdExplorer.render(document.getElementById("{element_id}"), {payload});\n'
        "</script>"
    )


def standalone_page(data: dict, title: str = "SSD explorer") -> str:
    """A whole HTML document holding one explorer, to open from disk in a browser."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body>\n{explorer_html(data)}\n</body></html>\n"
    )


def show(data: dict):
    """One explorer as an ``IPython.display.HTML`` object, to display in a notebook cell."""
    from IPython.display import HTML

    return HTML(explorer_html(data))


def _displayed(make_data: Callable[..., dict], name: str) -> Callable:
    """``make_data``'s explorer, ready to display: same arguments, an ``HTML`` object back."""

    @functools.wraps(make_data)
    def explorer(*args: Any, **kwargs: Any):
        return show(make_data(*args, **kwargs))

    explorer.__name__ = explorer.__qualname__ = name
    explorer.__doc__ = f"The explorer of :func:`{make_data.__name__}`, ready to display."
    return explorer


# --- anchors (chapter 3) --------------------------------------------------------------------


def anchor_data(
    configs: Mapping[str, anchors.AnchorConfig] | None = None,
    photo: LabelledPhoto | None = None,
    initial: str | None = None,
    view: int = 420,
) -> dict:
    """The data of the anchor explorer: configs, the photo and its ground truth.

    The photo is resized to a square, as SSD's input is, and its boxes are made relative. Each
    feature map is named after the layer it comes from (:func:`source_names`) when a network
    of :data:`ssd_tutorial.model.ARCHITECTURES` has the config's feature maps.
    """
    configs = dict(anchors.CONFIGS) if configs is None else dict(configs)
    if not configs:
        raise ValueError("the explorer needs at least one anchor config")
    photo = chelsea() if photo is None else photo
    initial = next(iter(configs)) if initial is None else initial
    if initial not in configs:
        raise ValueError(f"initial config {initial!r} is not one of {sorted(configs)}")
    height, width = photo.size
    return {
        "explorer": "anchors",
        "configs": {name: config_json(config) for name, config in configs.items()},
        "initial": initial,
        "image": _jpeg_data_uri(photo.image, view),
        "ground_truth": _objects_json(photo.boxes / torch.tensor([width, height] * 2), photo.names),
        "view": view,
    }


anchor_explorer = _displayed(anchor_data, "anchor_explorer")


def config_json(config: anchors.AnchorConfig) -> dict:
    """A config as the explorers' scripts read it: one entry per map, explicit shapes kept."""
    names = _known_source_names().get(config.feature_maps, ())
    maps = []
    for k, m in enumerate(config.maps):
        entry = {
            "size": m.size,
            "step": m.step,
            "min_size": m.min_size,
            "max_size": m.max_size,
            "ratios": list(m.aspect_ratios),
            "source": names[k] if names else f"map {k}",
        }
        if m.shapes:
            entry["shapes"] = [list(wh) for wh in m.shapes]
        maps.append(entry)
    return {"image_size": config.image_size, "clip": config.clip, "maps": maps}


def source_names(base: nn.Module, image_size: int) -> tuple[str, ...]:
    """The layer each source map of an SSD base comes from, e.g. ``("conv4_3", "fc7", ...)``.

    Runs ``base`` once on a blank image of ``image_size`` pixels and names each source after
    the last convolution that ran before it appeared (``conv4_3`` for the source behind
    conv4_3's L2Norm; inside torchvision's MobileNet, whose layers are numbered, the block:
    ``features.13``).
    """
    log: list[tuple[str, nn.Module, Any]] = []
    hooks = [
        module.register_forward_hook(lambda m, _, out, name=name: log.append((name, m, out)))
        for name, module in base.named_modules()
        if name
    ]
    device = next(base.parameters()).device
    try:
        with eval_mode(base), torch.no_grad():
            sources = base(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    names = []
    for source in sources:
        appears = next(k for k, (_, _, out) in enumerate(log) if out is source)
        conv = next(n for n, m, _ in reversed(log[: appears + 1]) if isinstance(m, nn.Conv2d))
        names.append(_layer_name(conv))
    return tuple(names)


def _layer_name(path: str) -> str:
    """A short name for a module path: its last part (``conv8_2``), or where that is a number,
    the parts below the top down to the first numbered one (``features.13``, ``extra1``)."""
    parts = path.split(".")
    if not parts[-1].isdigit():
        return parts[-1]
    below_top = parts[1:]
    numbered = next(k for k, part in enumerate(below_top) if any(c.isdigit() for c in part))
    return ".".join(below_top[: numbered + 1])


@functools.cache
def _known_source_names() -> dict[tuple[int, ...], tuple[str, ...]]:
    """Feature map sizes -> source names, for the networks :func:`build_ssd` knows."""
    from ssd_tutorial.model import ARCHITECTURES

    known: dict[tuple[int, ...], tuple[str, ...]] = {}
    for architecture in ARCHITECTURES.values():
        config = architecture.anchors
        if config.feature_maps not in known:
            with torch.device("meta"):  # shapes only: no weights are made, nothing is computed
                known[config.feature_maps] = source_names(
                    architecture.make_base(), config.image_size
                )
    return known


# --- matching (chapter 5) -------------------------------------------------------------------


def matching_data(
    config: anchors.AnchorConfig,
    image: Tensor | np.ndarray,
    boxes: Tensor,
    names: Sequence[str],
    view: int = 420,
) -> dict:
    """The data of the matching explorer: default boxes, an image and its objects.

    Args:
        config: the default boxes to match against.
        image: the picture (see :func:`_image_array`).
        boxes (Tensor[N, 4]): its objects, corner form, relative.
        names: one name per object, for the object picker.
    """
    return {
        "explorer": "matching",
        "config": config_json(config),
        "image": _jpeg_data_uri(_image_array(image), view),
        "ground_truth": _objects_json(boxes, names),
        "threshold": IOU_THRESHOLD,
        "view": view,
    }


matching_explorer = _displayed(matching_data, "matching_explorer")


# --- hard negative mining (chapter 6) -------------------------------------------------------


def mining_data(
    model: nn.Module,
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    view: int = 360,
) -> dict:
    """The data of the mining explorer: one image's per-default-box losses under ``model``.

    Args:
        model: an SSD (``config``, ``image_mean``, ``image_std``); run in eval mode.
        image (Tensor[3, S, S]): the network input (:func:`~ssd_tutorial.data.eval_transforms`).
        boxes (Tensor[N, 4]), labels (Tensor[N]): the image's objects, relative corner form.

    Returns:
        dict: besides the picture, per default box (``P`` entries): ``background_loss``
        (``-log softmax(conf)_0``), ``label`` (matched class, 0 for a negative) and
        ``class_loss`` (the cross-entropy against that label); per positive, in default-box
        order, ``loc_loss`` (Smooth L1 summed over the four offsets).
    """
    priors = anchors.default_boxes(model.config)
    loc, conf = _predict(model, image)
    matches = match_objects([boxes], [labels], priors, num_classes=conf.shape[-1])
    label = matches.prior_labels()[0]
    log_prob = F.log_softmax(conf, dim=-1)
    _, prior, offsets = matches.positive_offsets(priors)
    loc_loss = F.smooth_l1_loss(loc[prior], offsets, reduction="none", beta=SMOOTH_L1_BETA)
    return {
        "explorer": "mining",
        "config": config_json(model.config),
        "image": _jpeg_data_uri(_network_input_to_pixels(model, image), view),
        "ground_truth": _objects_json(boxes, [class_names[k] for k in labels.tolist()]),
        "background_loss": (-log_prob[:, 0]).tolist(),
        "label": label.tolist(),
        "class_loss": (-log_prob.gather(1, label[:, None])[:, 0]).tolist(),
        "loc_loss": loc_loss.sum(dim=1).tolist(),
        "neg_pos_ratio": NEG_POS_RATIO,
        "view": view,
    }


mining_explorer = _displayed(mining_data, "mining_explorer")


# --- NMS (chapter 9) ------------------------------------------------------------------------


def nms_data(
    model: nn.Module,
    image: Tensor,
    class_names: Sequence[str],
    boxes: Tensor | None = None,
    labels: Tensor | None = None,
    candidates_per_class: int = CANDIDATES_PER_CLASS,
    min_score: float = CONF_THRESHOLD,
    view: int = 360,
) -> dict:
    """The data of the NMS stepper: a model's candidate boxes on one image, class by class.

    The candidates are what :func:`~ssd_tutorial.postprocess.detect` puts into NMS at its
    lowest confidence threshold ``min_score``: per class, the ``candidates_per_class`` best
    decoded boxes (clamped to the image) scoring above it, best first, equal scores in
    default-box order. A higher threshold keeps a prefix of that list. The stepper opens on the
    class of the highest score.

    Args:
        image (Tensor[3, S, S]): the network input.
        boxes (Tensor[N, 4]), labels (Tensor[N]): optional ground truth to draw.
    """
    priors = anchors.default_boxes(model.config)
    loc, conf = _predict(model, image)
    decoded = decode(loc, priors).clamp(0, 1)
    scores = F.softmax(conf, dim=-1)
    candidates = {}
    for c in range(1, conf.shape[-1]):
        above = (scores[:, c] > min_score).nonzero()[:, 0]
        order = scores[above, c].argsort(descending=True, stable=True)[:candidates_per_class]
        best = above[order]
        candidates[c] = {"box": decoded[best].tolist(), "score": scores[best, c].tolist()}
    truth = [] if boxes is None else _objects_json(boxes, [class_names[k] for k in labels.tolist()])
    # open on the class the model is surest of somewhere in the image
    initial_class = max(candidates, key=lambda c: max(candidates[c]["score"], default=0.0))
    return {
        "explorer": "nms",
        "image": _jpeg_data_uri(_network_input_to_pixels(model, image), view),
        "class_names": list(class_names),
        "candidates": candidates,
        "initial_class": initial_class,
        "ground_truth": truth,
        "min_score": min_score,
        "conf_threshold": CONF_THRESHOLD,
        "nms_threshold": NMS_THRESHOLD,
        "top_k": TOP_K,
        "view": view,
    }


nms_explorer = _displayed(nms_data, "nms_explorer")


# --- AP (chapter 10) ------------------------------------------------------------------------


def ap_data(
    detections: Sequence[Any],
    targets: Sequence[Mapping[str, Tensor]],
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    view: int = 240,
) -> dict:
    """The data of the AP builder: detections and ground truth of a few images, and the images.

    Args:
        detections: per image, ``boxes[N, 4]`` (relative corner form), ``scores[N]``,
            ``labels[N]`` (:class:`~ssd_tutorial.postprocess.Detections`).
        targets: per image, ``boxes[M, 4]``, ``labels[M]`` and optionally ``difficult[M]``.
        images: per image, the picture as ``uint8 [H, W, 3]`` (see :func:`_image_array`).
    """
    if not len(detections) == len(targets) == len(images):
        raise ValueError(
            f"one entry per image is needed in each list, got {len(detections)} detections, "
            f"{len(targets)} targets and {len(images)} images"
        )

    def field(entry: Any, name: str) -> Any:
        return entry[name] if isinstance(entry, Mapping) else getattr(entry, name)

    dets, gts = [], []
    for i, (d, t) in enumerate(zip(detections, targets)):
        dets += [
            {"image": i, "box": b, "score": s, "label": c}
            for b, s, c in zip(
                *(torch.as_tensor(field(d, k)).tolist() for k in ("boxes", "scores", "labels"))
            )
        ]
        difficult = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))
        gts += [
            {"image": i, "box": b, "label": c, "difficult": bool(f)}
            for b, c, f in zip(
                torch.as_tensor(t["boxes"]).tolist(),
                torch.as_tensor(t["labels"]).tolist(),
                difficult,
            )
        ]
    return {
        "explorer": "ap",
        "class_names": list(class_names),
        "images": [_jpeg_data_uri(_image_array(image), view) for image in images],
        "detections": dets,
        "ground_truth": gts,
        "iou_threshold": IOU_THRESHOLD,
        "view": view,
    }


ap_explorer = _displayed(ap_data, "ap_explorer")


# --- helpers ----------------------------------------------------------------------------------


def _predict(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor]:
    """``model``'s float32 ``loc [P, 4]`` and ``conf [P, C]`` for one input ``[3, S, S]``."""
    with eval_mode(model), torch.no_grad():
        loc, conf = model(image[None])
    return loc[0].float(), conf[0].float()


def _network_input_to_pixels(model: nn.Module, image: Tensor) -> np.ndarray:
    """A normalised network input ``[3, S, S]`` back to ``uint8 [S, S, 3]`` pixels."""
    return _image_array(denormalize(image.cpu(), model.image_mean, model.image_std))


def _image_array(image: Tensor | np.ndarray) -> np.ndarray:
    """A picture as ``uint8 [H, W, 3]``, from that or from a ``[3, H, W]`` tensor (``uint8``, or
    float in ``[0, 1]``)."""
    if isinstance(image, np.ndarray):
        return image
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).numpy()


def _objects_json(boxes: Tensor, names: Sequence[str]) -> list[dict]:
    """Objects as the scripts read them: ``{"name", "box"}``, boxes relative corner form."""
    return [
        {"name": n, "box": b}
        for b, n in zip(torch.as_tensor(boxes, dtype=torch.float64).tolist(), names)
    ]


def _jpeg_data_uri(image: np.ndarray, side: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.BILINEAR).save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
