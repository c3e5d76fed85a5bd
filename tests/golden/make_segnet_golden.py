"""Make the golden ResNet-50 and ASPP outputs of segnet's models with torchvision itself.

Run once, by hand, in an environment with torchvision (not in CI; the project's environment cannot import
torchvision):

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/tvenv/bin/python tests/golden/make_segnet_golden.py

It builds torchvision's `resnet50(replace_stride_with_dilation=...)` for output stride 16 and 8 and
`deeplabv3.ASPP(2048, rates)`, fills every parameter and buffer with `seeded_state_dict` (below; the
tests import it from this file, without torchvision), runs them in eval mode on seeded inputs and writes,
beside this file:

- `segnet_golden.json`: versions, the seed, torchvision's key names and shapes (ResNet-50 with `fc`, ASPP),
  a sha256 of every seeded state dict and input (so a test can tell a changed random generator from a
  changed model), the shapes and the largest magnitude of each output;
- `segnet_golden.npz`: the outputs (float32).

The recipe, for a tensor named `name` (a state-dict key or an input's name) of shape `shape`: a
`torch.Generator().manual_seed(SEED + zlib.crc32(name))` draws `torch.rand(shape, dtype=float64)` = u
(for `num_batches_tracked`: `torch.randint(0, 1000, shape)`), mapped by the key's last component and
the tensor's rank, then cast to float32:

| tensor | value |
|---|---|
| `running_mean` | 0.2 (u - 0.5) |
| `running_var` | 0.5 + u |
| 1-D `weight` (BatchNorm scale) | 0.5 + 0.5 u |
| 1-D `bias` | 0.2 (u - 0.5) |
| n-D `weight` (convolution, linear) | (2u - 1) sqrt(3 / fan_in): variance 1 / fan_in |
| an input | 2u - 1 |

One generator per name keeps the values independent of which other keys exist (torchvision's `fc.*`,
our SE blocks) and of the order they are visited in.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 20_260_911
IMAGE = ("image", (1, 3, 65, 97))
# An ASPP input wide enough that every tap of the rate-18 convolution sees data (layer4 of a 65x97 input
# is 5x7, where the rate-12 and rate-18 branches reduce to their centre tap).
WIDE_FEATURES = ("wide_features", (1, 2048, 19, 37))
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
REPLACE_STRIDE_WITH_DILATION = {16: [False, False, True], 8: [False, True, True]}


def seeded_tensor(name: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor that the recipe (module docstring) gives `name`."""
    generator = torch.Generator().manual_seed(SEED + zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.randint(0, 1000, tuple(shape), generator=generator, dtype=torch.long)
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    if "." not in name:  # an input
        value = 2 * u - 1
    elif leaf == "running_mean" or (leaf == "bias" and len(shape) == 1):
        value = 0.2 * (u - 0.5)
    elif leaf == "running_var":
        value = 0.5 + u
    elif leaf == "weight" and len(shape) == 1:
        value = 0.5 + 0.5 * u
    elif leaf == "weight":
        value = (2 * u - 1) * math.sqrt(3 / math.prod(shape[1:]))
    else:
        raise ValueError(f"no recipe for {name}")
    return value.float()


def seeded_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """A state dict with every key of `shapes` filled by `seeded_tensor`."""
    return {name: seeded_tensor(name, shape) for name, shape in shapes.items()}


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in module.state_dict().items()}


def import_torchvision():
    """torchvision, even where its compiled operators do not match the installed torch (a CPU torch with a
    CUDA torchvision wheel): registering their fake kernels is then made a no-op. This script only."""
    try:
        import torchvision
    except RuntimeError:
        torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
        import torchvision
    return torchvision


def main() -> None:
    torchvision = import_torchvision()
    from torchvision.models import resnet50
    from torchvision.models.segmentation.deeplabv3 import ASPP

    torch.set_num_threads(1)
    image = seeded_tensor(*IMAGE)
    wide = seeded_tensor(*WIDE_FEATURES)
    record = {
        "reference": f"torchvision {torchvision.__version__} on torch {torch.__version__}, CPU, eval mode",
        "python": platform.python_version(),
        "seed": SEED,
        "inputs": {IMAGE[0]: list(IMAGE[1]), WIDE_FEATURES[0]: list(WIDE_FEATURES[1])},
        "inputs_sha256": tensors_sha256({IMAGE[0]: image, WIDE_FEATURES[0]: wide}),
        "resnet50_keys": None,
        "aspp_keys": None,
        "state_sha256": {},
        "outputs": {},
    }
    outputs: dict[str, np.ndarray] = {}
    for output_stride, rates in ASPP_RATES.items():
        backbone = resnet50(weights=None, replace_stride_with_dilation=REPLACE_STRIDE_WITH_DILATION[output_stride])
        aspp = ASPP(2048, list(rates))
        for name, module in ((f"resnet50_os{output_stride}", backbone), (f"aspp_os{output_stride}", aspp)):
            state = seeded_state_dict(shapes_of(module))
            module.load_state_dict(state, strict=True)
            module.eval()
            record["state_sha256"][name] = tensors_sha256(state)
        record["resnet50_keys"] = shapes_of(backbone)  # the same names and shapes for both strides
        record["aspp_keys"] = shapes_of(aspp)
        with torch.no_grad():
            x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(image))))
            layer1 = backbone.layer1(x)
            layer4 = backbone.layer4(backbone.layer3(backbone.layer2(layer1)))
            results = {f"layer1_os{output_stride}": layer1, f"layer4_os{output_stride}": layer4,
                       f"aspp_os{output_stride}": aspp(layer4)}
            if output_stride == 16:
                results["aspp_os16_wide"] = aspp(wide)
        for name, tensor in results.items():
            if name == "layer1_os8":  # layer1 does not depend on the output stride
                assert torch.equal(tensor, torch.from_numpy(outputs["layer1_os16"]))
                continue
            outputs[name] = tensor.numpy().astype(np.float32)
            record["outputs"][name] = {"shape": list(tensor.shape), "max_abs": float(tensor.abs().max())}
            print(name, tuple(tensor.shape), f"max |x| = {tensor.abs().max():.3f}")
    np.savez_compressed(HERE / "segnet_golden.npz", **outputs)
    text = json.dumps(record, indent=1)
    # One line per shape: [\n  64,\n  3, ...] -> [64, 3, ...]
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group())), text)
    (HERE / "segnet_golden.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
