"""ResNet-50 V1.5, the backbone of the DeepLab variants, with optional Squeeze-and-Excitation gates, and the
reader of ResNet-50 weights in torchvision's key names: torchvision's ImageNet checkpoints (torch files) and
the safetensors files of timm and the Hugging Face hub.

The state-dict keys and shapes are torchvision's `resnet50` without `fc` (`conv1`, `bn1`,
`layer{1..4}.{i}.conv{1..3}`, `.bn{1..3}`, `.downsample.{0,1}`): a torchvision checkpoint loads strictly,
and these names never change. SE gates add `layer{1..3}.{i}.se.fc{1,2}.{weight,bias}`, nothing else.

V1.5: the stride of a bottleneck sits in its 3x3 convolution. Output stride 16 dilates layer4 (stride 1,
dilation 2), 8 also layer3: torchvision's `replace_stride_with_dilation` [F, F, T] and [F, T, T].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from torch import Tensor, nn

from segnet.checkpoint import load_torch_file
from segnet.errors import SegnetError
from segnet.ops import GlobalAverage

# (planes, blocks) of layer1..layer4; a block outputs 4 x planes channels
RESNET50_LAYERS = ((64, 3), (128, 4), (256, 6), (512, 3))
# output stride -> torchvision's replace_stride_with_dilation for layer2, layer3, layer4
REPLACE_STRIDE_WITH_DILATION = {16: (False, False, True), 8: (False, True, True)}
SE_GATES = ("sigmoid", "softmax")
SE_LAYERS = ("layer1", "layer2", "layer3")
SE_REDUCTION = 16

# torchvision's file names (the cache keeps the download's name): IMAGENET1K_V1 first, the weights
# torchvision's own DeepLabV3 backbone starts from; IMAGENET1K_V2 if only that one is there.
IMAGENET_CHECKPOINTS = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")
# Where a checkpoint leaves the 4th (edge) input channel of conv1: it is filled with the mean RGB filter.
EDGE_FILTER = "conv1.weight[:, 3]"
# A safetensors file opens with its JSON header's length (8 bytes, little-endian) and then the header's "{";
# safetensors refuses a header over 100 MB, so a larger length says the file is something else.
SAFETENSORS_MAX_HEADER = 100_000_000
SAFETENSORS_SUFFIX = ".safetensors"
# How many keys that do not fit a layout error names; it counts the rest.
LAYOUT_PROBLEMS_SHOWN = 4


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): x * gate(x), gate from global pooling, C -> C/16 -> C.

    Parameter names are those of torchvision's `ops.SqueezeExcitation` (`fc1`, `fc2`, 1x1 convs with bias).

    Args:
        channels: C, the channels of the gated tensor.
        gate: "sigmoid" (SE) or "softmax" (SE-SF: a softmax over the channels, whose largest value is
            multiplied by `sf_scale`).
        sf_scale: factor of the largest softmax gate (softmax only).
        sf_rescale: multiply the softmax gates by C (softmax only). Softmax gates average 1/C, which scales
            the residual branch down C-fold; rescaled they average 1, as sigmoid gates roughly do.
        identity: gates that start at exactly 1 (`--se-init identity`), so a pretrained residual branch
            is unchanged at the start: `fc2` (the excitation's last convolution) starts at zero, and the
            gates take a form that is 1 where its logits are 0: 2 sigmoid(z) instead of sigmoid(z)
            (which starts at 0.5 and halves every branch); for softmax, C softmax(z) (`sf_rescale`
            implied), with the `sf_scale` boost only where one channel's gate is strictly the highest
            (all tie at the start). The form changes the function, so checkpoints record it
            (`model_args["se_init"]`).
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION, gate: str = "sigmoid",
                 sf_scale: float = 2.0, sf_rescale: bool = False, identity: bool = False) -> None:
        super().__init__()
        if gate not in SE_GATES:
            raise ValueError(f"gate must be one of {', '.join(SE_GATES)}, not {gate!r}")
        self.gate = gate
        self.sf_scale = float(sf_scale)
        self.sf_rescale = bool(sf_rescale) or (identity and gate == "softmax")
        self.identity = bool(identity)
        self.avgpool = GlobalAverage()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def gates(self, x: Tensor) -> Tensor:
        """The per-channel gates (N, C, 1, 1) that `forward` multiplies `x` with."""
        logits = self.fc2(self.relu(self.fc1(self.avgpool(x))))
        if self.gate == "sigmoid":
            return 2 * torch.sigmoid(logits) if self.identity else torch.sigmoid(logits)
        gates = torch.softmax(logits, dim=1)
        if self.sf_rescale:
            gates = gates * gates.shape[1]
        top = gates.argmax(dim=1, keepdim=True)
        scale = torch.full_like(top, self.sf_scale, dtype=gates.dtype)
        if self.identity:  # no boost where the highest gate is shared (every gate, at the start)
            shared = (gates == gates.amax(dim=1, keepdim=True)).sum(dim=1, keepdim=True) > 1
            scale = torch.where(shared, torch.ones_like(scale), scale)
        boost = torch.ones_like(gates).scatter_(1, top, scale)
        return gates * boost

    def start_as_identity(self) -> None:
        """Zero `fc2`, so that identity gates start at exactly 1."""
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gates(x)

    def extra_repr(self) -> str:
        identity = ", identity" if self.identity else ""
        if self.gate == "sigmoid":
            return f"gate=sigmoid{identity}"
        return f"gate=softmax, sf_scale={self.sf_scale}, sf_rescale={self.sf_rescale}{identity}"


class Bottleneck(nn.Module):
    """torchvision's ResNet V1.5 bottleneck (1x1, 3x3 with the stride, 1x1 x4), with an optional SE block
    on the residual branch after bn3, before the addition (as in SE-ResNet)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, se: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.se = se
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class Features(NamedTuple):
    """What the backbone hands the decoder."""

    layer1: Tensor  # 256 channels, 1/4 of the input
    layer3: Tensor  # 1024 channels, 1/16 of the input (1/8 at output stride 8): the auxiliary head's input
    layer4: Tensor  # 2048 channels, 1/output_stride of the input


class ResNet50(nn.Module):
    """ResNet-50 V1.5 without `avgpool` and `fc`; `forward` returns the layer1, layer3 and layer4 features.

    Args:
        in_channels: 3 (RGB) or 4 (RGB + HED edge map).
        output_stride: 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
        se: None, "sigmoid" or "softmax": an SE block of that gate in every bottleneck of layer1-3
            (none in layer4); `sf_scale`, `sf_rescale` and `se_identity` (`identity`) as in
            `SqueezeExcitation`.
    """

    def __init__(self, in_channels: int = 3, output_stride: int = 16, se: str | None = None,
                 sf_scale: float = 2.0, sf_rescale: bool = False, se_identity: bool = False) -> None:
        super().__init__()
        if in_channels not in (3, 4):
            raise ValueError(f"in_channels must be 3 or 4, not {in_channels!r}")
        if output_stride not in REPLACE_STRIDE_WITH_DILATION:
            raise ValueError(f"output_stride must be 8 or 16, not {output_stride!r}")
        if se is not None and se not in SE_GATES:
            raise ValueError(f"se must be None or one of {', '.join(SE_GATES)}, not {se!r}")
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        inplanes, dilation = 64, 1
        dilate = (False, *REPLACE_STRIDE_WITH_DILATION[output_stride])
        for index, (planes, blocks) in enumerate(RESNET50_LAYERS):
            name = f"layer{index + 1}"
            se_block = None
            if se is not None and name in SE_LAYERS:
                se_block = partial(SqueezeExcitation, gate=se, sf_scale=sf_scale, sf_rescale=sf_rescale,
                                   identity=se_identity)
            layer, dilation = _make_layer(inplanes, planes, blocks, 1 if index == 0 else 2, dilation,
                                          dilate[index], se_block)
            self.add_module(name, layer)
            inplanes = planes * Bottleneck.expansion

        # torchvision's initialisation (what "--backbone-weights none" trains from).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, SqueezeExcitation) and module.identity:
                module.start_as_identity()

    def forward(self, x: Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer1 = self.layer1(x)
        layer3 = self.layer3(self.layer2(layer1))
        return Features(layer1, layer3, self.layer4(layer3))


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int, dilate: bool,
                se_block: Callable[[int], nn.Module] | None) -> tuple[nn.Sequential, int]:
    """One stage of bottlenecks and the dilation after it, as torchvision's `ResNet._make_layer`: a dilated
    stage trades its stride for dilation, and its first block keeps the previous stage's dilation."""
    previous_dilation = dilation
    if dilate:
        dilation *= stride
        stride = 1
    channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != channels:
        downsample = nn.Sequential(nn.Conv2d(inplanes, channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(channels))
    layers = []
    for index in range(blocks):
        se = None if se_block is None else se_block(channels)
        if index == 0:
            layers.append(Bottleneck(inplanes, planes, stride, previous_dilation, downsample, se))
        else:
            layers.append(Bottleneck(channels, planes, 1, dilation, None, se))
    return nn.Sequential(*layers), dilation


# ------------------------------------------------------------------------------------ ImageNet weights


def imagenet_checkpoint_dir() -> Path:
    """torchvision's download cache: `$TORCH_HOME/hub/checkpoints` (default `~/.cache/torch/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_backbone_weights(source: str | os.PathLike | None) -> Path | None:
    """The checkpoint file that `--backbone-weights SOURCE` names: None for "none" (or None), the file in
    torchvision's cache for "imagenet", else SOURCE itself (a file named `none` is `./none`). Nothing is
    downloaded.

    Raises:
        SegnetError: no such file.
    """
    if source is None or str(source) == "none":
        return None
    if str(source) == "imagenet":
        folder = imagenet_checkpoint_dir()
        for name in IMAGENET_CHECKPOINTS:
            if (folder / name).is_file():
                return folder / name
        raise SegnetError(
            f"--backbone-weights imagenet: no ImageNet ResNet-50 checkpoint in {folder}; put torchvision's "
            f"{IMAGENET_CHECKPOINTS[0]} (or {IMAGENET_CHECKPOINTS[1]}) there or pass its path as "
            "--backbone-weights PATH, or train from scratch with --backbone-weights none",
            folder,
        )
    path = Path(source)
    if not path.is_file():
        raise SegnetError(f"--backbone-weights {path}: no such file", path)
    return path


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """Whether a file opens as a safetensors file does: an 8-byte little-endian header length (at most
    safetensors' 100 MB), then the JSON header's "{". Told by the content alone, never by the name.

    Raises:
        SegnetError: the file cannot be opened.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError as error:
        raise SegnetError(f"{path}: cannot be read ({error.strerror or error})", path) from None
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER


def read_torchvision_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a torchvision checkpoint file, read with `weights_only=True` (a file never runs code).

    Raises:
        SegnetError: unreadable file, or not a flat dict of tensors.
    """
    path = Path(path)
    state = load_torch_file(path)
    if isinstance(state, Mapping) and state.get("format") == "segnet-checkpoint":
        raise SegnetError(f"{path}: a segnet checkpoint, not a torchvision ResNet-50 state dict", path)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                 for k, v in state.items()):
        raise SegnetError(f"{path}: not a state dict (a dict of tensors), so not a torchvision ResNet-50 checkpoint",
                          path)
    return dict(state)


def read_safetensors_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file (timm's and the Hugging Face hub's format), on the CPU. The format
    holds nothing but a JSON header and raw tensor bytes, so reading one never runs code.

    Raises:
        SegnetError: a truncated or corrupt file.
    """
    try:
        return load_safetensors_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        reason = " ".join(str(error).removeprefix("Error while deserializing header: ").split())
        raise SegnetError(f"{path}: not a readable safetensors file (truncated or corrupt: {reason}); it opens with "
                          "a safetensors header, and the format is told by the content", path) from None


def read_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ResNet-50 weights file, its format told by its content (`is_safetensors_file`):
    safetensors if it opens as one, whatever its name; else a torch file (torchvision's `.pth`), unless it is
    named `.safetensors`, which torch.load would read as safetensors only.

    Raises:
        SegnetError: unreadable or truncated file, not a dict of tensors, a segnet checkpoint.
    """
    path = Path(path)
    if is_safetensors_file(path):
        return read_safetensors_state_dict(path)
    if path.name.endswith(SAFETENSORS_SUFFIX):  # torch.load's own test, case and all
        raise SegnetError(f"{path}: named {SAFETENSORS_SUFFIX} but not a safetensors file (truncated, corrupt or "
                          "another format): it does not open with an 8-byte header length and a JSON header, and the "
                          "format is told by the content", path)
    return read_torchvision_state_dict(path)


def load_torchvision_weights(backbone: ResNet50, path: str | os.PathLike) -> list[str]:
    """Load ResNet-50 weights in torchvision's key names into `backbone`, strictly; return what they did not
    provide. The file is torchvision's checkpoint (a torch file) or a safetensors file of the same keys, as
    timm's `resnet50.tv_in1k` (see `read_weights_file`).

    Only `fc.*` is dropped, whatever its class count; any other missing or unexpected key, or a shape that
    differs, is an error. `num_batches_tracked` may be absent (torchvision's older files lack it, converted
    ones may; it then stays 0, as `load_state_dict` does). With 4 input channels, conv1's RGB filters come
    from the file and the edge filter is the mean of the three RGB filters, so the edge channel starts as a
    grey-level input would.

    Returns:
        Backbone parameter names the file did not provide: the SE blocks' and, with 4 input channels,
        `EDGE_FILTER` ("conv1.weight[:, 3]").

    Raises:
        SegnetError: unreadable file; missing or unexpected keys, or shape mismatches (naming the file and the
            first `LAYOUT_PROBLEMS_SHOWN` keys).
    """
    path = Path(path)
    state = {k: v for k, v in read_weights_file(path).items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    expected = {k: v for k, v in own.items() if not _is_se_key(k)}
    problems = _layout_problems(state, expected)
    if problems:
        shown = "; ".join(problems[:LAYOUT_PROBLEMS_SHOWN])
        more = f"; and {len(problems) - LAYOUT_PROBLEMS_SHOWN} more" if len(problems) > LAYOUT_PROBLEMS_SHOWN else ""
        raise SegnetError(f"{path}: not a torchvision ResNet-50 checkpoint: {shown}{more}", path)

    with torch.no_grad():
        for key, value in state.items():
            if key == "conv1.weight" and backbone.in_channels == 4:
                value = torch.cat([value, value.mean(dim=1, keepdim=True)], dim=1)
            own[key].copy_(value)
    uncovered = [name for name, _ in backbone.named_parameters() if _is_se_key(name)]
    return ([EDGE_FILTER] if backbone.in_channels == 4 else []) + uncovered


def _layout_problems(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> list[str]:
    """What keeps `state` from being torchvision's ResNet-50 backbone: unexpected keys (in the file's order),
    then shapes that differ, then missing keys (in the backbone's order; `num_batches_tracked` may be absent)."""
    unexpected = [f"unexpected key {key}" for key in state if key not in expected]
    misshapen = []
    for key, value in state.items():
        if key in expected and tuple(value.shape) != (shape := _torchvision_shape(key, expected[key])):
            misshapen.append(f"key {key} has shape {tuple(value.shape)}, ResNet-50 has {shape}")
    missing = [f"key {key} missing" for key in expected
               if key not in state and not key.endswith("num_batches_tracked")]
    return unexpected + misshapen + missing


def _is_se_key(key: str) -> bool:
    """Whether a backbone state-dict key belongs to an SE block (torchvision's ResNet-50 has none)."""
    return ".se." in key


def _torchvision_shape(key: str, tensor: Tensor) -> tuple[int, ...]:
    """The shape that torchvision's ResNet-50 gives backbone key `key`: ours, except conv1 has 3 inputs."""
    if key == "conv1.weight":
        return (tensor.shape[0], 3, *tensor.shape[2:])
    return tuple(tensor.shape)

