"""Shipping a trained SSD to other runtimes: ONNX export, and running the exported file.

:func:`export_onnx` writes the network, ``images [B, 3, S, S] -> loc [B, P, 4], conf [B, P, C]``,
with a dynamic batch axis, and stores in the file's ``metadata_props`` everything needed to use
it without the checkpoint: class names, input size, normalisation, the default-box config and
the architecture. By default post-processing (decoding and NMS) is not in the graph: it stays
:func:`ssd_tutorial.postprocess.detect`, run on the outputs. :class:`OnnxSSD` runs the file with
onnxruntime and behaves like the model, so :class:`ssd_tutorial.detector.Detector` takes it::

    export_onnx(model, "ssd.onnx", class_names=names)
    detector = Detector.from_onnx("ssd.onnx")

With ``postprocess=True`` the graph goes on to the detections themselves, so that a runtime
with no PyTorch next to it needs nothing else: ``images -> boxes [B, K, 4], scores [B, K],
labels [B, K], num_detections [B]``, each image's ``num_detections[b]`` detections first, best
first, then zeros (``K = top_k``). The graph does what :func:`~ssd_tutorial.postprocess.detect`
does, stage by stage (decoding, softmax, threshold, per-class cap, per-class NMS with ONNX's
``NonMaxSuppression``, top-k), with the same results; :func:`postprocess_graph` is that part
alone, from ``loc`` and ``conf``. ``metadata_props`` says which kind a file is (``outputs``:
``raw`` or ``detections``) and, for detections, the settings built in.

The export uses ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based exporter
(the default since torch 2.9; the TorchScript one is deprecated). It writes ONNX operator sets
from 18 on: asked for an older one it keeps 18, so :func:`export_onnx` refuses those.

The module is a little longer than the package's others because writing a file and running it
(:class:`OnnxSSD`) share the metadata that describes it, and stay together for that; the nodes
of the post-processing graph are in :mod:`ssd_tutorial.onnx_detect`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssd_tutorial.anchors import AnchorConfig, default_boxes
from ssd_tutorial.checks import class_names_with_background, require_extra
from ssd_tutorial.model import SSD, check_images, eval_mode
from ssd_tutorial.onnx_detect import (
    DECODED_OUTPUTS,
    DETECTION_OUTPUTS,
    DecodedScores,
    Postprocessing,
    append_detection_nodes,
)
from ssd_tutorial.postprocess import Detections

onnx = require_extra("onnx", "export")
onnxruntime = require_extra("onnxruntime", "export")

#: Operator set written by default: the oldest the exporter writes, so the widest choice of
#: runtimes (onnxruntime 1.14 and later) can load the file.
DEFAULT_OPSET = 18

#: ``metadata_props`` key that marks a file written by :func:`export_onnx`, with the version
#: of the metadata layout.
FORMAT_KEY = "ssd_tutorial_format"
FORMAT_VERSION = "1"

#: ``metadata_props`` key of what the graph outputs: :data:`RAW` (``loc``, ``conf``) or
#: :data:`DETECTIONS` (post-processing included). A file without it is raw.
OUTPUTS_KEY = "outputs"
RAW, DETECTIONS = "raw", "detections"
#: Output names of a raw graph (those of one with post-processing: ``DETECTION_OUTPUTS``).
RAW_OUTPUTS = ("loc", "conf")


def export_onnx(
    model: SSD,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    allow_untrained: bool = False,
    postprocess: bool | Postprocessing = False,
) -> Path:
    """Write ``model`` to an ONNX file with a dynamic batch axis, and check the file.

    Graph: input ``images`` (float32 ``[B, 3, S, S]``, normalised as ``model.image_mean`` /
    ``model.image_std`` say, ``S = model.config.image_size``); outputs ``loc`` (float32
    ``[B, P, 4]``) and ``conf`` (float32 ``[B, P, C]``, logits), as ``model.forward``, or with
    ``postprocess`` the detections of :func:`ssd_tutorial.postprocess.detect`, padded to ``K =
    top_k`` rows per image: ``boxes`` (float32 ``[B, K, 4]``, corner form, relative),
    ``scores`` (float32 ``[B, K]``), ``labels`` (int64 ``[B, K]``) and ``num_detections``
    (int64 ``[B]``); the rows after ``num_detections[b]`` are zeros.

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
        postprocess: include post-processing: ``True`` for ``detect``'s defaults, or the
            :class:`Postprocessing` options to build in.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an untrained model (see ``allow_untrained``), class names that do not
            fit, a model that is not float32, or an ``opset`` below 18, or that the exporter
            cannot write or the installed onnxruntime cannot run. (Options out of range are
            refused by :class:`Postprocessing` itself.)
    """
    _check_opset_floor(opset)
    if not allow_untrained and not _heads_were_trained(model):
        raise ValueError(
            "the model's multibox heads have their initial all-zero biases: it was never trained "
            "and no weights were loaded (load a checkpoint, or pass allow_untrained=True)"
        )
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export a float32 model (model.float()), got parameters in {dtype}")
    settings = Postprocessing() if postprocess is True else postprocess or None
    metadata = _metadata(model, _full_class_names(class_names, model.num_classes), settings)
    size = model.config.image_size
    device = next(model.parameters()).device
    # Two images: torch.export treats a size-1 dimension as the constant 1.
    images = {"images": torch.zeros(2, 3, size, size, device=device)}
    with eval_mode(model):
        if settings is None:
            shapes = {"images": {0: torch.export.Dim("batch")}}
            proto = _export_proto(model, images, RAW_OUTPUTS, opset, shapes)
        else:
            priors = default_boxes(model.config, device=device)
            proto = _detections_proto(model, images, priors, model.num_classes, settings, opset)
    _check_runs(proto, opset)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def postprocess_graph(
    priors: Tensor,
    num_classes: int,
    postprocess: Postprocessing | None = None,
    opset: int = DEFAULT_OPSET,
    threshold_inputs: bool = False,
) -> onnx.ModelProto:
    """The post-processing part of :func:`export_onnx`'s graph alone, as an ONNX model.

    Inputs ``loc`` (float32 ``[B, P, 4]``) and ``conf`` (float32 ``[B, P, C]``), the network's
    outputs; outputs ``boxes``, ``scores``, ``labels`` and ``num_detections`` as in
    :func:`export_onnx`. For networks run elsewhere, and to test the graph on any outputs.

    Args:
        priors (Tensor[P, 4]): default boxes, centre form, relative.
        num_classes: ``C``, background included.
        postprocess: the options to build in (default: ``detect``'s).
        opset: ONNX operator set, 18 or later.
        threshold_inputs: the graph takes ``conf_threshold`` and ``nms_threshold`` as two more
            inputs (float32 scalars) instead of ``postprocess``'s, to be rerun at other
            thresholds (see :func:`~ssd_tutorial.onnx_detect.append_detection_nodes`).
    """
    _check_opset_floor(opset)
    settings = postprocess or Postprocessing()
    inputs = {  # two images, as in export_onnx
        "loc": torch.zeros(2, len(priors), 4, device=priors.device),
        "conf": torch.zeros(2, len(priors), num_classes, device=priors.device),
    }
    with warnings.catch_warnings():
        # the exporter says that the two inputs' batch axes share one name, as they should
        warnings.filterwarnings("ignore", "# The axis name: batch will not be used")
        return _detections_proto(
            _Outputs(), inputs, priors, num_classes, settings, opset, threshold_inputs
        )


class OnnxSSD:
    """An ONNX file written by :func:`export_onnx`, run by onnxruntime, used like the model.

    A raw file, called on a normalised batch, gives ``(loc, conf)`` tensors as ``SSD.forward``
    does; a file with post-processing gives its detections with :meth:`detect`. Either has the
    attributes :class:`ssd_tutorial.detector.Detector` needs.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference (default: the CPU).

    Attributes:
        config (AnchorConfig): the default boxes, for :func:`ssd_tutorial.anchors.default_boxes`.
        num_classes, class_names, image_mean, image_std, architecture: as exported
            (``architecture`` is ``None`` for a model not built by ``build_ssd``).
        postprocess (Postprocessing | None): the options built into a file with
            post-processing, ``None`` for a raw file.
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
        self.postprocess = _postprocessing_from_metadata(metadata, path)
        self.device = torch.device("cpu")

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network of a raw file.

        Args:
            images (Tensor[B, 3, S, S]): normalised RGB batch, floating point, ``S =
                config.image_size``; any device (copied to the CPU as float32).

        Returns:
            loc (Tensor[B, P, 4]), conf (Tensor[B, P, C]): float32, on the CPU.

        Raises:
            ValueError: for a batch of another shape or an integer dtype, or a file with
                post-processing.
        """
        if self.postprocess is not None:
            raise ValueError(
                f"{self.path} outputs detections (post-processing is in the graph), not loc and "
                f"conf: call .detect(images)"
            )
        loc, conf = self._run(images, RAW_OUTPUTS)
        return torch.from_numpy(loc), torch.from_numpy(conf)

    def detect(self, images: Tensor) -> list[Detections]:
        """Run a file with post-processing: the detections of each image.

        Args:
            images (Tensor[B, 3, S, S]): as for calling a raw file.

        Returns:
            One :class:`~ssd_tutorial.postprocess.Detections` per image, its rows up to
            ``num_detections``: boxes relative to the image, on the CPU.

        Raises:
            ValueError: for a batch of another shape or an integer dtype, or a raw file.
        """
        if self.postprocess is None:
            raise ValueError(
                f"{self.path} outputs loc and conf (no post-processing in the graph): call it "
                f"and run ssd_tutorial.postprocess.detect on its outputs"
            )
        *padded, counts = (torch.from_numpy(t) for t in self._run(images, DETECTION_OUTPUTS))
        return [
            Detections(*(t[image, :count] for t in padded))
            for image, count in enumerate(counts.tolist())
        ]

    def _run(self, images: Tensor, outputs: Sequence[str]) -> list[np.ndarray]:
        check_images(images, self.config.image_size)
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(list(outputs), {"images": batch})

    def __repr__(self) -> str:
        kind = "detections" if self.postprocess else "raw"
        return (
            f"OnnxSSD({str(self.path)!r}, {self.config.name}, {self.num_classes} classes, {kind})"
        )


def _heads_were_trained(model: SSD) -> bool:
    """Whether any bias of the multibox heads (convs, batch norms) moved from its initial zero."""
    biases = [p for name, p in model.head.named_parameters() if name.endswith("bias")]
    return any(bool(bias.detach().ne(0).any()) for bias in biases)


def _full_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Names of labels ``0..C-1``: the background is prepended to ``C - 1`` object names."""
    if class_names is None:
        return [f"class {label}" for label in range(num_classes)]
    return list(class_names_with_background(class_names, num_classes))


def _metadata(
    model: SSD, class_names: list[str], postprocess: Postprocessing | None
) -> dict[str, str]:
    """The strings stored in ``metadata_props``; lists, the config and the options as JSON."""
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "architecture": model.architecture or "",
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(class_names),
        "image_size": str(model.config.image_size),
        "image_mean": json.dumps(list(model.image_mean)),
        "image_std": json.dumps(list(model.image_std)),
        "anchor_config": json.dumps(dataclasses.asdict(model.config)),
        OUTPUTS_KEY: RAW if postprocess is None else DETECTIONS,
    }
    if postprocess is not None:
        metadata.update({name: json.dumps(value) for name, value in vars(postprocess).items()})
    return metadata


def _postprocessing_from_metadata(metadata: dict[str, str], path: Path) -> Postprocessing | None:
    """The options built into a file with post-processing; ``None`` for a raw file."""
    outputs = metadata.get(OUTPUTS_KEY, RAW)
    if outputs not in (RAW, DETECTIONS):
        raise ValueError(
            f"{path} says its outputs are {outputs!r}; this version of the package reads "
            f"{RAW!r} and {DETECTIONS!r} files"
        )
    if outputs == RAW:
        return None
    fields = dataclasses.fields(Postprocessing)
    return Postprocessing(**{f.name: _tuples(json.loads(metadata[f.name])) for f in fields})


def _config_from_json(text: str) -> AnchorConfig:
    """Inverse of ``json.dumps(dataclasses.asdict(config))``: every JSON list back to a tuple."""
    return AnchorConfig(**{name: _tuples(value) for name, value in json.loads(text).items()})


def _tuples(value: Any) -> Any:
    """Nested lists as nested tuples (``AnchorConfig``'s fields are tuples of tuples...)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _check_opset_floor(opset: int) -> None:
    if opset < DEFAULT_OPSET:
        raise ValueError(
            f"opset must be {DEFAULT_OPSET} or later (torch.onnx's exporter writes no older "
            f"operator set), got {opset}"
        )


def _export_proto(
    module: nn.Module,
    inputs: dict[str, Tensor],
    outputs: Sequence[str],
    opset: int,
    dynamic_shapes: dict[str, Any],
) -> onnx.ModelProto:
    """The ``onnx.ModelProto`` of ``module`` (in its current mode) on the example ``inputs``.

    ``inputs`` and ``outputs`` give the graph's input and output names, ``dynamic_shapes``
    (``torch.export``'s, by argument of ``forward``) the dynamic batch axis.
    """
    program = torch.onnx.export(
        module,
        tuple(inputs.values()),
        input_names=list(inputs),
        output_names=list(outputs),
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        # explicit: torch.export-based, whatever the installed torch's default
        dynamo=True,
        # weights inside the one file: SSD300's 100 MB are far below protobuf's 2 GB limit
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    written = {entry.domain: entry.version for entry in proto.opset_import}[""]
    if written != opset:  # the exporter logs a failed conversion and keeps its own opset
        raise ValueError(
            f"torch.onnx could not write opset {opset} (it wrote {written}; the installed onnx "
            f"{onnx.__version__} knows opsets up to {onnx.defs.onnx_opset_version()})"
        )
    return proto


def _check_runs(proto: onnx.ModelProto, opset: int) -> None:
    """Refuse a graph that the installed onnxruntime cannot load (say, an opset too new for it)."""
    try:
        onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's errors share no base class but Exception
        raise ValueError(
            f"onnxruntime {onnxruntime.__version__} cannot run the exported graph at opset "
            f"{opset} ({error}); export with an older opset, such as the default {DEFAULT_OPSET}"
        ) from error


def _detections_proto(
    network: nn.Module,
    inputs: dict[str, Tensor],
    priors: Tensor,
    num_classes: int,
    postprocess: Postprocessing,
    opset: int,
    threshold_inputs: bool = False,
) -> onnx.ModelProto:
    """``network`` (giving ``loc``, ``conf``) and post-processing after it, as an ONNX model;
    ``threshold_inputs`` as in :func:`postprocess_graph`."""
    decoded = DecodedScores(network, priors, postprocess.variances).eval()
    batch = torch.export.Dim("batch")
    shapes = {"inputs": tuple({0: batch} for _ in inputs)}  # forward(*inputs)
    proto = _export_proto(decoded, inputs, DECODED_OUTPUTS, opset, shapes)
    append_detection_nodes(proto.graph, len(priors), num_classes, postprocess, threshold_inputs)
    return proto


class _Outputs(nn.Module):
    """``(loc, conf)`` as given: the network of :func:`postprocess_graph`, run elsewhere."""

    def forward(self, loc: Tensor, conf: Tensor) -> tuple[Tensor, Tensor]:
        return loc, conf
