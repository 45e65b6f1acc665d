"""Shipping a trained SSD to other runtimes: ONNX export, and running the exported file.

:func:`export_onnx` writes the network, ``images [B, 3, S, S] -> loc [B, P, 4], conf [B, P, C]``,
with a dynamic batch axis, and stores in the file's ``metadata_props`` everything needed to use
it without the checkpoint: class names, input size, normalisation, the default-box config and
the architecture. Post-processing (decoding and NMS) is not in the graph: it stays
:func:`ssd_tutorial.postprocess.detect`, run on the outputs. :class:`OnnxSSD` runs the file with
onnxruntime and behaves like the model, so :class:`ssd_tutorial.detector.Detector` takes it::

    export_onnx(model, "ssd.onnx", class_names=names)
    detector = Detector.from_onnx("ssd.onnx")

The export uses ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based exporter
(the default since torch 2.9; the TorchScript one is deprecated). It writes ONNX operator sets
from 18 on: asked for an older one it keeps 18, so :func:`export_onnx` refuses those.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssd_tutorial.anchors import AnchorConfig
from ssd_tutorial.checks import require_extra
from ssd_tutorial.model import SSD, check_images

onnx = require_extra("onnx", "export")
onnxruntime = require_extra("onnxruntime", "export")

#: Operator set written by default: the oldest the exporter writes, so the widest choice of
#: runtimes (onnxruntime 1.14 and later) can load the file.
DEFAULT_OPSET = 18

#: ``metadata_props`` key that marks a file written by :func:`export_onnx`, with the version
#: of the metadata layout.
FORMAT_KEY = "ssd_tutorial_format"
FORMAT_VERSION = "1"


def export_onnx(
    model: SSD,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    allow_untrained: bool = False,
) -> Path:
    """Write ``model`` to an ONNX file with a dynamic batch axis, and check the file.

    Graph: input ``images`` (float32 ``[B, 3, S, S]``, normalised as ``model.image_mean`` /
    ``model.image_std`` say, ``S = model.config.image_size``), outputs ``loc`` (float32
    ``[B, P, 4]``) and ``conf`` (float32 ``[B, P, C]``, logits), as ``model.forward``.

    Args:
        model: a float32 SSD; exported in eval mode, on its device (its mode is restored).
        path: the ``.onnx`` file to write (one file, weights included).
        class_names: names of labels ``0..C-1`` (background first) or ``1..C-1``; by default
            ``"class 0" .. "class C-1"``.
        opset: ONNX operator set, 18 or later (:data:`DEFAULT_OPSET`).
        allow_untrained: export a model whose multibox heads were never trained or loaded.
            Such a model, as :func:`ssd_tutorial.model.build_ssd` returns it, has every head
            bias exactly zero, which no training step leaves; exporting one is almost always a
            forgotten ``load_state_dict``, so it is refused unless this is ``True``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an untrained model (see ``allow_untrained``), class names that do not
            fit, a model that is not float32, or an ``opset`` below 18 or that the exporter
            cannot write.
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(
            f"opset must be {DEFAULT_OPSET} or later (torch.onnx's exporter writes no older "
            f"operator set), got {opset}"
        )
    if not allow_untrained and not _heads_were_trained(model):
        raise ValueError(
            "the model's multibox heads have their initial all-zero biases: it was never trained "
            "and no weights were loaded (load a checkpoint, or pass allow_untrained=True)"
        )
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export a float32 model (model.float()), got parameters in {dtype}")
    metadata = _metadata(model, _full_class_names(class_names, model.num_classes))
    proto = _export_proto(model, opset)
    written = {entry.domain: entry.version for entry in proto.opset_import}[""]
    if written != opset:  # the exporter logs a failed conversion and keeps its own opset
        raise ValueError(
            f"torch.onnx could not write opset {opset} (it wrote {written}; the installed onnx "
            f"{onnx.__version__} knows opsets up to {onnx.defs.onnx_opset_version()})"
        )
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


class OnnxSSD:
    """An ONNX file written by :func:`export_onnx`, run by onnxruntime, used like the model.

    Calling it on a normalised batch gives ``(loc, conf)`` tensors as ``SSD.forward`` does, and
    it has the attributes :class:`ssd_tutorial.detector.Detector` needs.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference (default: the CPU).

    Attributes:
        config (AnchorConfig): the default boxes, for :func:`ssd_tutorial.anchors.default_boxes`.
        num_classes, class_names, image_mean, image_std, architecture: as exported
            (``architecture`` is ``None`` for a model not built by ``build_ssd``).
        device (torch.device): where the returned tensors are: the CPU.
        session: the ``onnxruntime.InferenceSession``.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not an ONNX model, or one without this package's metadata.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:  # onnxruntime's errors share no base class but Exception
            raise ValueError(f"{path} is not a readable ONNX model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if FORMAT_KEY not in metadata:
            raise ValueError(
                f"{path} has no ssd_tutorial metadata (class names, default boxes, ...): write "
                f"it with ssd_tutorial.export.export_onnx or `ssd-tutorial export`"
            )
        if metadata[FORMAT_KEY] != FORMAT_VERSION:
            raise ValueError(
                f"{path} has ssd_tutorial metadata version {metadata[FORMAT_KEY]!r}, this version "
                f"of the package reads {FORMAT_VERSION!r}"
            )
        self.path = path
        self.config = _config_from_json(metadata["anchor_config"])
        self.num_classes = int(metadata["num_classes"])
        self.class_names = tuple(json.loads(metadata["class_names"]))
        self.image_mean = tuple(json.loads(metadata["image_mean"]))
        self.image_std = tuple(json.loads(metadata["image_std"]))
        self.architecture = metadata["architecture"] or None
        self.device = torch.device("cpu")

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network.

        Args:
            images (Tensor[B, 3, S, S]): normalised RGB batch, floating point, ``S =
                config.image_size``; any device (copied to the CPU as float32).

        Returns:
            loc (Tensor[B, P, 4]), conf (Tensor[B, P, C]): float32, on the CPU.

        Raises:
            ValueError: for a batch of another shape or an integer dtype.
        """
        check_images(images, self.config.image_size)
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        loc, conf = self.session.run(["loc", "conf"], {"images": batch})
        return torch.from_numpy(loc), torch.from_numpy(conf)

    def __repr__(self) -> str:
        return f"OnnxSSD({str(self.path)!r}, {self.config.name}, {self.num_classes} classes)"


def _heads_were_trained(model: SSD) -> bool:
    """Whether any bias of the multibox heads (convs, batch norms) moved from its initial zero."""
    biases = [p for name, p in model.head.named_parameters() if name.endswith("bias")]
    return any(bool(bias.detach().ne(0).any()) for bias in biases)


def _full_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Names of labels ``0..C-1``: the background is prepended to ``C - 1`` object names."""
    if class_names is None:
        return [f"class {label}" for label in range(num_classes)]
    names = list(class_names)
    if len(names) == num_classes - 1:
        names.insert(0, "background")
    if len(names) != num_classes:
        raise ValueError(
            f"class_names must name the model's {num_classes} classes (background first) or its "
            f"{num_classes - 1} object classes, got {len(names)} names"
        )
    return names


def _metadata(model: SSD, class_names: list[str]) -> dict[str, str]:
    """The strings stored in ``metadata_props``; lists and the config as JSON."""
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "architecture": model.architecture or "",
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(class_names),
        "image_size": str(model.config.image_size),
        "image_mean": json.dumps(list(model.image_mean)),
        "image_std": json.dumps(list(model.image_std)),
        "anchor_config": json.dumps(dataclasses.asdict(model.config)),
    }


def _config_from_json(text: str) -> AnchorConfig:
    """Inverse of ``json.dumps(dataclasses.asdict(config))``: every JSON list back to a tuple."""
    return AnchorConfig(**{name: _tuples(value) for name, value in json.loads(text).items()})


def _tuples(value: Any) -> Any:
    """Nested lists as nested tuples (``AnchorConfig``'s fields are tuples of tuples...)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _export_proto(model: SSD, opset: int) -> onnx.ModelProto:
    """The ``onnx.ModelProto`` of ``model`` in eval mode, batch axis dynamic."""
    size = model.config.image_size
    device = next(model.parameters()).device
    # Two images: torch.export treats a size-1 dimension as the constant 1.
    example = torch.zeros(2, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["images"],
            output_names=["loc", "conf"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            # explicit: torch.export-based, whatever the installed torch's default
            dynamo=True,
            # weights inside the one file: SSD300's 100 MB are far below protobuf's 2 GB limit
            external_data=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    return program.model_proto
