"""segnet.backbone: torchvision's ResNet-50 (keys, shapes, outputs against torchvision's goldens), the SE
blocks and their gates, output strides, and the reader of torchvision-keyed weights (torch and safetensors
files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from segnet.backbone import (
    EDGE_FILTER,
    IMAGENET_CHECKPOINTS,
    SE_LAYERS,
    Bottleneck,
    ResNet50,
    SqueezeExcitation,
    imagenet_checkpoint_dir,
    is_safetensors_file,
    load_torchvision_weights,
    resolve_backbone_weights,
)
from segnet.deeplab import build_model
from segnet.errors import SegnetError
from tests.conftest import GOLDEN, assert_one_line_error, invoke
from tests.golden.make_segnet_golden import IMAGE, seeded_state_dict, seeded_tensor, tensors_sha256

# Our fp32 output against torchvision's, both on CPU; measured about 1e-6 (see docs/segnet.md).
GOLDEN_ATOL = 1e-5
RECORD = json.loads((GOLDEN / "segnet_golden.json").read_text())
TORCHVISION_KEYS = {key: tuple(shape) for key, shape in RECORD["resnet50_keys"].items()}
BACKBONE_KEYS = {key: shape for key, shape in TORCHVISION_KEYS.items() if not key.startswith("fc.")}
BLOCKS_PER_LAYER = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


def se_blocks_per_layer(backbone: ResNet50) -> dict[str, int]:
    return {name: sum(isinstance(m, SqueezeExcitation) for m in getattr(backbone, name).modules())
            for name in BLOCKS_PER_LAYER}


@pytest.fixture(scope="module")
def golden_outputs():
    with np.load(GOLDEN / "segnet_golden.npz") as data:
        return {name: torch.from_numpy(data[name]) for name in data.files}


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A checkpoint in torchvision's layout: the seeded ResNet-50 state dict with a dummy `fc`."""
    state = seeded_state_dict(BACKBONE_KEYS)
    path = tmp_path_factory.mktemp("weights") / "resnet50-seeded.pth"
    torch.save({**state, "fc.weight": torch.ones(1000, 2048), "fc.bias": torch.zeros(1000)}, path)
    return path, state


def test_state_dict_keys_and_shapes_are_torchvisions():
    for output_stride in (16, 8):
        ours = {key: tuple(t.shape) for key, t in ResNet50(output_stride=output_stride).state_dict().items()}
        assert list(ours.items()) == list(BACKBONE_KEYS.items())  # same names, shapes and order
    assert {key for key in TORCHVISION_KEYS if key not in BACKBONE_KEYS} == {"fc.weight", "fc.bias"}


def test_seeded_tensors_are_the_goldens():
    """Our torch draws the same seeded weights and inputs as the torch that made the goldens."""
    state = seeded_state_dict(TORCHVISION_KEYS)
    assert tensors_sha256(state) == RECORD["state_sha256"]["resnet50_os16"]
    inputs = {name: seeded_tensor(name, shape) for name, shape in RECORD["inputs"].items()}
    assert tensors_sha256(inputs) == RECORD["inputs_sha256"]


@pytest.mark.parametrize("output_stride", [16, 8])
def test_outputs_match_torchvision(output_stride, golden_outputs):
    backbone = ResNet50(output_stride=output_stride)
    backbone.load_state_dict(seeded_state_dict(BACKBONE_KEYS), strict=True)
    with torch.no_grad():
        features = backbone.eval()(seeded_tensor(*IMAGE))
    for name, ours in (("layer1_os16", features.layer1), (f"layer4_os{output_stride}", features.layer4)):
        golden = golden_outputs[name]
        assert ours.shape == golden.shape, name
        torch.testing.assert_close(ours, golden, rtol=0, atol=GOLDEN_ATOL, msg=name)


@pytest.mark.parametrize("output_stride, layer4_size, dilations", [
    (16, (5, 7), {"layer3": (1, 1), "layer4": (1, 2)}),
    (8, (9, 13), {"layer3": (1, 2), "layer4": (2, 4)}),
])
def test_output_stride(output_stride, layer4_size, dilations):
    backbone = ResNet50(output_stride=output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 65, 97))
    assert features.layer1.shape == (1, 256, 17, 25)
    assert features.layer4.shape == (1, 2048, *layer4_size)
    for name, (first, rest) in dilations.items():  # torchvision: a dilated layer's first block keeps the old one
        layer = getattr(backbone, name)
        assert layer[0].conv2.dilation == (first, first)
        assert layer[0].conv2.stride == ((1, 1) if rest > 1 else (2, 2))  # stride traded for dilation
        assert {block.conv2.dilation for block in layer[1:]} == {(rest, rest)}


@pytest.mark.parametrize("se", [None, "sigmoid", "softmax"])
def test_se_blocks_in_every_bottleneck_of_layer1_to_3(se):
    backbone = ResNet50(se=se)
    expected = {name: count if se and name in SE_LAYERS else 0 for name, count in BLOCKS_PER_LAYER.items()}
    assert se_blocks_per_layer(backbone) == expected
    for name in SE_LAYERS if se else ():
        for block in getattr(backbone, name):
            assert block.se.gate == se
            channels = block.bn3.num_features
            assert (block.se.fc1.in_channels, block.se.fc1.out_channels) == (channels, channels // 16)
            assert (block.se.fc2.in_channels, block.se.fc2.out_channels) == (channels // 16, channels)
    # SE keys are the only ones torchvision lacks
    assert [k for k in backbone.state_dict() if ".se." not in k] == list(BACKBONE_KEYS)


def test_se_gates_the_residual_branch_before_the_addition():
    block = Bottleneck(256, 64, se=SqueezeExcitation(256)).eval()
    with torch.no_grad():
        block.se.fc2.weight.zero_()
        block.se.fc2.bias.fill_(-100.0)  # gates ~ 0: only the identity is left
        x = torch.rand(1, 256, 5, 6)
        torch.testing.assert_close(block(x), x)  # after the addition, gates ~ 0 would give 0
        block.se.fc2.bias.fill_(100.0)  # gates ~ 1: a plain bottleneck
        plain = Bottleneck(256, 64).eval()
        plain.load_state_dict({k: v for k, v in block.state_dict().items() if ".se." not in f".{k}"})
        torch.testing.assert_close(block(x), plain(x))


@pytest.mark.parametrize("sf_rescale", [True, False])
def test_softmax_gate(sf_rescale):
    se = SqueezeExcitation(64, gate="softmax", sf_scale=3.0, sf_rescale=sf_rescale)
    x = torch.randn(2, 64, 4, 5)
    gates = se.gates(x)
    assert gates.shape == (2, 64, 1, 1)
    logits = se.fc2(se.relu(se.fc1(se.avgpool(x))))
    expected = torch.softmax(logits, dim=1) * (64 if sf_rescale else 1)
    top = logits.argmax(dim=1).flatten()
    for n in range(2):
        expected[n, top[n]] *= 3.0
    torch.testing.assert_close(gates, expected)
    # without the boosted channel the gates sum to 1 (C when rescaled), and it was the largest one
    unboosted = gates.clone()
    unboosted[torch.arange(2), top] /= 3.0
    torch.testing.assert_close(unboosted.sum(dim=1).flatten(), torch.full((2,), 64.0 if sf_rescale else 1.0))
    assert torch.equal(unboosted.argmax(dim=1).flatten(), top)
    torch.testing.assert_close(se(x), x * gates)


def test_sigmoid_gate():
    se = SqueezeExcitation(32)
    x = torch.randn(2, 32, 3, 3)
    gates = se.gates(x)
    torch.testing.assert_close(gates, torch.sigmoid(se.fc2(se.relu(se.fc1(x.mean(dim=(2, 3), keepdim=True))))))
    torch.testing.assert_close(se(x), x * gates)


def test_torchvision_file_loads_strictly_and_unchanged(torchvision_file):
    path, state = torchvision_file
    backbone = ResNet50()
    assert load_torchvision_weights(backbone, path) == []
    loaded = backbone.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_four_channel_conv1_is_rgb_plus_their_mean(torchvision_file):
    path, state = torchvision_file
    backbone = ResNet50(in_channels=4, se="sigmoid")
    uncovered = load_torchvision_weights(backbone, path)
    se_parameters = [name for name, _ in backbone.named_parameters() if ".se." in name]
    assert uncovered == [EDGE_FILTER, *se_parameters] and len(se_parameters) == 13 * 4
    conv1 = backbone.conv1.weight.detach()
    assert conv1.shape == (64, 4, 7, 7)
    assert torch.equal(conv1[:, :3], state["conv1.weight"])
    torch.testing.assert_close(conv1[:, 3], state["conv1.weight"].mean(dim=1))
    loaded = backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items() if key != "conv1.weight")


def test_missing_num_batches_tracked_is_accepted(torchvision_file, tmp_path):
    """torchvision's older checkpoints have no num_batches_tracked; load_state_dict accepts that too."""
    _, state = torchvision_file
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    backbone = ResNet50()
    load_torchvision_weights(backbone, path)
    assert torch.equal(backbone.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])
    assert backbone.bn1.num_batches_tracked.item() == 0


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_strict_loading_errors(torchvision_file, tmp_path):
    _, state = torchvision_file
    cases = {
        "missing.pth": ({k: v for k, v in state.items() if k != "layer4.2.bn3.running_var"},
                        "key layer4.2.bn3.running_var missing"),
        "unexpected.pth": ({"layer5.0.conv1.weight": torch.zeros(1)}, "unexpected key layer5.0.conv1.weight"),
        "shape.pth": ({"conv1.weight": torch.zeros(64, 4, 7, 7)}, "key conv1.weight has shape (64, 4, 7, 7)"),
        "tensor.pth": (torch.zeros(3), "not a state dict"),
        "segnet.pth": ({"format": "segnet-checkpoint", "model": {}}, "a segnet checkpoint"),
    }
    for name, (content, fragment) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(SegnetError) as error:
            load_torchvision_weights(ResNet50(), tmp_path / name)
        assert_one_line(error, str(tmp_path / name), fragment)
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SegnetError) as error:
        load_torchvision_weights(ResNet50(), tmp_path / "corrupt.pth")
    assert_one_line(error, "corrupt.pth", "not a readable checkpoint")


def test_imagenet_weights_come_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    assert imagenet_checkpoint_dir() == folder
    with pytest.raises(SegnetError) as error:
        resolve_backbone_weights("imagenet")
    assert_one_line(error, str(folder), "resnet50-0676ba61.pth", "--backbone-weights none")
    folder.mkdir(parents=True)
    for name in reversed(IMAGENET_CHECKPOINTS):  # V2 alone, then V1 is preferred
        (folder / name).write_bytes(b"")
        assert resolve_backbone_weights("imagenet") == folder / name
    assert resolve_backbone_weights("none") is None
    assert resolve_backbone_weights(folder / IMAGENET_CHECKPOINTS[1]) == folder / IMAGENET_CHECKPOINTS[1]
    with pytest.raises(SegnetError) as error:
        resolve_backbone_weights(tmp_path / "nowhere.pth")
    assert_one_line(error, "--backbone-weights", "nowhere.pth", "no such file")


# ------------------------------------------------------------------------------------ safetensors files


def timm_like_state(tracked: bool) -> dict[str, torch.Tensor]:
    """A seeded ResNet-50 state dict in torchvision's key names as timm saves one: `fc` of another class
    count, with or without `num_batches_tracked`."""
    state = {k: v for k, v in seeded_state_dict(BACKBONE_KEYS).items()
             if tracked or not k.endswith("num_batches_tracked")}
    return {**state, "fc.weight": torch.ones(11, 2048), "fc.bias": torch.zeros(11)}


@pytest.fixture(scope="module")
def safetensors_state():
    return timm_like_state(tracked=False)


def test_safetensors_file_is_told_by_content(safetensors_state, tmp_path):
    save_file(safetensors_state, tmp_path / "model.bin", metadata={"format": "pt"})
    torch.save(safetensors_state, tmp_path / "model.safetensors")
    assert is_safetensors_file(tmp_path / "model.bin")
    assert not is_safetensors_file(tmp_path / "model.safetensors")  # a torch file, whatever its name


@pytest.mark.parametrize("tracked", [False, True])
def test_safetensors_file_loads_through_build_model(tracked, tmp_path):
    state = timm_like_state(tracked)
    path = tmp_path / "model.safetensors"
    save_file(state, path, metadata={"format": "pt"})
    model = build_model("vanilla", backbone_weights=str(path))
    loaded = model.backbone.state_dict()
    backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert all(torch.equal(loaded[key], value) for key, value in backbone_state.items())
    absent = loaded.keys() - backbone_state.keys()
    assert absent == (set() if tracked else {k for k in BACKBONE_KEYS if k.endswith("num_batches_tracked")})
    assert all(loaded[key].item() == 0 for key in absent)  # left as load_state_dict leaves them
    assert model.uncovered_parameters == [n for n, _ in model.named_parameters() if not n.startswith("backbone.")]


def test_format_follows_content_not_name(safetensors_state, tmp_path):
    """A safetensors file named .pth loads; a torch file named .safetensors (which torch.load would read as
    safetensors only) is refused, saying that the content decides."""
    backbone_state = {k: v for k, v in safetensors_state.items() if not k.startswith("fc.")}
    save_file(safetensors_state, tmp_path / "safetensors.pth")
    backbone = ResNet50(in_channels=4)
    assert load_torchvision_weights(backbone, tmp_path / "safetensors.pth") == [EDGE_FILTER]
    loaded = backbone.state_dict()
    assert torch.equal(loaded["conv1.weight"][:, :3], backbone_state["conv1.weight"])
    assert all(torch.equal(loaded[k], v) for k, v in backbone_state.items() if k != "conv1.weight")
    torch.save(safetensors_state, tmp_path / "torch.safetensors")
    with pytest.raises(SegnetError) as error:
        load_torchvision_weights(ResNet50(), tmp_path / "torch.safetensors")
    assert_one_line(error, str(tmp_path / "torch.safetensors"), "not a safetensors file", "told by the content")


def test_safetensors_layout_errors_name_the_file_and_keys(safetensors_state, tmp_path):
    state = dict(safetensors_state)
    renamed = {("layer1.0.conv1.weigth" if k == "layer1.0.conv1.weight" else k): v for k, v in state.items()}
    cases = {
        "renamed": (renamed, ["unexpected key layer1.0.conv1.weigth", "key layer1.0.conv1.weight missing"]),
        "missing": ({k: v for k, v in state.items() if k != "layer4.2.bn3.running_var"},
                    ["key layer4.2.bn3.running_var missing"]),
        "misshapen": ({**state, "layer2.1.bn2.weight": torch.ones(127)},
                      ["key layer2.1.bn2.weight has shape (127,), ResNet-50 has (128,)"]),
        "four-channel": ({**state, "conv1.weight": torch.zeros(64, 4, 7, 7)},
                         ["key conv1.weight has shape (64, 4, 7, 7), ResNet-50 has (64, 3, 7, 7)"]),
    }
    for name, (content, fragments) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(content, path)
        with pytest.raises(SegnetError) as error:
            build_model("dlse", backbone_weights=str(path))
        assert_one_line(error, str(path), "not a torchvision ResNet-50", *fragments)
        assert "; and " not in str(error.value)  # every problem named


def test_layout_error_names_the_first_keys_and_counts_the_rest(tmp_path):
    """A file of another layout (here a whole DeepLab's keys) is refused naming its first keys."""
    path = tmp_path / "deeplab.safetensors"
    save_file({f"backbone.{k}": v for k, v in seeded_state_dict(BACKBONE_KEYS).items()}, path)
    with pytest.raises(SegnetError) as error:
        load_torchvision_weights(ResNet50(), path)
    total = len(BACKBONE_KEYS) + sum(not k.endswith("num_batches_tracked") for k in BACKBONE_KEYS)
    assert_one_line(error, str(path), f"; and {total - 4} more")
    assert str(error.value).count("; unexpected key backbone.") == 3  # after the first


def test_unreadable_safetensors_files(safetensors_state, tmp_path):
    save_file(safetensors_state, tmp_path / "whole.safetensors")
    whole = (tmp_path / "whole.safetensors").read_bytes()
    cases = {
        # a safetensors header, by content: safetensors says what is wrong
        "truncated.safetensors": (whole[:-1000], ["not a readable safetensors file", "told by the content"]),
        "header-only.bin": (whole[:100], ["not a readable safetensors file", "told by the content"]),
        # not one by content: refused if named .safetensors, else read as a torch file
        "garbage.safetensors": (b"hello, not tensors at all" * 4, ["named .safetensors but not a safetensors file",
                                                                   "told by the content"]),
        "empty.safetensors": (b"", ["named .safetensors but not a safetensors file"]),
        "garbage.pth": (b"\x10\x00\x00\x00\x00\x00\x00\x00[not json]", ["not a readable checkpoint"]),
    }
    for name, (content, fragments) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SegnetError) as error:
            load_torchvision_weights(ResNet50(), tmp_path / name)
        assert_one_line(error, str(tmp_path / name), *fragments)
    assert "safetensors" not in str(error.value).removeprefix(str(tmp_path))  # garbage.pth: nothing says it was one


def test_cli_refuses_a_foreign_safetensors_file_in_one_line(safetensors_state, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v for k, v in safetensors_state.items() if k != "bn1.running_mean"}, path)
    result = invoke("segnet", "train", "--variant", "vanilla", "--shards", str(tmp_path / "shards"),
                    "--out", str(tmp_path / "run"), "--schedule", "32x64:4:1", "--device", "cpu",
                    "--backbone-weights", str(path))
    assert_one_line_error(result, str(path), "key bn1.running_mean missing", status=1)
    assert not (tmp_path / "run").exists()
