"""Sphinx extension of the book: the files of the live detector page, written as a build ends.

``book/live_detector.md`` loads its model, runtime and images from ``_static/live/`` of the
built book. When an HTML build has finished, :func:`write_live_files` writes them there with
:func:`ssd_tutorial.live.write_book_assets`: the chapters' trained tiny SSD (from the cache the
chapters filled; a missing model fails the build) and onnxruntime-web's files from the npm
package that ``make book`` installs (``npm ci``, pinned in ``package.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Where ``npm ci`` in the repository puts onnxruntime-web's files.
RUNTIME_DIR = ROOT / "node_modules" / "onnxruntime-web" / "dist"


def setup(app: Any) -> dict[str, bool]:
    app.connect("build-finished", write_live_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def write_live_files(app: Any, exception: Exception | None) -> None:
    """Write the page's files into ``_static/live`` of an HTML build that succeeded."""
    if exception is not None or app.builder.format != "html":
        return
    from ssd_tutorial.live import write_book_assets

    outdir = Path(app.outdir) / "_static" / "live"
    written = write_book_assets(outdir, RUNTIME_DIR)
    size = sum(path.stat().st_size for path in written) / 2**20
    print(f"live detector: {len(written)} files, {size:.1f} MiB, in {outdir}")
