"""Pretrained weights: downloading them, and fitting other networks' weights into ours.

* :func:`fetch_state_dict` downloads a torchvision ``WeightsEnum`` (or reads torch's cache) and
  raises :class:`WeightsUnavailableError` offline, so that callers can skip cleanly.
* Weight surgery for the bases: :func:`load_vgg16_imagenet` turns ImageNet VGG-16's fc6/fc7
  into SSD's smaller atrous convolutions; :func:`load_mobilenet_v3_imagenet` copies
  MobileNetV3-Large's feature layers.
* The torchvision port of the whole detector: :func:`from_torchvision` and
  :func:`to_torchvision` convert to and from torchvision's ``ssd300_vgg16``, which has exactly
  the same layers; :func:`load_torchvision_coco` gives our SSD300 with its COCO weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ssd_tutorial.anchors import SSD300_COCO, default_boxes
from ssd_tutorial.backbones import SSD300_EXTRAS, VGG16_STAGES, MobileNetV3Backbone, VGGAtrous

if TYPE_CHECKING:
    from ssd_tutorial.model import SSD


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded (no internet access, or a bad download)."""


def fetch_state_dict(weights: Any, progress: bool = True) -> dict[str, Tensor]:
    """Download (or read from torch's cache) a torchvision ``WeightsEnum`` state dict.

    Raises:
        WeightsUnavailableError: if the file cannot be downloaded, with the URL and the cause.
    """
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"could not download {weights} from {weights.url} ({type(err).__name__}: {err}). "
            "Pretrained weights need internet access (e.g. on Colab); offline, load a state dict "
            "saved elsewhere with torch.load and pass it in instead."
        ) from err


def load_vgg16_imagenet(
    backbone: VGGAtrous, state_dict: dict[str, Tensor] | None = None, progress: bool = True
) -> None:
    """Copy ImageNet-trained VGG-16 weights into ``backbone``, in place.

    conv1_1 .. conv5_3 are copied as they are. fc6 and fc7 are subsampled, as in the reduced
    VGG-16 that the SSD authors released (first made for DeepLab-LargeFOV):

    * fc6: torchvision's ``classifier.0`` weight ``[4096, 25088]`` is a ``7 x 7`` conv on
      ``512 x 7 x 7`` (flattened channel, row, column), i.e. ``[4096, 512, 7, 7]``. Keeping
      every 4th filter (0, 4, .., 4092) and the taps at rows and columns 0, 3, 6 gives
      ``[1024, 512, 3, 3]``. The three taps are 3 cells apart on VGG's stride-32 map, 96 pixels;
      with pool5 at stride 1 the map has stride 16, so the same pixels are 6 cells apart:
      hence dilation 6. Rows/columns 0, 3, 6 are the only evenly spaced choice centred on the
      filter's middle tap.
    * fc7: ``classifier.3`` ``[4096, 4096]`` keeps every 4th output (the same ones as fc6) and
      every 4th input (the fc6 outputs that were kept): ``[1024, 1024, 1, 1]``.
    * Biases keep the same every-4th entries; fc8 (the 1000 ImageNet classes) is dropped.

    Args:
        backbone: a :class:`VGGAtrous` with VGG-16's widths (``VGGAtrous()``).
        state_dict: a torchvision ``vgg16`` state dict (``features.N.*``, ``classifier.N.*``).
            ``None`` downloads ``VGG16_Weights.IMAGENET1K_V1`` (528 MB), which expects
            inputs normalised with the ImageNet mean and std, as
            :func:`ssd_tutorial.preprocess.preprocess` does.
        progress: show a download progress bar.

    Raises:
        TypeError: if ``backbone`` is not a :class:`VGGAtrous`.
        ValueError: if it does not have VGG-16's widths or ``state_dict`` lacks weights.
        WeightsUnavailableError: if ``state_dict`` is None and the download fails.
    """
    if not isinstance(backbone, VGGAtrous):
        raise TypeError(
            f"load_vgg16_imagenet needs a VGGAtrous (for an SSD: model.base.backbone), got "
            f"{type(backbone).__name__}"
        )
    if backbone.stages != VGG16_STAGES or backbone.fc_channels != 1024:
        raise ValueError(
            f"load_vgg16_imagenet needs VGGAtrous with VGG-16's widths {VGG16_STAGES} and "
            f"fc_channels 1024, got {backbone.stages} and {backbone.fc_channels}"
        )
    if state_dict is None:
        from torchvision.models import VGG16_Weights

        state_dict = fetch_state_dict(VGG16_Weights.IMAGENET1K_V1, progress)
    indices = torchvision_vgg_indices(VGG16_STAGES)
    needed = [f"features.{i}.weight" for i in indices.values()]
    needed += ["classifier.0.weight", "classifier.3.weight"]
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise ValueError(
            f"state_dict must be a torchvision vgg16 state dict with the conv and classifier "
            f"weights, missing {missing}"
        )
    ours = {}
    for name, index in indices.items():
        part = "conv5_to_fc7" if name.startswith("conv5") else "conv1_to_conv4"
        for kind in ("weight", "bias"):
            ours[f"{part}.{name}.{kind}"] = state_dict[f"features.{index}.{kind}"]
    fc6 = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
    ours["conv5_to_fc7.fc6.weight"] = fc6[::4, :, ::3, ::3]
    ours["conv5_to_fc7.fc6.bias"] = state_dict["classifier.0.bias"][::4]
    ours["conv5_to_fc7.fc7.weight"] = state_dict["classifier.3.weight"][::4, ::4, None, None]
    ours["conv5_to_fc7.fc7.bias"] = state_dict["classifier.3.bias"][::4]
    # Everything but the L2Norm weight, which is SSD's own and keeps its value.
    backbone.load_state_dict(ours, strict=False)


def load_mobilenet_v3_imagenet(
    backbone: MobileNetV3Backbone,
    state_dict: dict[str, Tensor] | None = None,
    progress: bool = True,
) -> None:
    """Copy ImageNet-trained MobileNetV3-Large weights into ``backbone``, in place.

    ``backbone.features`` is torchvision's ``mobilenet_v3_large().features``, so its weights are
    the ``features.*`` entries of the classifier's state dict; the classifier is dropped.

    Args:
        backbone: a :class:`MobileNetV3Backbone` with the full tail.
        state_dict: a torchvision ``mobilenet_v3_large`` state dict. ``None`` downloads
            ``MobileNet_V3_Large_Weights.IMAGENET1K_V1`` (22 MB, the backbone weights of
            torchvision's SSDLite), which expects the ImageNet mean and std, as
            :func:`ssd_tutorial.preprocess.preprocess` does.
        progress: show a download progress bar.

    Raises:
        TypeError: if ``backbone`` is not a :class:`MobileNetV3Backbone`.
        ValueError: if it has the reduced tail or ``state_dict`` does not fit.
        WeightsUnavailableError: if ``state_dict`` is None and the download fails.
    """
    if not isinstance(backbone, MobileNetV3Backbone):
        raise TypeError(
            f"load_mobilenet_v3_imagenet needs a MobileNetV3Backbone (for an SSD: "
            f"model.base.backbone), got {type(backbone).__name__}"
        )
    if backbone.reduced_tail:
        raise ValueError("ImageNet weights have the full tail: build with reduced_tail=False")
    if state_dict is None:
        from torchvision.models import MobileNet_V3_Large_Weights

        state_dict = fetch_state_dict(MobileNet_V3_Large_Weights.IMAGENET1K_V1, progress)
    features = {
        k[len("features.") :]: v for k, v in state_dict.items() if k.startswith("features.")
    }
    missing = [f"features.{k}" for k in backbone.features.state_dict() if k not in features]
    if missing:
        raise ValueError(
            f"state_dict must be a torchvision mobilenet_v3_large state dict, missing "
            f"{len(missing)} feature weights: {missing[:3]}"
        )
    try:
        backbone.features.load_state_dict(features)
    except RuntimeError as err:  # weights of other shapes, e.g. from a reduced tail
        raise ValueError(f"state_dict does not fit MobileNetV3-Large's layers: {err}") from err


def torchvision_vgg_indices(stages: tuple[tuple[int, ...], ...]) -> dict[str, int]:
    """Position of each conv (``"conv1_1"`` .. ``"conv5_3"``) in torchvision's ``vgg.features``.

    torchvision numbers the layers of ``features`` in order: each conv is followed by a ReLU and
    each stage by a max pool, so VGG-16's conv1_1 is 0, conv1_2 is 2, conv2_1 is 5, ...
    """
    indices = {}
    position = 0
    for stage, widths in enumerate(stages, start=1):
        for i in range(1, len(widths) + 1):
            indices[f"conv{stage}_{i}"] = position
            position += 2
        position += 1
    return indices


def from_torchvision(
    model_or_state_dict: nn.Module | dict[str, Tensor], num_classes: int | None = None
) -> SSD:
    """Our ``"ssd300_coco"`` SSD with the weights of a torchvision ``ssd300_vgg16``.

    Args:
        model_or_state_dict: a torchvision ``SSD`` built by ``ssd300_vgg16`` (with its default
            boxes, which are those of :data:`~ssd_tutorial.anchors.SSD300_COCO`) or its state
            dict.
        num_classes: expected ``C``; by default read from the classification head.

    Returns:
        SSD whose ``forward`` equals torchvision's ``model.head(model.backbone(x))`` on the same
        normalised input. ``image_mean``/``image_std`` are the torchvision model's (for a state
        dict, ``ssd_tutorial.model.TORCHVISION_MEAN`` and ``TORCHVISION_STD``): preprocess with
        them.
    """
    # model.py imports this module (for its pretrained bases), so this import waits for a call.
    from ssd_tutorial.model import TORCHVISION_MEAN, TORCHVISION_STD, build_ssd

    mean, std = TORCHVISION_MEAN, TORCHVISION_STD
    if isinstance(model_or_state_dict, nn.Module):
        transform = model_or_state_dict.transform
        mean, std = tuple(transform.image_mean), tuple(transform.image_std)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
    names = _torchvision_names()
    missing = sorted(set(names.values()) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(names.values()))
    if missing or unexpected:
        raise ValueError(
            f"not a torchvision ssd300_vgg16 state dict: {len(missing)} keys missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    # conv4_3 has 4 default boxes per cell, so its classifier has 4 * C filters
    found = state_dict["head.classification_head.module_list.0.weight"].shape[0] // 4
    if num_classes is not None and num_classes != found:
        raise ValueError(f"num_classes={num_classes} but the torchvision model has {found}")
    model = build_ssd("ssd300_coco", found)
    model.image_mean, model.image_std = mean, std
    model.load_state_dict({ours: state_dict[theirs] for ours, theirs in names.items()})
    return model


def to_torchvision(ssd: SSD) -> nn.Module:
    """A torchvision ``ssd300_vgg16`` with the weights of ``ssd`` (an ``"ssd300_coco"`` SSD).

    torchvision generates its own default boxes, those of :data:`SSD300_COCO`, so ``ssd`` must
    use the same ones (a model trained with VOC's :data:`SSD300` boxes would decode wrongly).
    The returned model normalises its input with ``ssd.image_mean`` and ``ssd.image_std``.
    """
    ours_boxes, theirs_boxes = default_boxes(ssd.config), default_boxes(SSD300_COCO)
    if ours_boxes.shape != theirs_boxes.shape or not torch.allclose(ours_boxes, theirs_boxes):
        raise ValueError(
            f"torchvision's ssd300_vgg16 uses the default boxes of SSD300_COCO, this model uses "
            f"{ssd.config.name!r}: build it with build_ssd('ssd300_coco', ...)"
        )
    from torchvision.models.detection import ssd300_vgg16

    # Built on the meta device: torchvision's random init (and its 120M-parameter VGG
    # classifier, dropped by the SSD) would cost seconds for weights that are replaced anyway.
    with torch.device("meta"):
        model = ssd300_vgg16(
            weights=None,
            weights_backbone=None,
            num_classes=ssd.num_classes,
            image_mean=list(ssd.image_mean),
            image_std=list(ssd.image_std),
        )
    state_dict = ssd.state_dict()
    weights = {theirs: state_dict[ours].clone() for ours, theirs in _torchvision_names().items()}
    model.load_state_dict(weights, assign=True)
    return model


def load_torchvision_coco(progress: bool = True) -> SSD:
    """Our SSD300 with torchvision's COCO weights (``SSD300_VGG16_Weights.COCO_V1``, 25.1 AP).

    91 classes: torchvision's COCO category ids, 0 being the background, names in
    ``SSD300_VGG16_Weights.COCO_V1.meta["categories"]``. Preprocess with the returned model's
    ``image_mean`` and ``image_std`` (``ssd_tutorial.model.TORCHVISION_MEAN`` and ``_STD``).

    Raises:
        WeightsUnavailableError: if the 136 MB file cannot be downloaded.
    """
    from torchvision.models.detection import SSD300_VGG16_Weights

    return from_torchvision(fetch_state_dict(SSD300_VGG16_Weights.COCO_V1, progress))


def _torchvision_names() -> dict[str, str]:
    """Our state-dict keys -> torchvision ``ssd300_vgg16``'s, e.g.

    ``base.backbone.conv1_to_conv4.conv1_1.weight`` -> ``backbone.features.0.weight``.

    torchvision keeps VGG's ``features`` up to conv4_3 as they are, then puts pool4 .. conv5_3
    and a small ``Sequential`` (pool5, fc6, ReLU, fc7, ReLU) into ``extra.0``; conv8 .. conv11
    are ``extra.1`` .. ``extra.4``. Its L2Norm weight is ``backbone.scale_weight``.
    """
    vgg_index = torchvision_vgg_indices(VGG16_STAGES)
    pool4 = vgg_index["conv4_3"] + 2
    prefixes = {}
    for name, index in vgg_index.items():
        if name.startswith("conv5"):
            prefixes[f"base.backbone.conv5_to_fc7.{name}"] = f"backbone.extra.0.{index - pool4}"
        else:
            prefixes[f"base.backbone.conv1_to_conv4.{name}"] = f"backbone.features.{index}"
    prefixes["base.backbone.conv5_to_fc7.fc6"] = "backbone.extra.0.7.1"
    prefixes["base.backbone.conv5_to_fc7.fc7"] = "backbone.extra.0.7.3"
    for level, n in enumerate(range(8, 8 + len(SSD300_EXTRAS)), start=1):
        prefixes[f"base.extras.conv{n}.conv{n}_1"] = f"backbone.extra.{level}.0"
        prefixes[f"base.extras.conv{n}.conv{n}_2"] = f"backbone.extra.{level}.2"
    for m in range(len(SSD300_COCO.feature_maps)):
        prefixes[f"head.loc.{m}"] = f"head.regression_head.module_list.{m}"
        prefixes[f"head.conf.{m}"] = f"head.classification_head.module_list.{m}"
    names = {"base.backbone.l2norm.weight": "backbone.scale_weight"}
    for ours, theirs in prefixes.items():
        names[f"{ours}.weight"] = f"{theirs}.weight"
        names[f"{ours}.bias"] = f"{theirs}.bias"
    return names
