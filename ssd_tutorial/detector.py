"""Running an SSD on people's images: any size, any common form, boxes in the image's pixels.

:class:`Detector` wraps a trained :class:`ssd_tutorial.model.SSD` with everything around the
network: reading image files, converting PIL images, numpy arrays and tensors, resizing and
normalising (:func:`ssd_tutorial.preprocess.preprocess`), running the network in inference mode
on its device, post-processing (:func:`ssd_tutorial.postprocess.detect`) and scaling the boxes
back to the pixels of each original image::

    detector = Detector(model, VOC_CLASSES)
    result = detector("street.jpg")
    for d in result.to_dicts():
        print(d["name"], d["score"], d["box"])

The same works with a model exported to ONNX (:mod:`ssd_tutorial.export`), run by onnxruntime:
``Detector.from_onnx("ssd.onnx")``, with or without post-processing in the file's graph.

The network sees a square ``S x S`` resize of the image, so an image of ``W x H`` pixels has its
relative boxes scaled by ``W`` horizontally and ``H`` vertically.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor, nn

from ssd_tutorial.anchors import default_boxes
from ssd_tutorial.checks import class_names_with_background
from ssd_tutorial.data.files import read_image
from ssd_tutorial.model import eval_mode
from ssd_tutorial.postprocess import NMS_THRESHOLD, TOP_K, Detections, check_options, detect
from ssd_tutorial.preprocess import preprocess

if TYPE_CHECKING:
    from ssd_tutorial.export import OnnxSSD, Postprocessing

#: What :class:`Detector` accepts as one image: a file path, a PIL image, a numpy array
#: ``[H, W, 3]`` or a tensor ``[3, H, W]``, ``uint8`` in ``[0, 255]`` or floating in ``[0, 1]``.
ImageLike = str | Path | PIL.Image.Image | np.ndarray | Tensor

#: Default score threshold of :class:`Detector`: high enough for a readable picture. Evaluation
#: uses :func:`ssd_tutorial.postprocess.detect`'s 0.01 instead, since mAP needs the low scores.
DISPLAY_THRESHOLD = 0.3


@dataclass(frozen=True)
class DetectionResult:
    """The detections of one image, highest score first, in the pixels of the original image.

    Attributes:
        boxes (Tensor[N, 4]): float32, corner form ``(x1, y1, x2, y2)`` in pixels, on the CPU.
        scores (Tensor[N]): class probabilities.
        labels (Tensor[N]): ``int64`` classes in ``1..C-1``.
        names: the class name of each detection.
        image_size: ``(height, width)`` of the original image in pixels.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]
    image_size: tuple[int, int]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per detection: ``name``, ``label``, ``score`` and ``box``.

        ``box`` is ``[x1, y1, x2, y2]`` in pixels; all values are plain Python numbers.
        """
        return [
            {"name": name, "label": label, "score": score, "box": box}
            for name, label, score, box in zip(
                self.names, self.labels.tolist(), self.scores.tolist(), self.boxes.tolist()
            )
        ]


class Detector:
    """An SSD ready for images of any size (see the module docstring).

    Args:
        model: an SSD whose ``forward`` gives ``(loc, conf)``, with ``config`` (its default
            boxes and input size), ``image_mean``, ``image_std`` and ``num_classes``; or a
            network run elsewhere, a callable with the same attributes and a ``device`` (where
            its outputs are), such as :class:`ssd_tutorial.export.OnnxSSD` (see
            :meth:`from_onnx`). An ``OnnxSSD`` whose graph includes post-processing gives the
            detections itself; this detector then keeps those above ``conf_threshold``.
        class_names: the names of labels ``0..C-1`` (background first, as datasets'
            ``class_names``) or of labels ``1..C-1`` only (as ``VOC_CLASSES``).
        device: where to run; the model is moved there. Default: where the model is. An
            ``OnnxSSD`` stays where its onnxruntime providers put it: ``device`` must be
            ``None`` (or its ``device``, the CPU).
        conf_threshold: minimum score of a detection (default :data:`DISPLAY_THRESHOLD`).
        nms_threshold, top_k: as in :func:`ssd_tutorial.postprocess.detect`.

    Raises:
        ValueError: for class names that do not fit, or, with post-processing in an ONNX
            graph, options it cannot give: a ``conf_threshold`` below the graph's, another
            ``nms_threshold``, a larger ``top_k``.
    """

    def __init__(
        self,
        model: nn.Module | OnnxSSD,
        class_names: Sequence[str],
        device: torch.device | str | None = None,
        conf_threshold: float = DISPLAY_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        top_k: int = TOP_K,
    ) -> None:
        self.model = model
        self.class_names = class_names_with_background(class_names, model.num_classes)
        self.device = _place(model, device)
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.priors = default_boxes(model.config, device=self.device)
        #: the options built into an ONNX graph with post-processing, or None
        self.postprocess: Postprocessing | None = getattr(model, "postprocess", None)
        if self.postprocess is not None:
            _check_within(self.postprocess, conf_threshold, nms_threshold, top_k)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        class_names: Sequence[str] | None = None,
        providers: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Detector:
        """A detector running an ONNX file written by :func:`ssd_tutorial.export.export_onnx`.

        Args:
            path: the ``.onnx`` file, raw or with post-processing.
            class_names: default: the names stored in the file.
            providers: onnxruntime execution providers (default: the CPU).
            kwargs: ``device``, ``conf_threshold``, ``nms_threshold``, ``top_k`` as for
                :class:`Detector`. For a file with post-processing, ``nms_threshold`` and
                ``top_k`` default to those built in, ``conf_threshold`` to the larger of
                :data:`DISPLAY_THRESHOLD` and the built-in one.
        """
        from ssd_tutorial.export import OnnxSSD

        model = OnnxSSD(path, providers)
        built_in = model.postprocess
        if built_in is not None:
            kwargs.setdefault("conf_threshold", max(DISPLAY_THRESHOLD, built_in.conf_threshold))
            kwargs.setdefault("nms_threshold", built_in.nms_threshold)
            kwargs.setdefault("top_k", built_in.top_k)
        return cls(model, class_names or model.class_names, **kwargs)

    def __call__(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> DetectionResult | list[DetectionResult]:
        """Detect objects in one image or a list of images.

        Args:
            images: one image (see :data:`ImageLike`), a list of them (sizes may differ), or a
                tensor batch ``[B, 3, H, W]``.

        Returns:
            A :class:`DetectionResult` for one image, a list of them for a list or a batch.

        Raises:
            FileNotFoundError: for a path that is not a file.
            ssd_tutorial.data.files.InvalidSampleError: (a ``ValueError``) for a file that
                cannot be decoded as an image.
            ValueError: for an array or tensor that is not an RGB image.
            TypeError: for anything else.
        """
        single = not isinstance(images, (list, tuple)) and not _is_batch(images)
        tensors = [_as_image_tensor(image) for image in ([images] if single else images)]
        results = self._detect(tensors)
        return results[0] if single else results

    def _detect(self, images: list[Tensor]) -> list[DetectionResult]:
        model = self.model
        size = model.config.image_size
        batch = torch.cat(
            [preprocess(x.to(self.device), size, model.image_mean, model.image_std) for x in images]
        )
        with _eval_mode(model), torch.inference_mode():
            if self.postprocess is not None:
                found = [self._fewer(detections) for detections in model.detect(batch)]
            else:
                loc, conf = model(batch)
                found = detect(
                    loc.float(),
                    conf.float(),
                    self.priors,
                    self.conf_threshold,
                    self.nms_threshold,
                    self.top_k,
                )
        return [self._result(image, detections) for image, detections in zip(images, found)]

    def _fewer(self, detections: Detections) -> Detections:
        """The best detections, at most ``top_k``, above ``conf_threshold``.

        With options as :func:`_check_within` allows, these are the detections of ``detect``
        with those options: the candidates above the higher threshold are the best ones, so
        they meet the same caps and suppress one another as before.
        """
        count = min(int((detections.scores > self.conf_threshold).sum()), self.top_k)
        return Detections(*(t[:count] for t in detections))

    def _result(self, image: Tensor, detections: Detections) -> DetectionResult:
        height, width = image.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        labels = detections.labels.cpu()
        return DetectionResult(
            boxes=detections.boxes.cpu().float() * scale,
            scores=detections.scores.cpu(),
            labels=labels,
            names=[self.class_names[label] for label in labels.tolist()],
            image_size=(int(height), int(width)),
        )


def _place(model: nn.Module | OnnxSSD, device: torch.device | str | None) -> torch.device:
    """Move a PyTorch model to ``device`` (if given); the device the model then runs on."""
    if isinstance(model, nn.Module):
        if device is not None:
            model.to(device)
        return next(model.parameters()).device
    if device is not None and torch.device(device) != model.device:
        raise ValueError(
            f"the model is not a PyTorch module that can move (an ONNX model runs on its "
            f"onnxruntime providers) and gives tensors on {model.device}, so device must be None "
            f"or {model.device}, got {device!r}"
        )
    return model.device


def _check_within(
    built_in: Postprocessing, conf_threshold: float, nms_threshold: float, top_k: int
) -> None:
    """Options that a graph's built-in post-processing can give by keeping fewer detections."""
    check_options(conf_threshold, nms_threshold, top_k, built_in.candidates_per_class)
    if conf_threshold < built_in.conf_threshold:
        raise ValueError(
            f"conf_threshold must be at least {built_in.conf_threshold}, the model's built-in "
            f"one (its graph drops the scores below), got {conf_threshold}"
        )
    if nms_threshold != built_in.nms_threshold:
        raise ValueError(
            f"nms_threshold must be {built_in.nms_threshold}, the model's built-in one (its graph "
            f"runs the NMS), got {nms_threshold}"
        )
    if top_k > built_in.top_k:
        raise ValueError(
            f"top_k must be at most {built_in.top_k}, the model's built-in one (its graph keeps "
            f"no more), got {top_k}"
        )


def _eval_mode(model: nn.Module | OnnxSSD) -> AbstractContextManager:
    """A PyTorch model in eval mode, its mode restored after; an ONNX graph has no mode."""
    return eval_mode(model) if isinstance(model, nn.Module) else nullcontext()


def _is_batch(images: Any) -> bool:
    return isinstance(images, Tensor) and images.ndim == 4


def _as_image_tensor(image: Any) -> Tensor:
    """One image as a tensor ``[3, H, W]``: ``uint8``, or floating in ``[0, 1]``."""
    if isinstance(image, (str, Path)):
        return _read_image(Path(image))
    if isinstance(image, PIL.Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"a numpy image must be RGB with shape [H, W, 3], got {list(image.shape)} "
                f"(convert grayscale or RGBA images to RGB first)"
            )
        # A copy: the array may be read-only (as PIL's are) or have negative strides.
        image = torch.tensor(image).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"an image must be a file path, a PIL image, a numpy array [H, W, 3] or a tensor "
            f"[3, H, W], got {type(image).__name__}"
        )
    _check_image_tensor(image)
    return image


def _check_image_tensor(image: Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        hint = " (channels first: permute(2, 0, 1))" if image.shape[-1:] == (3,) else ""
        raise ValueError(f"an image tensor must be RGB [3, H, W]{hint}, got {list(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"the image is empty, shape {list(image.shape)}")
    if image.is_floating_point():
        low, high = image.min().item(), image.max().item()
        if not (low >= 0 and high <= 1):
            raise ValueError(
                f"a floating-point image must hold values in [0, 1], got [{low:g}, {high:g}] "
                f"(divide 0-255 values by 255, or pass uint8)"
            )
    elif image.dtype != torch.uint8:
        raise ValueError(f"an image must be uint8 or floating point, got {image.dtype}")


def _read_image(path: Path) -> Tensor:
    """The file's pixels as stored (like the dataset readers, without EXIF rotation)."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return read_image(path).as_subclass(Tensor)
