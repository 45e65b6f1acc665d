"""ssd_tutorial: the Single-Shot MultiBox Detector, built step by step.

Modules, in the order the book teaches them:

* :mod:`ssd_tutorial.boxes`: box formats, IoU, offset encoding.
* :mod:`ssd_tutorial.anchors`: default boxes and their configurations.
* :mod:`ssd_tutorial.layers`: L2Norm.
* :mod:`ssd_tutorial.backbones`: the VGG16-atrous base, the extra layers, MobileNetV3.
* :mod:`ssd_tutorial.model`: SSD, ``build_ssd``, conversion to and from torchvision.
* :mod:`ssd_tutorial.preprocess`: resizing and normalising images for the network.
* :mod:`ssd_tutorial.matching`: batched two-step matching of ground truth to default boxes.
* :mod:`ssd_tutorial.loss`: the MultiBox loss with hard negative mining.
* :mod:`ssd_tutorial.data`: synthetic shapes, VOC and COCO readers, SSD augmentation, collate.
* :mod:`ssd_tutorial.train`: the training loop, schedules, checkpoints.
* :mod:`ssd_tutorial.evaluate`: Pascal VOC mAP, COCO metrics, AP by object size.
* :mod:`ssd_tutorial.postprocess`, :mod:`ssd_tutorial.detector`: from outputs to detections.
* :mod:`ssd_tutorial.distributed`: training on several GPUs with ``torchrun``.
* :mod:`ssd_tutorial.export`: ONNX export and running the exported model.
* :mod:`ssd_tutorial.zoo`: small models trained on the spot for the book.
* :mod:`ssd_tutorial.profiling`, :mod:`ssd_tutorial.ablation`,
  :mod:`ssd_tutorial.anchor_clustering`: the discussion chapters' measurements.
* :mod:`ssd_tutorial.explorer`: the interactive explorers (anchors, matching, mining, NMS, AP).
"""

import os

__version__ = "0.1.0"


def quick_mode() -> bool:
    """True when ``SSD_TUTORIAL_QUICK`` asks for small, CPU-friendly sizes (the book build)."""
    return os.environ.get("SSD_TUTORIAL_QUICK", "0") not in ("", "0", "false", "False")
