"""The SSD network: source feature maps, multibox heads, ``(loc, conf)``.

For SSD300 with ``C`` classes, one normalised ``[B, 3, 300, 300]`` batch flows as::

    base (VGG-16 atrous + extras)   six sources [B, 512, 38, 38] .. [B, 256, 1, 1]
    per source k: loc conv 3x3      [B, k * 4, f, f]   -> [B, f * f * k, 4]
                  conf conv 3x3     [B, k * C, f, f]   -> [B, f * f * k, C]
    concatenate over the sources    loc [B, 8732, 4], conf [B, 8732, C]

``k`` is the number of default boxes per cell (4 or 6). Moving the channels last before
flattening puts the predictions in the order of :func:`ssd_tutorial.anchors.default_boxes`:
map, row, column, box in the cell. ``loc`` holds offsets to be decoded with
:func:`ssd_tutorial.boxes.decode`; ``conf`` holds raw logits, class 0 being the background.

SSDLite (``build_ssd("ssdlite320", C)``) has the same structure with a MobileNetV3 base and
depthwise-separable predictors (:class:`MultiBoxHead` with ``separable=True``).

:func:`from_torchvision` and :func:`to_torchvision` convert weights from and to torchvision's
``ssd300_vgg16``, which has exactly the same layers; they live in :mod:`ssd_tutorial.weights`
with the other weight loaders, and are importable from here, where chapter 4 calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ssd_tutorial.anchors import (
    SSD300,
    SSD300_COCO,
    SSD512,
    SSD_TINY,
    SSDLITE320,
    AnchorConfig,
    resized_config,
)
from ssd_tutorial.backbones import (
    SSD300_EXTRAS,
    SSD512_EXTRAS,
    separable_conv,
    ssdlite_features,
    ssdlite_tiny_features,
    tiny_features,
    vgg16_features,
)
from ssd_tutorial.checks import check_num_classes
from ssd_tutorial.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ssd_tutorial.weights import (
    from_torchvision,
    load_mobilenet_v3_imagenet,
    load_torchvision_coco,
    load_vgg16_imagenet,
    to_torchvision,
)

__all__ = [
    "ARCHITECTURES",
    "SSD",
    "TORCHVISION_MEAN",
    "TORCHVISION_STD",
    "Architecture",
    "MultiBoxHead",
    "build_ssd",
    "check_images",
    "config_for_size",
    "count_parameters",
    "eval_mode",
    "from_torchvision",
    "load_torchvision_coco",
    "to_torchvision",
]

#: Input normalisation of torchvision's ``ssd300_vgg16``: ``(x - mean) / std`` on RGB in [0, 1],
#: i.e. the Caffe convention (0-255 pixels minus the mean pixel), which its COCO weights expect.
TORCHVISION_MEAN: tuple[float, float, float] = (0.48235, 0.45882, 0.40784)
TORCHVISION_STD: tuple[float, float, float] = (1 / 255, 1 / 255, 1 / 255)


class MultiBoxHead(nn.Module):
    """The predictors: per source map, a 3x3 conv for the offsets and one for the class scores.

    Args:
        in_channels: channels of each source map.
        boxes_per_cell: ``k`` for each source map (``config.boxes_per_cell``).
        num_classes: ``C``, background included.
        separable: SSDLite's predictors: a depthwise-separable conv
            (:func:`~ssd_tutorial.backbones.separable_conv`: 3x3 depthwise + BN + ReLU6, then
            1x1) instead of a full 3x3 conv, about ``C_out`` times fewer multiply-adds.

    Shape:
        list of ``[B, in_channels[m], f_m, f_m]`` -> ``loc [B, P, 4]``, ``conf [B, P, C]`` with
        ``P = sum_m f_m * f_m * k_m``.
    """

    def __init__(
        self,
        in_channels: list[int],
        boxes_per_cell: tuple[int, ...],
        num_classes: int,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        pairs = list(zip(in_channels, boxes_per_cell))
        if separable:
            predictor = partial(separable_conv, project_norm=False)
        else:
            predictor = partial(nn.Conv2d, kernel_size=3, padding=1)
        self.loc = nn.ModuleList(predictor(c, k * 4) for c, k in pairs)
        self.conf = nn.ModuleList(predictor(c, k * num_classes) for c, k in pairs)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.xavier_uniform_(conv.weight)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def forward(self, sources: list[Tensor]) -> tuple[Tensor, Tensor]:
        loc = torch.cat([_per_box(conv(x), 4) for conv, x in zip(self.loc, sources)], dim=1)
        conf = torch.cat(
            [_per_box(conv(x), self.num_classes) for conv, x in zip(self.conf, sources)], dim=1
        )
        return loc, conf


def _per_box(prediction: Tensor, columns: int) -> Tensor:
    """``[B, k * columns, f, f]`` -> ``[B, f * f * k, columns]``, boxes by row, column, box.

    Channel ``a * columns + j`` is value ``j`` of the cell's box ``a``, so moving the channels
    last and splitting them into ``(k, columns)`` lists the boxes in default-box order.
    """
    return prediction.permute(0, 2, 3, 1).reshape(prediction.shape[0], -1, columns)


class SSD(nn.Module):
    """Single-Shot MultiBox Detector: a base that gives source maps, and the multibox heads.

    Args:
        base: module mapping ``[B, 3, S, S]`` to a list of source maps, largest first, with an
            ``out_channels`` list (e.g. :func:`ssd_tutorial.backbones.vgg16_features`).
        config: the default boxes; ``config.image_size`` is ``S`` and its feature maps must be
            the sizes of the base's sources.
        num_classes: ``C``, the background class 0 included (21 for Pascal VOC).
        image_mean, image_std: the normalisation the weights expect, for
            :func:`ssd_tutorial.preprocess.preprocess` (ImageNet statistics unless the weights
            come from torchvision's SSD, see :data:`TORCHVISION_MEAN`).
        separable_head: SSDLite's depthwise-separable predictors (:class:`MultiBoxHead`).
        channels_last: hand the base its input in the channels-last (NHWC) memory format, in
            which oneDNN on CPUs and cuDNN on GPUs have their fastest convolutions: on 2 CPU
            cores, SSD300's forward pass takes 0.8x the time and ssd_tiny's 0.5x. The outputs
            are the same up to float rounding; ``False`` keeps the input's own format.

    Attributes:
        config, num_classes, image_mean, image_std, channels_last: as given (set
            ``channels_last`` at any time).
        architecture: the :func:`build_ssd` name of the model (``None`` if built otherwise);
            checkpoints record it to rebuild the model.
        base, head: the two parts (:class:`MultiBoxHead`).
    """

    def __init__(
        self,
        base: nn.Module,
        config: AnchorConfig,
        num_classes: int,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        separable_head: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes, "num_classes")
        if len(base.out_channels) != len(config.feature_maps):
            raise ValueError(
                f"the base gives {len(base.out_channels)} source maps but config {config.name!r} "
                f"has {len(config.feature_maps)} feature maps"
            )
        self.base = base
        self.head = MultiBoxHead(
            base.out_channels, config.boxes_per_cell, num_classes, separable=separable_head
        )
        self.config = config
        self.num_classes = num_classes
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.channels_last = channels_last
        self.architecture: str | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Predict offsets and class logits for every default box.

        Args:
            images (Tensor[B, 3, S, S]): normalised RGB batch, ``S = config.image_size``.

        Returns:
            loc (Tensor[B, P, 4]): offsets ``(dcx, dcy, dw, dh)`` from each default box.
            conf (Tensor[B, P, C]): class logits; ``P = config.num_boxes``.
        """
        check_images(images, self.config.image_size)
        sources = self.base(self.input_format(images))
        _check_sources(sources, self.config)
        return self.head(sources)

    def input_format(self, images: Tensor) -> Tensor:
        """``images`` in the memory format the base runs in (see ``channels_last``)."""
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images


def check_images(images: Tensor, size: int) -> None:
    """Raise ``ValueError`` unless ``images`` is a float ``[B, 3, size, size]`` batch."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
        raise ValueError(
            f"images must be a normalised RGB batch of shape [B, 3, {size}, {size}] (resize "
            f"with ssd_tutorial.preprocess.preprocess), got {list(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point and normalised (ssd_tutorial.preprocess.preprocess), "
            f"got dtype {images.dtype}"
        )


def _check_sources(sources: list[Tensor], config: AnchorConfig) -> None:
    sizes = tuple(s.shape[-1] for s in sources)
    if sizes != config.feature_maps:
        raise ValueError(
            f"the base gives source maps of sizes {sizes} but config {config.name!r} expects "
            f"{config.feature_maps}"
        )


@dataclass(frozen=True)
class Architecture:
    """One network :func:`build_ssd` knows: how to make its parts, and its pretrained base.

    Attributes:
        make_base: builds the base (backbone + extras), e.g.
            :func:`ssd_tutorial.backbones.vgg16_features`.
        anchors: its default boxes; ``anchors.image_size`` is the input size.
        separable_head: SSDLite's depthwise-separable predictors (:class:`MultiBoxHead`).
        load_pretrained_base: copies ImageNet weights into ``model.base.backbone`` (downloading
            them); ``None`` for a base that has none.
    """

    make_base: Callable[[], nn.Module]
    anchors: AnchorConfig
    separable_head: bool = False
    load_pretrained_base: Callable[[nn.Module], None] | None = None


_VGG16_SSD300 = partial(vgg16_features, SSD300_EXTRAS)

#: The networks :func:`build_ssd` knows, by name.
ARCHITECTURES: dict[str, Architecture] = {
    "ssd300": Architecture(_VGG16_SSD300, SSD300, load_pretrained_base=load_vgg16_imagenet),
    "ssd300_coco": Architecture(
        _VGG16_SSD300, SSD300_COCO, load_pretrained_base=load_vgg16_imagenet
    ),
    "ssd512": Architecture(
        partial(vgg16_features, SSD512_EXTRAS), SSD512, load_pretrained_base=load_vgg16_imagenet
    ),
    "ssd_tiny": Architecture(tiny_features, SSD_TINY),
    "ssdlite320": Architecture(
        ssdlite_features,
        SSDLITE320,
        separable_head=True,
        load_pretrained_base=load_mobilenet_v3_imagenet,
    ),
    # the tiny model's input and default boxes, so the two compare network against network
    "ssdlite_tiny": Architecture(
        ssdlite_tiny_features,
        SSD_TINY,
        separable_head=True,
        load_pretrained_base=load_mobilenet_v3_imagenet,
    ),
}


def build_ssd(name: str, num_classes: int, pretrained_base: bool = False) -> SSD:
    """Build a named SSD with freshly initialised heads.

    Args:
        name: ``"ssd300"`` (VOC default boxes, as the paper), ``"ssd300_coco"`` (torchvision's
            default boxes; same layers), ``"ssd512"``, ``"ssd_tiny"`` (128 px, 0.72M
            parameters with 6 classes, 1.06M with 21, for CPU teaching), ``"ssdlite320"``
            (MobileNetV3-Large, separable extras and heads, :data:`SSDLITE320` boxes) or
            ``"ssdlite_tiny"`` (the same parts at 128 px with ssd_tiny's default boxes).
        num_classes: ``C``, background included.
        pretrained_base: load ImageNet weights into the backbone: VGG-16 (downloads 528 MB)
            or MobileNetV3-Large (22 MB); ssd_tiny has none. Raises
            :class:`ssd_tutorial.weights.WeightsUnavailableError` offline.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    architecture = ARCHITECTURES[name]
    model = SSD(
        architecture.make_base(),
        architecture.anchors,
        num_classes,
        separable_head=architecture.separable_head,
    )
    model.architecture = name
    if pretrained_base:
        if architecture.load_pretrained_base is None:
            raise ValueError(
                f"pretrained_base needs a VGG-16 model or a MobileNetV3, {name} has its own base"
            )
        architecture.load_pretrained_base(model.base.backbone)
    return model


def config_for_size(base: nn.Module, template: AnchorConfig, image_size: int) -> AnchorConfig:
    """Default boxes for ``base`` fed ``image_size`` px: ``template``'s, resized.

    The feature map sizes come from one pass of a blank ``[1, 3, image_size, image_size]``
    image through ``base`` in eval mode (so batch-norm statistics stay untouched); the boxes
    keep their size relative to the image (:func:`ssd_tutorial.anchors.resized_config`). For
    example the tiny base gives maps ``(16, 8, 4, 2, 1)`` at 128 px and ``(12, 6, 3, 2, 1)`` at
    96 px.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    with eval_mode(base), torch.no_grad():
        blank = next(base.parameters()).new_zeros(1, 3, image_size, image_size)
        sizes = tuple(source.shape[-1] for source in base(blank))
    return resized_config(template, image_size, sizes)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode, then restore its former mode."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (26,285,486 for SSD300 with 21 classes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
