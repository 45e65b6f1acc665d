"""ssd_tutorial: the Single-Shot MultiBox Detector, built step by step.

Modules, in the order the book teaches them:

* :mod:`ssd_tutorial.boxes`: box formats, IoU, offset encoding.
* :mod:`ssd_tutorial.anchors`: default boxes and their configurations.
"""

import os

__version__ = "0.1.0"


def quick_mode() -> bool:
    """True when ``SSD_TUTORIAL_QUICK`` asks for small, CPU-friendly sizes (the book build)."""
    return os.environ.get("SSD_TUTORIAL_QUICK", "0") not in ("", "0", "false", "False")
