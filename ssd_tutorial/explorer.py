"""The anchor explorer: an interactive picture of SSD's default boxes.

Pick a configuration, a feature map and a cell, change the scale and the aspect ratios, and see
the default boxes over an image, how many there are per map, and which of them overlap a
ground-truth box by more than a chosen IoU.

The explorer is one HTML output with an inline script (``explorer.js``) and its data as JSON,
so it runs wherever HTML outputs run scripts: Jupyter, Colab, and the static book opened from
disk without a kernel or a network. The drawing logic lives only in ``explorer.js``; this module
prepares the data.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from importlib import resources

import numpy as np
from PIL import Image

from ssd_tutorial import anchors
from ssd_tutorial.photos import LabelledPhoto, chelsea

#: Names of the prediction sources of the named configs, for the map selector.
SOURCES = {
    6: ("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
    7: ("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2", "conv12_2"),
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
.ssd-explorer .ssd-matched { fill: none; stroke: #00e676; stroke-width: 1; opacity: 0.7; }
.ssd-explorer .default-box { fill: none; stroke-width: 2.2; }
.ssd-explorer .ssd-counts { border-collapse: collapse; margin-top: 0.5em; }
.ssd-explorer .ssd-counts td, .ssd-explorer .ssd-counts th { padding: 1px 8px; text-align: right; }
.ssd-explorer .ssd-current { background: rgba(255, 235, 59, 0.35); }
.ssd-explorer .ssd-total { font-weight: bold; border-top: 1px solid #999; }
.ssd-explorer .ssd-status { color: #555; margin-bottom: 0.4em; max-width: 22em; }
"""


def explorer_data(
    configs: dict[str, anchors.AnchorConfig] | None = None,
    photo: LabelledPhoto | None = None,
    initial: str | None = None,
    view: int = 420,
) -> dict:
    """The JSON-ready data the explorer draws: configs, the photo and its ground truth.

    The photo is resized to a square, as SSD's input is, and its boxes are made relative.
    """
    configs = dict(anchors.CONFIGS) if configs is None else configs
    if not configs:
        raise ValueError("the explorer needs at least one anchor config")
    photo = chelsea() if photo is None else photo
    initial = next(iter(configs)) if initial is None else initial
    if initial not in configs:
        raise ValueError(f"initial config {initial!r} is not one of {sorted(configs)}")
    height, width = photo.size
    scale = np.array([width, height, width, height], dtype=np.float64)
    truth = [
        {"name": name, "box": (np.asarray(box, dtype=np.float64) / scale).round(5).tolist()}
        for box, name in zip(photo.boxes.tolist(), photo.names)
    ]
    return {
        "configs": {name: _config_json(config) for name, config in configs.items()},
        "initial": initial,
        "image": _jpeg_data_uri(photo.image, view),
        "ground_truth": truth,
        "view": view,
    }


def anchor_explorer(
    configs: dict[str, anchors.AnchorConfig] | None = None,
    photo: LabelledPhoto | None = None,
    initial: str | None = None,
    view: int = 420,
):
    """The explorer as an ``IPython.display.HTML`` object: display it in a notebook cell."""
    from IPython.display import HTML

    return HTML(explorer_html(explorer_data(configs, photo, initial, view)))


def explorer_html(data: dict) -> str:
    """Self-contained HTML for :func:`explorer_data`'s output: markup, style, script, data."""
    element_id = f"ssd-explorer-{uuid.uuid4().hex[:8]}"
    script = resources.files("ssd_tutorial").joinpath("explorer.js").read_text()
    # "</" must not end the script element early when it appears inside the JSON.
    payload = json.dumps(data).replace("</", "<\\/")
    return (
        f"<style>{_STYLE}</style>\n"
        f'<div id="{element_id}"></div>\n'
        f"<script>\n{script}\n"
        f'window.ssdAnchorExplorer.render(document.getElementById("{element_id}"), {payload});\n'
        "</script>"
    )


def _config_json(config: anchors.AnchorConfig) -> dict:
    names = SOURCES.get(len(config.feature_maps), ())
    maps = []
    for k, (size, step, lo, hi, ratios) in enumerate(
        zip(
            config.feature_maps,
            config.steps,
            config.min_sizes,
            config.max_sizes,
            config.aspect_ratios,
        )
    ):
        source = names[k] if k < len(names) else f"map {k}"
        maps.append(
            {
                "size": size,
                "step": step,
                "min_size": lo,
                "max_size": hi,
                "ratios": list(ratios),
                "source": source,
            }
        )
    return {"image_size": config.image_size, "clip": config.clip, "maps": maps}


def _jpeg_data_uri(image: np.ndarray, side: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.BILINEAR).save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
