"""The feature maps SSD predicts from: VGG-16 with atrous fc6/fc7, then extra layers.

SSD300, shapes for one ``3 x 300 x 300`` image (``C x H x W``)::

    conv1_1 .. conv1_2, pool1            64 x 150 x 150
    conv2_1 .. conv2_2, pool2           128 x  75 x  75
    conv3_1 .. conv3_3, pool3 (ceil)    256 x  38 x  38   ceil_mode: 75 / 2 rounds up to 38
    conv4_1 .. conv4_3                  512 x  38 x  38   -> L2Norm -> source 1
    pool4, conv5_1 .. conv5_3           512 x  19 x  19
    pool5 (3x3, stride 1, pad 1)        512 x  19 x  19   keeps the resolution
    fc6 (3x3, dilation 6), fc7 (1x1)   1024 x  19 x  19   -> source 2
    conv8_1 (1x1), conv8_2 (3x3 s2)     512 x  10 x  10   -> source 3
    conv9_1, conv9_2 (3x3 s2)           256 x   5 x   5   -> source 4
    conv10_1, conv10_2 (3x3, no pad)    256 x   3 x   3   -> source 5
    conv11_1, conv11_2 (3x3, no pad)    256 x   1 x   1   -> source 6

VGG-16 ends with three fully connected layers on a ``512 x 7 x 7`` map. SSD keeps fc6 and fc7 as
convolutions so the network stays fully convolutional, and makes them cheaper: fc6's 4096
``7 x 7`` filters become 1024 ``3 x 3`` filters and fc7 becomes a ``1024 x 1024`` 1x1 conv
(:func:`~ssd_tutorial.weights.load_vgg16_imagenet` subsamples the ImageNet weights). pool5 no
longer halves the map, so fc6 is dilated ("atrous") to see as far as before.

SSD512 has the same base and one more extra level (conv12): sources 64, 32, 16, 8, 4, 2, 1.

SSDLite (:func:`ssdlite_features`) swaps VGG-16 for torchvision's MobileNetV3-Large and every
3x3 conv of the extra layers for a depthwise-separable one; at 320 px its sources are
``672 x 20 x 20`` (inside MobileNet's first stride-32 block), ``960 x 10 x 10`` (its last
layer), then 512 x 5 x 5, 256 x 3 x 3, 256 x 2 x 2 and 128 x 1 x 1.

The module holds the three families of bases the book compares side by side (VGG-16, the tiny
base, MobileNetV3 with SSDLite's extras), each a few small ``nn.Module`` classes; that is why it
is longer than the others. Weights (downloads, ImageNet surgery) live in
:mod:`ssd_tutorial.weights`.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ssd_tutorial.layers import L2Norm

#: Output channels of each 3x3 conv of VGG-16, by stage (conv1_1 .. conv5_3).
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)

#: One extra level: ``(mid_channels, out_channels, kernel_size, stride, padding)``. Each level is
#: a 1x1 conv down to ``mid_channels`` then a ``kernel_size`` conv up to ``out_channels``.
ExtraSpec = tuple[int, int, int, int, int]

#: SSD300's conv8 .. conv11: 19 -> 10 -> 5 -> 3 -> 1.
SSD300_EXTRAS: tuple[ExtraSpec, ...] = (
    (256, 512, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 1, 0),
    (128, 256, 3, 1, 0),
)

#: SSD512's conv8 .. conv12 (the Caffe release): 32 -> 16 -> 8 -> 4 -> 2 -> 1.
SSD512_EXTRAS: tuple[ExtraSpec, ...] = (
    (256, 512, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 4, 1, 1),
)


class VGGAtrous(nn.Module):
    """A VGG network with pool5 at stride 1 and fc6/fc7 as (dilated) convolutions.

    Returns two source maps: the last conv of stage 4 (conv4_3 for VGG-16) through
    :class:`~ssd_tutorial.layers.L2Norm`, and fc7. Layers are named as in the VGG and SSD papers
    (``conv4_3``, ``pool5``, ``fc6``, ...), so ``conv1_to_conv4.conv4_3`` is VGG-16's conv4_3.

    Args:
        stages: output channels of the 3x3 convs of each of the five stages.
        fc_channels: channels of fc6 and fc7 (1024 in SSD).
        dilation: dilation (and padding) of fc6's 3x3 conv (6 in SSD300 and SSD512).
        l2norm_scale: initial weight of the L2Norm on the first source (20 in SSD).
        batch_norm: put a BatchNorm after every conv of the five stages and after fc6 and fc7
            (not in SSD's VGG-16; it lets the small teaching model train from scratch at a high
            learning rate).
        early_pools: in this many of the first three stages, the stage's 2x2 max pool comes
            straight after its last conv, ahead of that conv's BatchNorm and ReLU, which then
            run on a quarter of the pixels. Without batch norm nothing changes (a ReLU and a
            max commute); with it the norm's statistics are taken over the pooled map. The
            tiny model pools its first two stages early (see :func:`tiny_features`).

    Shape:
        ``[B, 3, S, S]`` -> ``[conv4_3 [B, stages[3][-1], S/8, S/8], fc7 [B, fc_channels, S/16,
        S/16]]`` (sizes rounded up: 38 and 19 for S = 300).
    """

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...] = VGG16_STAGES,
        fc_channels: int = 1024,
        dilation: int = 6,
        l2norm_scale: float = 20.0,
        batch_norm: bool = False,
        early_pools: int = 0,
    ) -> None:
        super().__init__()
        if len(stages) != 5 or not all(stages):
            raise ValueError(f"stages must list the conv widths of 5 stages, got {stages}")
        if not 0 <= early_pools <= 3:
            raise ValueError(f"early_pools must be 0 to 3 (pool1 .. pool3), got {early_pools}")
        self.stages = tuple(tuple(s) for s in stages)
        self.fc_channels = fc_channels
        pools = (
            nn.MaxPool2d(2, 2),
            nn.MaxPool2d(2, 2),
            # ceil_mode: an odd map (75 at 300 px) keeps its last row and column: 38, not 37
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        conv1_to_conv4 = []
        in_channels = 3
        for stage, pool in enumerate(pools, start=1):
            layers = _vgg_stage(stage, in_channels, stages[stage - 1], batch_norm)
            # early: right after the last conv, before its norm and ReLU
            at = len(layers) - (2 if batch_norm else 1) if stage <= early_pools else len(layers)
            layers.insert(at, (f"pool{stage}", pool))
            conv1_to_conv4 += layers
            in_channels = stages[stage - 1][-1]
        conv1_to_conv4 += _vgg_stage(4, in_channels, stages[3], batch_norm)
        conv5_to_fc7 = [
            ("pool4", nn.MaxPool2d(2, 2)),
            *_vgg_stage(5, stages[3][-1], stages[4], batch_norm),
            # stride 1: the map stays 19 x 19 instead of shrinking to 10 x 10
            ("pool5", nn.MaxPool2d(3, stride=1, padding=1)),
            ("fc6", nn.Conv2d(stages[4][-1], fc_channels, 3, padding=dilation, dilation=dilation)),
            *_norm("bn6", fc_channels, batch_norm),
            ("relu6", nn.ReLU(inplace=True)),
            ("fc7", nn.Conv2d(fc_channels, fc_channels, 1)),
            *_norm("bn7", fc_channels, batch_norm),
            ("relu7", nn.ReLU(inplace=True)),
        ]
        self.conv1_to_conv4 = nn.Sequential(OrderedDict(conv1_to_conv4))
        self.l2norm = L2Norm(stages[3][-1], scale=l2norm_scale)
        self.conv5_to_fc7 = nn.Sequential(OrderedDict(conv5_to_fc7))
        self.out_channels = [stages[3][-1], fc_channels]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VGG convs as torchvision's ``vgg16`` (Kaiming normal), fc6/fc7 Xavier uniform."""
        for module in self.conv1_to_conv4.modules():
            if isinstance(module, nn.Conv2d):
                _kaiming_init(module)
        for name, module in self.conv5_to_fc7.named_children():
            if isinstance(module, nn.Conv2d):
                if name.startswith("fc"):
                    _xavier_init(module)
                else:
                    _kaiming_init(module)
        self.l2norm.reset_parameters()

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv1_to_conv4(x)  # [B, 512, 38, 38] at 300 px
        conv4_3 = self.l2norm(x)
        fc7 = self.conv5_to_fc7(x)  # [B, 1024, 19, 19]
        return [conv4_3, fc7]


class LevelChain(nn.Module):
    """Levels applied one after the other, each output a source map: the extra layers."""

    def forward(self, x: Tensor) -> list[Tensor]:
        sources = []
        for level in self.children():
            x = level(x)
            sources.append(x)
        return sources


class ExtraLayers(LevelChain):
    """The extra feature layers: each level halves (or shrinks) the previous map.

    Level ``n`` (counting from ``first_level``, 8 in SSD) is ``conv{n}_1`` (1x1) and
    ``conv{n}_2``, each followed by a ReLU; the output of every ``conv{n}_2`` is a source.

    Args:
        in_channels: channels of the map the first level reads (fc7: 1024).
        levels: one :data:`ExtraSpec` per level, e.g. :data:`SSD300_EXTRAS`.
        first_level: number of the first level, used in the layer names.
        batch_norm: a BatchNorm (``bn{n}_1``, ``bn{n}_2``) after every conv (not in SSD).

    Shape:
        ``[B, in_channels, H, W]`` -> list of ``[B, out_channels, H_n, W_n]``, one per level.
    """

    def __init__(
        self,
        in_channels: int,
        levels: tuple[ExtraSpec, ...],
        first_level: int = 8,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = []
        for n, (mid, out, kernel_size, stride, padding) in enumerate(levels, start=first_level):
            level = nn.Sequential(
                OrderedDict(
                    [
                        (f"conv{n}_1", nn.Conv2d(in_channels, mid, 1)),
                        *_norm(f"bn{n}_1", mid, batch_norm),
                        (f"relu{n}_1", nn.ReLU(inplace=True)),
                        (f"conv{n}_2", nn.Conv2d(mid, out, kernel_size, stride, padding)),
                        *_norm(f"bn{n}_2", out, batch_norm),
                        (f"relu{n}_2", nn.ReLU(inplace=True)),
                    ]
                )
            )
            self.add_module(f"conv{n}", level)
            self.out_channels.append(out)
            in_channels = out
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _xavier_init(module)


class MultiScaleFeatures(nn.Module):
    """A backbone followed by extra layers: all the source maps SSD predicts from.

    Args:
        backbone: returns a list of source maps (e.g. :class:`VGGAtrous`: conv4_3 and fc7) and
            has an ``out_channels`` list.
        extras: reads the backbone's last source and returns more (:class:`ExtraLayers`).

    Shape:
        ``[B, 3, S, S]`` -> list of ``[B, out_channels[k], f_k, f_k]``, largest map first.
    """

    def __init__(self, backbone: nn.Module, extras: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.extras = extras
        self.out_channels = [*backbone.out_channels, *extras.out_channels]

    def forward(self, images: Tensor) -> list[Tensor]:
        sources = self.backbone(images)
        return sources + self.extras(sources[-1])


def vgg16_features(extras: tuple[ExtraSpec, ...] = SSD300_EXTRAS) -> MultiScaleFeatures:
    """SSD's VGG-16 base and extra layers (:data:`SSD300_EXTRAS` or :data:`SSD512_EXTRAS`)."""
    backbone = VGGAtrous(VGG16_STAGES, fc_channels=1024, dilation=6)
    return MultiScaleFeatures(backbone, ExtraLayers(1024, extras))


#: The tiny base's five stages: one 3x3 conv each, 16 to 128 channels.
TINY_STAGES: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (96,), (128,))
#: Stages of the tiny base that pool before their batch norm and ReLU (``VGGAtrous``'s
#: ``early_pools``): the 128 x 128 and 64 x 64 maps of stages 1 and 2.
TINY_EARLY_POOLS = 2


def tiny_features(
    stages: tuple[tuple[int, ...], ...] = TINY_STAGES, early_pools: int = TINY_EARLY_POOLS
) -> MultiScaleFeatures:
    """A small VGG-like base for teaching on a CPU: 128 px input, sources 16, 8, 4, 2, 1.

    The same parts as SSD300, thinner: one 3x3 conv per stage (16, 32, 64, 96, 128 channels),
    fc6/fc7 with 128 channels and three extra levels of 96 channels, every conv
    batch-normalised so that it trains from scratch in minutes at a high learning rate.
    Sources: conv4_1 (96 x 16 x 16, through L2Norm), fc7 (128 x 8 x 8), conv8_2 (96 x 4 x 4),
    conv9_2 (96 x 2 x 2), conv10_2 (96 x 1 x 1). fc6 uses dilation 3: on an 8 x 8 map, taps 6 cells
    apart would mostly read padding.

    Stages 1 and 2 pool right after their conv, before its batch norm and ReLU
    (``early_pools``). Their full-resolution maps hold few FLOPs but many bytes: on a CPU the
    norm and the ReLU on them, forward and backward, are memory-bound work that grows with the
    pixels, and run on the pooled maps they cost a quarter of it (chapter 8 times a training
    pass both ways). Each stage is still a conv, a max pool, a norm and a ReLU.

    Args:
        stages: the widths of each stage's 3x3 convs (as in :class:`VGGAtrous`); more convs per
            stage give a deeper base with the same source maps. The fourth stage's last width
            and fc7's 128 channels are the sources' channels.
        early_pools: stages that pool before their norm and ReLU (0 puts every pool last, as
            in VGG).
    """
    backbone = VGGAtrous(
        stages, fc_channels=128, dilation=3, batch_norm=True, early_pools=early_pools
    )
    extras = ExtraLayers(128, ((48, 96, 3, 2, 1),) * 3, batch_norm=True)
    return MultiScaleFeatures(backbone, extras)


#: SSDLite's extra levels (torchvision's ``ssdlite320_mobilenet_v3_large``): the output
#: channels of each; every level halves the map, 10 -> 5 -> 3 -> 2 -> 1 at 320 px.
SSDLITE_EXTRAS: tuple[int, ...] = (512, 256, 256, 128)

#: Index in MobileNetV3-Large's ``features`` of the first block of the stride-16 stage (7) and of
#: the stride-32 stage (13). Each starts with a 1x1 expansion layer that still sees the previous
#: stage's finer map (240 and 672 channels); SSDLite reads its first source there.
MOBILENET_STRIDE16_BLOCK = 7
MOBILENET_STRIDE32_BLOCK = 13

#: BatchNorm of the MobileNet parts, as in torchvision's SSDLite.
_mobile_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def separable_conv(
    in_channels: int, out_channels: int, stride: int = 1, project_norm: bool = True
) -> nn.Sequential:
    """A depthwise-separable 3x3 convolution (MobileNet): ``depthwise``, then ``pointwise``.

    ``depthwise`` is a 3x3 conv with one filter per channel (``groups = in_channels``) + BN +
    ReLU6; ``pointwise`` a 1x1 conv that mixes the channels. Per output position that is
    ``9 * in + in * out`` multiply-adds instead of a full 3x3 conv's ``9 * in * out``.

    Args:
        stride: of the depthwise conv (2 halves the map).
        project_norm: BN + ReLU6 after the pointwise conv (feature layers); ``False`` gives a
            plain conv with a bias (predictors, whose outputs are raw offsets and logits).

    Shape:
        ``[B, in_channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """
    if project_norm:
        pointwise = Conv2dNormActivation(
            in_channels, out_channels, 1, norm_layer=_mobile_norm, activation_layer=nn.ReLU6
        )
    else:
        pointwise = nn.Conv2d(in_channels, out_channels, 1)
    depthwise = Conv2dNormActivation(
        in_channels,
        in_channels,
        3,
        stride,
        groups=in_channels,
        norm_layer=_mobile_norm,
        activation_layer=nn.ReLU6,
    )
    return nn.Sequential(OrderedDict([("depthwise", depthwise), ("pointwise", pointwise)]))


class MobileNetV3Backbone(nn.Module):
    """torchvision's MobileNetV3-Large feature layers, giving SSDLite's backbone sources.

    MobileNetV3's blocks are inverted residuals: a 1x1 conv expands the channels (e.g. 112 to
    672), a depthwise conv filters them (with stride 2 in the first block of a stage), a 1x1 conv
    projects them back down. SSDLite (MobileNetV2 paper, section 6.2; MobileNetV3, section 6.3)
    takes a source inside the first block of a stage, after its expansion layer: the map still
    has the previous stage's resolution, and far more channels than that stage's output.

    ``features`` is torchvision's ``mobilenet_v3_large().features`` unchanged (so ImageNet
    weights load by name, :func:`~ssd_tutorial.weights.load_mobilenet_v3_imagenet`); ``forward``
    only reads the expansion outputs on the way.

    Args:
        expansion_blocks: the blocks whose expansion output is a source, e.g.
            ``(MOBILENET_STRIDE32_BLOCK,)`` for SSDLite320 (672 channels at stride 16);
            :data:`MOBILENET_STRIDE16_BLOCK` adds a stride-8 source (240 channels).
        reduced_tail: halve the channels of the last stage (last layer 480 instead of 960), as
            torchvision's SSDLite does when it trains from scratch (MobileNetV3 paper, table 6).
            ImageNet weights need the full tail.

    Shape:
        ``[B, 3, S, S]`` -> one ``[B, C, S / s, S / s]`` per expansion block (``s`` = 8 or 16),
        then the last layer ``[B, 960, S / 32, S / 32]`` (sizes rounded up).
    """

    def __init__(
        self,
        expansion_blocks: tuple[int, ...] = (MOBILENET_STRIDE32_BLOCK,),
        reduced_tail: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_large

        self.features = mobilenet_v3_large(
            norm_layer=_mobile_norm, reduced_tail=reduced_tail
        ).features
        self.expansion_blocks = tuple(sorted(expansion_blocks))
        self.reduced_tail = reduced_tail
        for index in self.expansion_blocks:
            if not 0 <= index < len(self.features) or not _expands_then_strides(
                self.features[index]
            ):
                raise ValueError(
                    f"expansion_blocks must be strided MobileNetV3-Large blocks such as "
                    f"{MOBILENET_STRIDE16_BLOCK} or {MOBILENET_STRIDE32_BLOCK}, got {index}"
                )
        self.out_channels = [self.features[i].block[0].out_channels for i in self.expansion_blocks]
        self.out_channels.append(self.features[-1].out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convs from N(0, 0.03), zero biases: torchvision's SSDLite trained from scratch."""
        _normal_init(self.features)

    def forward(self, images: Tensor) -> list[Tensor]:
        sources, x, start = [], images, 0
        for index in self.expansion_blocks:
            layers = self.features[index].block
            x = layers[0](self.features[start:index](x))  # the expansion layer's output
            sources.append(x)
            x = layers[1:](x)
            start = index + 1
        sources.append(self.features[start:](x))
        return sources


class SeparableExtraLayers(LevelChain):
    """SSDLite's extra layers: each level a 1x1 conv to half its width, then a separable conv.

    Level ``n`` (from 1) is ``extra{n}``: ``reduce`` (1x1 + BN + ReLU6 down to ``out / 2``
    channels), then :func:`separable_conv` with stride 2 up to ``out`` channels, as in
    torchvision's SSDLite. It replaces SSD's conv{n}_1 (1x1) and conv{n}_2 (full 3x3).

    Args:
        in_channels: channels of the map the first level reads.
        out_channels: channels of each level's output, e.g. :data:`SSDLITE_EXTRAS`.

    Shape:
        ``[B, in_channels, H, W]`` -> one ``[B, out_channels[n], H_n, W_n]`` per level,
        ``H_n = ceil(H_(n-1) / 2)``.
    """

    def __init__(self, in_channels: int, out_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = list(out_channels)
        for n, out in enumerate(out_channels, start=1):
            reduce = Conv2dNormActivation(
                in_channels, out // 2, 1, norm_layer=_mobile_norm, activation_layer=nn.ReLU6
            )
            level = nn.Sequential(
                OrderedDict([("reduce", reduce), ("separable", separable_conv(out // 2, out, 2))])
            )
            self.add_module(f"extra{n}", level)
            in_channels = out
        _normal_init(self)


def ssdlite_features(reduced_tail: bool = False) -> MultiScaleFeatures:
    """SSDLite320's base: MobileNetV3-Large (sources inside block 13 and at its last layer) and
    four separable extra levels (:data:`SSDLITE_EXTRAS`). Sources at 320 px: 20, 10, 5, 3, 2, 1.

    ``reduced_tail=True`` gives torchvision's ``ssdlite320_mobilenet_v3_large`` without
    pretrained backbone exactly (same layers and parameter count).
    """
    backbone = MobileNetV3Backbone((MOBILENET_STRIDE32_BLOCK,), reduced_tail)
    return MultiScaleFeatures(
        backbone, SeparableExtraLayers(backbone.out_channels[-1], SSDLITE_EXTRAS)
    )


def ssdlite_tiny_features() -> MultiScaleFeatures:
    """SSDLite at the tiny model's 128 px, with the tiny model's maps 16, 8, 4, 2, 1.

    MobileNetV3-Large with a third source inside block 7 (240 x 16 x 16, stride 8, like
    ssd_tiny's conv4_1 map) and two separable extra levels (256 x 2 x 2, 128 x 1 x 1).
    """
    backbone = MobileNetV3Backbone((MOBILENET_STRIDE16_BLOCK, MOBILENET_STRIDE32_BLOCK))
    return MultiScaleFeatures(backbone, SeparableExtraLayers(backbone.out_channels[-1], (256, 128)))


def _norm(name: str, channels: int, batch_norm: bool) -> list[tuple[str, nn.Module]]:
    """``[(name, BatchNorm2d(channels))]`` if ``batch_norm``, else no layer."""
    return [(name, nn.BatchNorm2d(channels))] if batch_norm else []


def _vgg_stage(
    stage: int, in_channels: int, widths: tuple[int, ...], batch_norm: bool = False
) -> list[tuple[str, Any]]:
    """Named 3x3 convs (optionally batch-normalised) and ReLUs of one VGG stage:
    ``conv{stage}_{i}``, ``bn{stage}_{i}``, ``relu{stage}_{i}``."""
    layers: list[tuple[str, Any]] = []
    for i, out_channels in enumerate(widths, start=1):
        layers.append((f"conv{stage}_{i}", nn.Conv2d(in_channels, out_channels, 3, padding=1)))
        layers += _norm(f"bn{stage}_{i}", out_channels, batch_norm)
        layers.append((f"relu{stage}_{i}", nn.ReLU(inplace=True)))
        in_channels = out_channels
    return layers


def _expands_then_strides(block: nn.Module) -> bool:
    """An inverted residual block that opens with a 1x1 expansion, then a depthwise conv of
    stride 2. Such a block has no residual connection (its input has another size), so running
    its layers one by one computes exactly what the block does."""
    layers = getattr(block, "block", None)
    if layers is None or len(layers) < 2:
        return False
    expand, depthwise = layers[0][0], layers[1][0]
    return expand.kernel_size == (1, 1) and depthwise.groups > 1 and depthwise.stride == (2, 2)


def _normal_init(module: nn.Module) -> None:
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.normal_(conv.weight, std=0.03)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


def _kaiming_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)


def _xavier_init(conv: nn.Conv2d) -> None:
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
