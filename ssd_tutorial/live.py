"""The book's live detector: the tiny SSD run in the reader's browser by onnxruntime-web.

The page ``book/live_detector.md`` loads its files from one folder of the built book's static
files, ``_build/html/_static/live``, which :func:`write_assets` fills (the book's Sphinx
extension ``book/_ext/live_detector.py`` calls :func:`write_book_assets` when a build ends):

* ``network.onnx``: the network, ``images [B, 3, S, S] -> loc [B, P, 4], conf [B, P, C]``
  (:func:`~ssd_tutorial.export.export_onnx`, without post-processing);
* ``postprocess.onnx``: :func:`~ssd_tutorial.postprocess.detect` on ``loc`` and ``conf``, with
  the score and IoU thresholds as inputs (:func:`~ssd_tutorial.export.postprocess_graph`,
  ``threshold_inputs=True``). The page runs the network once per image and this graph again at
  every move of its two sliders, so that it computes no detection of its own;
* ``samples/shapes_<i>.png``: validation images of the synthetic shapes, drawn at the network's
  input size (the page feeds them unresized, as :func:`~ssd_tutorial.preprocess.preprocess`
  does);
* ``live.json``: what the script needs besides: the input size, the normalisation, the class
  names and colours, the sliders' starting thresholds, the sample images;
* ``live_detector.js``, the page's script, and onnxruntime-web's files (:data:`RUNTIME_FILES`),
  copied from the npm package that ``make book`` installs (``package.json``).

The script repeats :func:`~ssd_tutorial.preprocess.preprocess` for any photo (the resize with
its antialiasing filter, the scaling to ``[0, 1]``, the normalisation); ``tests/test_live.py``
checks in Chromium that its input tensors equal the package's and its detections the package's
on them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from matplotlib.colors import to_hex
from PIL import Image

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.data.catalog import open_dataset
from ssd_tutorial.detector import DISPLAY_THRESHOLD
from ssd_tutorial.export import export_onnx, postprocess_graph
from ssd_tutorial.model import SSD
from ssd_tutorial.postprocess import NMS_THRESHOLD
from ssd_tutorial.viz import PALETTE
from ssd_tutorial.zoo import shapes_model

#: onnxruntime-web's files that the page loads, from the npm package's ``dist`` folder: the
#: WebAssembly build of the runtime (the CPU only; no WebGPU or WebGL), its loader and its
#: Emscripten glue. The other files of ``dist`` (other builds, source maps) stay out of the book.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: Sample images the page offers: the first validation images of the synthetic shapes.
NUM_SAMPLES = 6


def write_assets(
    outdir: str | Path,
    model: SSD,
    class_names: Sequence[str],
    runtime_dir: str | Path,
    num_samples: int = NUM_SAMPLES,
) -> list[Path]:
    """Write the live detector page's files (see the module docstring) into ``outdir``.

    Args:
        outdir: the folder, created if need be; files of the same names are replaced.
        model: a trained float32 SSD (it is exported as :func:`~ssd_tutorial.export.export_onnx`
            exports it: an untrained one is refused).
        class_names: names of labels ``0..C-1``, background first.
        runtime_dir: onnxruntime-web's ``dist`` folder (``node_modules/onnxruntime-web/dist``).
        num_samples: how many sample images to draw.

    Returns:
        The paths written, ``live.json`` last.

    Raises:
        FileNotFoundError: if a file of :data:`RUNTIME_FILES` is not in ``runtime_dir``.
        ValueError: as :func:`~ssd_tutorial.export.export_onnx` raises.
    """
    runtime_dir, outdir = Path(runtime_dir), Path(outdir)
    missing = [name for name in RUNTIME_FILES if not (runtime_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"onnxruntime-web's {', '.join(missing)} not in {runtime_dir}: install the npm "
            f"package first (`npm ci` in the repository, as `make book` does)"
        )
    names = list(class_names)
    size = model.config.image_size
    (outdir / "samples").mkdir(parents=True, exist_ok=True)
    written = [export_onnx(model, outdir / "network.onnx", names)]
    graph = postprocess_graph(default_boxes(model.config), model.num_classes, threshold_inputs=True)
    written.append(outdir / "postprocess.onnx")
    written[-1].write_bytes(graph.SerializeToString())
    samples = open_dataset("synthetic", "val", length=num_samples, image_size=size)
    for index in range(num_samples):
        image, _ = samples[index]  # uint8 [3, S, S]
        written.append(outdir / "samples" / f"shapes_{index}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(written[-1])
    script = resources.files("ssd_tutorial").joinpath("live_detector.js").read_text()
    written.append(outdir / "live_detector.js")
    written[-1].write_text(script)
    for name in RUNTIME_FILES:
        written.append(Path(shutil.copyfile(runtime_dir / name, outdir / name)))
    config = {
        "imageSize": size,
        "mean": list(model.image_mean),
        "std": list(model.image_std),
        "classNames": names,
        "colors": [to_hex(color) for color in PALETTE],  # label k: colors[(k - 1) % 9]
        "scoreThreshold": DISPLAY_THRESHOLD,
        "nmsThreshold": NMS_THRESHOLD,
        "network": "network.onnx",
        "postprocess": "postprocess.onnx",
        "samples": [str(p.relative_to(outdir)) for p in written if p.suffix == ".png"],
    }
    written.append(outdir / "live.json")
    written[-1].write_text(json.dumps(config, indent=1))
    return written


def write_book_assets(outdir: str | Path, runtime_dir: str | Path) -> list[Path]:
    """:func:`write_assets` for the book's tiny SSD: the chapters' model, loaded from the
    cache where chapter 8 left it (:func:`~ssd_tutorial.zoo.shapes_model`, never trained here).

    Raises:
        FileNotFoundError: if the cache has no such model, or as :func:`write_assets` raises.
    """
    model, class_names = shapes_model(progress=False, train_if_missing=False)
    return write_assets(outdir, model, class_names, runtime_dir)
