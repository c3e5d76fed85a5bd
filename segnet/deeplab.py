"""DeepLabV3 with a decoder (DeepLabV3+ style) on the ResNet-50 of `segnet.backbone`, the four variants of
the study, the three that put edges into the loss instead of the input, and `build_model`, their builder.

    input -> ResNet50 -> layer4 -> ASPP ------------------> upsample to layer1's size --+
                      -> layer1 -> 1x1 conv to 48 (low_level) --------------------------+-> concat
    -> two 3x3 convs of 256 (the decoder's features, 1/4 of the input)
    -> vanilla, dlse, dlse-sf:  1x1 classifier, bilinear upsampling to the input size
    -> dlse-hed:  EdgeSkip (upsample, concat with the 4-channel input, 3x3 conv to 64) -> 1x1 classifier

dl-boundary, dl-hed-head and dl-hed-loss are vanilla's network (RGB input, no SE): only their training
differs, through the training-only wrapper `TrainingNetwork`, so their checkpoints' models evaluate
and predict at vanilla's cost, without HED:

    decoder features (256, 1/4) --+
    low_level (48, 1/4) ----------+-> concat -> 3x3 conv to 64, BN, ReLU -> 1x1 conv to 1 -> upsample
                                     = BoundaryHead: one boundary logit per pixel (dl-boundary, dl-hed-head)

`ASPP`, `ASPPConv` and `ASPPPooling` are torchvision's `models.segmentation.deeplabv3` blocks, parameter
names included (`convs.0` 1x1, `convs.1..3` atrous 3x3, `convs.4` image pooling, `project`). Every resize
is bilinear with `size=` (never `scale_factor`), so inputs of any size work. `forward` returns the logits
(N, num_classes, H, W), not torchvision's dict.

`--aux-loss` trains with torchvision's auxiliary `FCNHead` on layer3, and dl-boundary and dl-hed-head with
a `BoundaryHead`: the training-only heads wrap the model (`TrainingNetwork`) instead of living in it, so
the model, its state dict and everything that evaluates or predicts are the same with or without them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from segnet.backbone import (
    REPLACE_STRIDE_WITH_DILATION,
    Features,
    ResNet50,
    load_torchvision_weights,
    resolve_backbone_weights,
)
from segnet.checkpoint import TRAINING_HEADS
from segnet.errors import SegnetOptionError
from segnet.ops import GlobalAverage, resize

VARIANTS = ("vanilla", "dlse", "dlse-sf", "dlse-hed")  # the study's four, what `segnet study` runs by default
# vanilla's network, trained with edges in the loss (issue 19): a boundary head on label boundaries, the
# same head on HED's edges, HED's edges weighting the cross-entropy
EDGE_LOSS_VARIANTS = ("dl-boundary", "dl-hed-head", "dl-hed-loss")
ALL_VARIANTS = VARIANTS + EDGE_LOSS_VARIANTS
OUTPUT_STRIDES = tuple(sorted(REPLACE_STRIDE_WITH_DILATION))
# The atrous rates of DeepLabV3 (Chen et al. 2017) at output stride 16; doubled at 8.
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48  # the decoder's projection of layer1 (DeepLabV3+)
EDGE_SKIP_REDUCED = 32  # decoder channels that EdgeSkip upsamples to full resolution
EDGE_SKIP_CHANNELS = 64  # output of EdgeSkip's 3x3 convolution, the classifier's input for dlse-hed
LAYER3_CHANNELS = 1024  # the auxiliary head's input
AUX_DROPOUT = 0.1  # torchvision's FCNHead and mmsegmentation's auxiliary head
BOUNDARY_HEAD_CHANNELS = 64  # the boundary head's hidden 3x3 convolution
SE_INITS = ("default", "identity")  # --se-init: the SE gates' form and initialisation (segnet.backbone)
EDGE_INITS = ("default", "zero", "mean")  # --edge-init: dlse-hed's conv1 filter of the edge channel


@dataclass(frozen=True)
class VariantSpec:
    """What a variant changes: the SE gate of layer1-3, the input channels, the long edge skip, and what
    its training adds (never part of the model that evaluates and predicts).

    `boundary_target`: what the training-only `BoundaryHead` learns, "labels" (the label map's class
    boundaries) or "edges" (HED's edge channel as soft targets); None: no head. `edge_weighted_ce`: the
    cross-entropy of each pixel weighted by 1 + alpha * edge / 255 (`segnet.losses`).
    """

    se: str | None
    in_channels: int
    edge_skip: bool
    boundary_target: str | None = None
    edge_weighted_ce: bool = False

    @property
    def train_channels(self) -> int:
        """The channels the training loader reads: 4 (RGB + edge) where the edge enters the input or the
        loss, else 3. The model itself takes `in_channels`."""
        return 4 if self.in_channels == 4 or self.boundary_target == "edges" or self.edge_weighted_ce else 3


VARIANT_SPECS = {
    "vanilla": VariantSpec(se=None, in_channels=3, edge_skip=False),
    "dlse": VariantSpec(se="sigmoid", in_channels=3, edge_skip=False),
    "dlse-sf": VariantSpec(se="softmax", in_channels=3, edge_skip=False),
    "dlse-hed": VariantSpec(se="sigmoid", in_channels=4, edge_skip=True),
    "dl-boundary": VariantSpec(se=None, in_channels=3, edge_skip=False, boundary_target="labels"),
    "dl-hed-head": VariantSpec(se=None, in_channels=3, edge_skip=False, boundary_target="edges"),
    "dl-hed-loss": VariantSpec(se=None, in_channels=3, edge_skip=False, edge_weighted_ce=True),
}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """A convolution without bias (BatchNorm has one), BatchNorm, ReLU: the unit of every head block."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class ASPPConv(nn.Sequential):
    """torchvision's ASPP branch: 3x3 atrous convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """torchvision's image-pooling branch: global average, 1x1 convolution, BatchNorm, ReLU, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(GlobalAverage(), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return resize(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """torchvision's Atrous Spatial Pyramid Pooling: a 1x1 branch, one atrous branch per rate, image pooling,
    concatenated and projected to `out_channels` (1x1 conv, BatchNorm, ReLU, Dropout 0.5)."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = ASPP_CHANNELS) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*conv_bn_relu(in_channels, out_channels, 1))]
        branches += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DecoderFeatures(NamedTuple):
    """What the decoder computes, both at 1/4 of the input."""

    low_level: Tensor  # the 48-channel projection of layer1
    decoded: Tensor  # the 256 channels the classifier reads


class Decoder(nn.Module):
    """DeepLabV3+'s decoder: the ASPP output upsampled to layer1's size (1/4), concatenated with a 48-channel
    1x1 projection of layer1, then two 3x3 convolutions of 256 (each with BatchNorm and ReLU)."""

    def __init__(self, low_level_channels: int = 256, aspp_channels: int = ASPP_CHANNELS,
                 channels: int = ASPP_CHANNELS) -> None:
        super().__init__()
        self.low_level = nn.Sequential(*conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS, 1))
        self.fuse = nn.Sequential(*conv_bn_relu(aspp_channels + LOW_LEVEL_CHANNELS, channels, 3),
                                  *conv_bn_relu(channels, channels, 3))

    def forward(self, layer1: Tensor, aspp: Tensor) -> Tensor:
        return self.features(layer1, aspp).decoded

    def features(self, layer1: Tensor, aspp: Tensor) -> DecoderFeatures:
        """The decoder's output and the low-level projection it was made from (the boundary head reads both)."""
        low_level = self.low_level(layer1)
        return DecoderFeatures(low_level, self.fuse(torch.cat([resize(aspp, low_level.shape[-2:]), low_level], dim=1)))


class EdgeSkip(nn.Module):
    """dlse-hed's long skip: the decoder's features upsampled to the input size, concatenated with the
    full-resolution input (R, G, B, edge), then a 3x3 convolution to 64 with BatchNorm and ReLU, so the
    boundaries are seen again right before the classifier.

    The 256 decoder channels first pass a 1x1 convolution to 32 (`reduce`, linear) at 1/4 resolution:
    a 1x1 convolution commutes with bilinear upsampling, so this is exactly upsampling the 256 channels
    and giving the 3x3 convolution a rank-32 factorisation over them, at 1/8 of the full-resolution
    memory and compute.
    """

    def __init__(self, in_channels: int, features: int = ASPP_CHANNELS, reduced: int = EDGE_SKIP_REDUCED,
                 out_channels: int = EDGE_SKIP_CHANNELS) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(features, reduced, 1, bias=False)
        self.fuse = nn.Sequential(*conv_bn_relu(reduced + in_channels, out_channels, 3))

    def forward(self, features: Tensor, image: Tensor) -> Tensor:
        return self.fuse(torch.cat([resize(self.reduce(features), image.shape[-2:]), image], dim=1))


class DeepLabV3(nn.Module):
    """One variant of the study (see `VARIANT_SPECS`), randomly initialised; `build_model` also loads the
    backbone's weights. `forward(x)` takes (N, in_channels, H, W) and returns logits (N, num_classes, H, W).

    Attributes:
        variant, in_channels: as named.
        model_args: the keyword arguments of `build_model` besides variant and backbone_weights;
            `build_model(model.variant, **model.model_args)` rebuilds the same architecture.
        uncovered_parameters: parameter names the backbone checkpoint did not provide (all of them until
            `build_model` loads one).
    """

    def __init__(self, variant: str, num_classes: int = 19, output_stride: int = 16, sf_scale: float = 2.0,
                 sf_rescale: bool = False, se_init: str = "default") -> None:
        super().__init__()
        check_options(variant, output_stride, se_init)
        spec = VARIANT_SPECS[variant]
        self.variant = variant
        self.in_channels = spec.in_channels
        self.model_args = {"num_classes": int(num_classes), "output_stride": int(output_stride),
                           "sf_scale": float(sf_scale), "sf_rescale": bool(sf_rescale)}
        if se_init != "default":  # checkpoints of the default (and of runs before the option) keep their args
            self.model_args["se_init"] = se_init
        self.backbone = ResNet50(spec.in_channels, output_stride, spec.se, sf_scale, sf_rescale,
                                 se_identity=se_init == "identity")
        self.aspp = ASPP(2048, ASPP_RATES[output_stride])
        self.decoder = Decoder()
        self.edge_skip = EdgeSkip(spec.in_channels) if spec.edge_skip else None
        self.classifier = nn.Conv2d(EDGE_SKIP_CHANNELS if spec.edge_skip else ASPP_CHANNELS, num_classes, 1)
        self.uncovered_parameters = [name for name, _ in self.named_parameters()]

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.backbone(x), x)

    def decode(self, features: Features, x: Tensor) -> Tensor:
        """The logits of input `x` from its backbone `features`: ASPP, decoder, classifier."""
        return self.classify(self.decoder_features(features).decoded, x)

    def decoder_features(self, features: Features) -> DecoderFeatures:
        """ASPP on layer4 and the decoder on it and layer1."""
        return self.decoder.features(features.layer1, self.aspp(features.layer4))

    def classify(self, decoded: Tensor, x: Tensor) -> Tensor:
        """The logits at the size of input `x` from the decoder's output (through the edge skip for dlse-hed)."""
        if self.edge_skip is None:
            # The classifier is a 1x1 convolution: applying it before upsampling gives the same logits
            # as after, with 19 channels to upsample instead of 256.
            return resize(self.classifier(decoded), x.shape[-2:])
        return self.classifier(self.edge_skip(decoded, x))


class FCNHead(nn.Sequential):
    """torchvision's FCNHead (its DeepLabV3's `aux_classifier`), key names included: a 3x3 convolution to
    in_channels / 4 without bias, BatchNorm, ReLU, Dropout 0.1, a 1x1 classifier with bias."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        channels = in_channels // 4
        super().__init__(*conv_bn_relu(in_channels, channels, 3), nn.Dropout(AUX_DROPOUT),
                         nn.Conv2d(channels, num_classes, 1))


class BoundaryHead(nn.Module):
    """The training-only boundary head of dl-boundary and dl-hed-head: the decoder's 256 channels and the
    48-channel low-level projection of layer1 (both at 1/4), concatenated, a 3x3 convolution to 64 with
    BatchNorm and ReLU, and a 1x1 convolution to one boundary logit per pixel, upsampled bilinearly to
    the input size (the 1x1 convolution before the upsampling, as the classifier's)."""

    def __init__(self, decoded: int = ASPP_CHANNELS, low_level: int = LOW_LEVEL_CHANNELS,
                 channels: int = BOUNDARY_HEAD_CHANNELS) -> None:
        super().__init__()
        self.fuse = nn.Sequential(*conv_bn_relu(decoded + low_level, channels, 3))
        self.logit = nn.Conv2d(channels, 1, 1)

    def forward(self, features: DecoderFeatures, size: Sequence[int]) -> Tensor:
        """(N, H, W) boundary logits at `size` (H, W)."""
        fused = self.fuse(torch.cat([features.decoded, features.low_level], dim=1))
        return resize(self.logit(fused), size)[:, 0]


class TrainingOutputs(NamedTuple):
    """What `TrainingNetwork` returns; the loss reads what the variant's training uses (`segnet.losses`)."""

    out: Tensor  # the model's logits (N, num_classes, H, W)
    aux: Tensor | None = None  # the auxiliary head's logits (N, num_classes, H, W), with --aux-loss
    boundary: Tensor | None = None  # the boundary head's logits (N, H, W): dl-boundary, dl-hed-head
    edge: Tensor | None = None  # the input's edge channel, edge / 255 in [0, 1] (N, H, W), where the input has one


class TrainingNetwork(nn.Module):
    """A model and its training-only heads: with `aux_head`, torchvision's auxiliary FCN head on layer3
    (`deeplabv3_resnet50(aux_loss=True)`, mmsegmentation's DeepLabV3 R-50); for dl-boundary and
    dl-hed-head, the `BoundaryHead`. `forward(x)` returns `TrainingOutputs`; every parameter is used
    in every step, as DistributedDataParallel expects.

    `x` may hold one channel more than the model takes (R, G, B, edge for dl-hed-head and dl-hed-loss,
    whose model reads R, G, B): the model gets the first `model.in_channels`, and the edge channel is
    handed to the loss as `TrainingOutputs.edge`.

    `model` is the bare `DeepLabV3` (what validates, is saved as the checkpoint's model and predicts);
    `aux_classifier` and `boundary_head` (None where absent) are saved apart from it, each under its
    own checkpoint key (`TRAINING_HEADS`).
    """

    def __init__(self, model: DeepLabV3, aux_head: bool = True) -> None:
        super().__init__()
        self.model = model
        self.aux_classifier = FCNHead(LAYER3_CHANNELS, model.model_args["num_classes"]) if aux_head else None
        self.boundary_head = BoundaryHead() if VARIANT_SPECS[model.variant].boundary_target else None

    def forward(self, x: Tensor) -> TrainingOutputs:
        image = x[:, : self.model.in_channels]
        if image.shape[1] != x.shape[1]:  # a dense copy in the input's memory layout, as convolutions want
            channels_last = x.is_contiguous(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        size = x.shape[-2:]
        features = self.model.backbone(image)
        decoded = self.model.decoder_features(features)
        out = self.model.classify(decoded.decoded, image)
        aux = None if self.aux_classifier is None else resize(self.aux_classifier(features.layer3), size)
        boundary = None if self.boundary_head is None else self.boundary_head(decoded, size)
        edge = x[:, self.model.in_channels] if x.shape[1] > self.model.in_channels else None
        return TrainingOutputs(out, aux, boundary, edge)

    def heads(self) -> dict[str, nn.Module]:
        """The training-only heads present, by their checkpoint keys (`segnet.checkpoint.TRAINING_HEADS`)."""
        return {name: getattr(self, name) for name in TRAINING_HEADS if getattr(self, name) is not None}


def training_network(model: DeepLabV3, aux_head: bool = False) -> nn.Module:
    """What trains `model`: the model itself where its training needs nothing else (its logits are the
    loss's input), else a `TrainingNetwork` around it (an auxiliary head, a boundary head, the edge
    channel for the loss)."""
    spec = VARIANT_SPECS[model.variant]
    if not aux_head and spec.train_channels == model.in_channels and spec.boundary_target is None:
        return model
    return TrainingNetwork(model, aux_head)


def check_options(variant: str, output_stride: int, se_init: str = "default", edge_init: str = "default") -> None:
    """Raise SegnetOptionError, naming the option as the CLI spells it, for an unknown variant, stride or
    initialisation."""
    if variant not in VARIANT_SPECS:
        raise SegnetOptionError(f"--variant {variant}: unknown variant; choose one of {', '.join(ALL_VARIANTS)}")
    if output_stride not in OUTPUT_STRIDES:
        raise SegnetOptionError(
            f"--output-stride {output_stride}: unsupported output stride; choose "
            f"{' or '.join(map(str, OUTPUT_STRIDES))}")
    for option, value, choices in (("--se-init", se_init, SE_INITS), ("--edge-init", edge_init, EDGE_INITS)):
        if value not in choices:
            raise SegnetOptionError(f"{option} {value}: choose one of {', '.join(choices)}")


def build_model(variant: str, num_classes: int = 19, output_stride: int = 16,
                backbone_weights: str | os.PathLike = "none", sf_scale: float = 2.0,
                sf_rescale: bool = False, se_init: str = "default", edge_init: str = "default") -> DeepLabV3:
    """Build one of `ALL_VARIANTS`, its backbone initialised from `backbone_weights`.

    Args:
        variant: vanilla (no SE), dlse (sigmoid SE), dlse-sf (softmax SE), dlse-hed (sigmoid SE, input
            R, G, B, edge, and the long edge skip); dl-boundary, dl-hed-head, dl-hed-loss (vanilla's
            network; their training differs: `TrainingNetwork`, `segnet.losses`).
        output_stride: 16 or 8 (ASPP rates 6/12/18 or 12/24/36).
        backbone_weights: "none" (random, torchvision's initialisation), "imagenet" (torchvision's ResNet-50
            file in `$TORCH_HOME/hub/checkpoints`, never downloaded) or the path of a ResNet-50 file in
            torchvision's key names: a torch file or a safetensors one (timm's, the Hugging Face hub's).
        sf_scale, sf_rescale: dlse-sf's softmax gates (see `segnet.backbone.SqueezeExcitation`); kept in
            `model_args` for every variant, used by dlse-sf only.
        se_init: "default" (sigmoid or softmax gates, torchvision's initialisation) or "identity" (gates
            that start at exactly 1: `SqueezeExcitation`'s `identity`); in `model_args` when not the
            default, used by the SE variants only.
        edge_init: dlse-hed's conv1 filter of the edge channel: "default" (the mean of the RGB filters
            with backbone weights, random without), "zero" (dlse-hed starts as dlse with the same weights
            would) or "mean" (the mean of the RGB filters, random ones too). An initialisation only, not
            in `model_args`; used by dlse-hed only.

    Raises:
        SegnetOptionError: unknown variant, output stride or initialisation.
        SegnetError: the backbone checkpoint is missing, unreadable or not a torchvision ResNet-50.
    """
    check_options(variant, output_stride, se_init, edge_init)
    path = resolve_backbone_weights(backbone_weights)
    model = DeepLabV3(variant, num_classes, output_stride, sf_scale, sf_rescale, se_init)
    if path is not None:
        backbone_uncovered = load_torchvision_weights(model.backbone, path)
        model.uncovered_parameters = [f"backbone.{name}" for name in backbone_uncovered] + [
            name for name, _ in model.named_parameters() if not name.startswith("backbone.")]
    if model.in_channels == 4 and edge_init != "default":
        init_edge_filter(model.backbone.conv1, edge_init)
    return model


def init_edge_filter(conv1: nn.Conv2d, edge_init: str) -> None:
    """Set the filter of conv1's 4th (edge) input channel: "zero", or "mean" of the three RGB filters."""
    with torch.no_grad():
        weight = conv1.weight
        weight[:, 3] = 0 if edge_init == "zero" else weight[:, :3].mean(dim=1)
