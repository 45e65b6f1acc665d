"""Post-processing in ONNX operators: SSD's ``detect`` as nodes of an exported graph.

:func:`ssd_tutorial.export.export_onnx` with ``postprocess=True`` exports two parts. The first is
PyTorch code, :class:`DecodedScores`: the network, then the stages of
:func:`ssd_tutorial.postprocess.detect` that treat every default box alike (decoding, softmax),
exported by ``torch.onnx``. The second is written here node by node
(:func:`append_detection_nodes`), because the rest of ``detect`` (the per-class cap, the score
threshold, per-class NMS and the top-k, with their data-dependent sizes) has ONNX operators of
its own, ``TopK`` and ``NonMaxSuppression``, that runtimes such as onnxruntime and TensorRT
implement natively. :class:`Postprocessing` holds the options built into such a graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from ssd_tutorial.boxes import VARIANCES, decode
from ssd_tutorial.checks import require_extra
from ssd_tutorial.postprocess import (
    CANDIDATES_PER_CLASS,
    CONF_THRESHOLD,
    NMS_THRESHOLD,
    TOP_K,
    check_options,
)

onnx = require_extra("onnx", "export")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

#: Outputs of a graph with post-processing: ``[B, K, 4]``, ``[B, K]``, ``[B, K]``, ``[B]``.
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


@dataclasses.dataclass(frozen=True)
class Postprocessing:
    """The options of :func:`ssd_tutorial.postprocess.detect` that a graph has built in.

    Same names, defaults and ranges as there; out-of-range values raise a ``ValueError``.
    """

    conf_threshold: float = CONF_THRESHOLD
    nms_threshold: float = NMS_THRESHOLD
    top_k: int = TOP_K
    candidates_per_class: int = CANDIDATES_PER_CLASS
    variances: tuple[float, float] = VARIANCES

    def __post_init__(self) -> None:
        check_options(
            self.conf_threshold, self.nms_threshold, self.top_k, self.candidates_per_class
        )


#: Outputs of the exported PyTorch part of a graph with post-processing (:class:`DecodedScores`).
DECODED_OUTPUTS = ("decoded_boxes", "class_scores")

#: Optional inputs of a graph built with ``threshold_inputs=True``: float32 scalars, by default
#: the :class:`Postprocessing` values built in (see :func:`append_detection_nodes`).
THRESHOLD_INPUTS = ("conf_threshold", "nms_threshold")


class DecodedScores(nn.Module):
    """A network, then the stages of ``detect`` that work on every default box alike.

    ``forward`` takes the network's inputs and gives ``decoded_boxes`` (Tensor[B, P, 4]): every
    default box decoded, corner form, clamped to ``[0, 1]``; and ``class_scores``
    (Tensor[B, C - 1, P]): the softmax scores of the foreground classes, class by class. The
    same functions as ``detect`` (which decodes only the candidates, element by element alike).
    """

    def __init__(self, network: nn.Module, priors: Tensor, variances: tuple[float, float]):
        super().__init__()
        self.network = network
        self.register_buffer("priors", priors)
        self.variances = variances

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.network(*inputs)
        boxes = decode(loc, self.priors, self.variances).clamp(0, 1)
        return boxes, F.softmax(conf, dim=-1)[..., 1:].transpose(1, 2)


def append_detection_nodes(
    graph: onnx.GraphProto,
    num_priors: int,
    num_classes: int,
    postprocess: Postprocessing,
    threshold_inputs: bool = False,
) -> None:
    """Append the stages of ``detect`` after :class:`DecodedScores`'s to its graph, in place.

    The graph's outputs ``decoded_boxes [B, P, 4]`` and ``class_scores [B, C - 1, P]`` are
    replaced by ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]`` and
    ``num_detections [B]`` (see :func:`ssd_tutorial.export.export_onnx`). Each stage gives
    what ``detect`` gives, ties included: ONNX's ``TopK`` puts equal values in index order, as
    ``detect``'s stable sorts do, and onnxruntime's ``NonMaxSuppression`` visits equal scores
    in index order.

    With ``threshold_inputs`` the two thresholds are not built in but are inputs of the graph,
    ``conf_threshold`` and ``nms_threshold`` (:data:`THRESHOLD_INPUTS`, float32 scalars), as
    ONNX's ``NonMaxSuppression`` takes them anyway: a caller reruns the same graph at other
    thresholds (the book's live detector page does, at every move of a slider), and
    ``postprocess``'s own two are unused. The graph does not check the values fed: they must be
    in ``detect``'s ranges, ``[0, 1)`` and ``[0, 1]``.
    """
    top_k, cap = postprocess.top_k, min(postprocess.candidates_per_class, num_priors)
    width = (num_classes - 1) * num_priors
    keep = {*DECODED_OUTPUTS, *DETECTION_OUTPUTS, *(THRESHOLD_INPUTS if threshold_inputs else ())}
    add = _Nodes(graph, keep)
    # Cap: each class's `cap` best scores stay, the others become 0, which no threshold passes.
    add("TopK", ["class_scores", add.int64("cap", [cap])], ["cap_scores", "cap_index"], axis=-1)
    add("Shape", ["class_scores"], ["score_shape"])
    add("ConstantOfShape", ["score_shape"], ["zeros"], value=_filler(0.0))
    add("ScatterElements", ["zeros", "cap_index", "cap_scores"], ["candidates"], axis=2)
    # Threshold and NMS by image and class, both strict (score > conf, IoU > nms) as detect's;
    # kept: [N, 3] rows (image, class, default box), each class best first.
    if threshold_inputs:
        thresholds = ["nms_threshold", "conf_threshold"]  # NonMaxSuppression's order
        graph.input.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in THRESHOLD_INPUTS
        )
    else:
        thresholds = [
            add.float32("iou_threshold", [postprocess.nms_threshold]),
            add.float32("score_threshold", [postprocess.conf_threshold]),
        ]
    add("NonMaxSuppression", ["decoded_boxes", "candidates", "cap", *thresholds], ["kept"])
    # Top-k: the kept scores in a [B, (C - 1) * P] table of -1 (below every score), class by
    # class, and its `top_k` best; the modulo below maps any padding column to a real box.
    add("GatherND", ["candidates", "kept"], ["kept_scores"])
    add("ConstantOfShape", ["score_shape"], ["minus_ones"], value=_filler(-1.0))
    add("ScatterND", ["minus_ones", "kept", "kept_scores"], ["kept_table"])
    add("Reshape", ["kept_table", add.int64("per_image", [0, -1])], ["ranking"])
    if top_k > width:
        pads = add.int64("pads", [0, 0, 0, top_k - width])
        add("Pad", ["ranking", pads, add.float32("minus_one", -1.0)], ["padded_ranking"])
    ranking = "padded_ranking" if top_k > width else "ranking"
    add("TopK", [ranking, add.int64("top_k", [top_k])], ["ranked", "position"], axis=-1)
    add("GreaterOrEqual", ["ranked", add.float32("zero", 0.0)], ["found"])
    add("Div", ["position", add.int64("num_priors", num_priors)], ["class_index"])
    add("Add", ["class_index", add.int64("one", 1)], ["ranked_labels"])
    add("Mod", ["position", "num_priors"], ["prior"])
    add("Unsqueeze", ["prior", add.int64("last_axis", [-1])], ["prior_column"])
    add("GatherND", ["decoded_boxes", "prior_column"], ["ranked_boxes"], batch_dims=1)
    # Rows past the detections: zeros.
    add("Unsqueeze", ["found", "last_axis"], ["found_column"])
    add("Where", ["found_column", "ranked_boxes", "zero"], ["boxes"])
    add("Where", ["found", "ranked", "zero"], ["scores"])
    add("Where", ["found", "ranked_labels", add.int64("no_label", 0)], ["labels"])
    add("Cast", ["found"], ["found_count"], to=TensorProto.INT64)
    add("ReduceSum", ["found_count", add.int64("rows", [1])], ["num_detections"], keepdims=0)

    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, top_k, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, top_k]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, top_k]),
            helper.make_tensor_value_info("num_detections", TensorProto.INT64, [batch]),
        ]
    )


class _Nodes:
    """Appends nodes and constants to a graph, in a ``postprocess/`` scope of their own.

    Every name is scoped, so that none can clash with the exported network's, except those in
    ``keep``: the graph's values that the new nodes read and write.
    """

    def __init__(self, graph: onnx.GraphProto, keep: set[str]) -> None:
        self.graph, self.keep = graph, keep

    def __call__(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> None:
        inputs, outputs = [self._scoped(n) for n in inputs], [self._scoped(n) for n in outputs]
        self.graph.node.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attributes))

    def int64(self, name: str, value: int | list[int]) -> str:
        return self._constant(name, np.array(value, dtype=np.int64))

    def float32(self, name: str, value: float | list[float]) -> str:
        return self._constant(name, np.array(value, dtype=np.float32))

    def _constant(self, name: str, value: np.ndarray) -> str:
        """Add an initializer; its unscoped name, for :meth:`__call__`'s inputs."""
        self.graph.initializer.append(numpy_helper.from_array(value, self._scoped(name)))
        return name

    def _scoped(self, name: str) -> str:
        return name if name in self.keep else f"postprocess/{name}"


def _filler(value: float) -> onnx.TensorProto:
    """``ConstantOfShape``'s ``value``: a one-element float32 tensor."""
    return helper.make_tensor("value", TensorProto.FLOAT, [1], [value])
