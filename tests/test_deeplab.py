"""segnet.deeplab: the four variants (forward and backward at odd sizes, where the SE blocks and the long
edge skip sit, rebuilding from model_args), torchvision's ASPP against the goldens, backbone weights
through build_model, option errors, and the auxiliary FCN head of --aux-loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segnet.backbone import SqueezeExcitation
from segnet.deeplab import ASPP, ASPP_RATES, VARIANTS, TrainingNetwork, build_model
from segnet.errors import SegnetError, SegnetOptionError
from tests.conftest import GOLDEN
from tests.golden.make_segnet_golden import WIDE_FEATURES, seeded_state_dict, seeded_tensor, tensors_sha256

GOLDEN_ATOL = 1e-5  # as in test_backbone.py
RECORD = json.loads((GOLDEN / "segnet_golden.json").read_text())
ASPP_KEYS = {key: tuple(shape) for key, shape in RECORD["aspp_keys"].items()}
# SE blocks per layer (layer1..layer4) and their gate
SE_PLACEMENT = {
    "vanilla": ((0, 0, 0, 0), None),
    "dlse": ((3, 4, 6, 0), "sigmoid"),
    "dlse-sf": ((3, 4, 6, 0), "softmax"),
    "dlse-hed": ((3, 4, 6, 0), "sigmoid"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_at_odd_sizes_with_the_aux_head_on_layer3(variant):
    """Both outputs at the input size, and a gradient for every parameter (DDP needs each one used)."""
    torch.manual_seed(0)
    model = build_model(variant)
    assert model.variant == variant
    assert model.in_channels == (4 if variant == "dlse-hed" else 3)
    counts, gate = SE_PLACEMENT[variant]
    blocks = [[m for m in getattr(model.backbone, f"layer{i}").modules() if isinstance(m, SqueezeExcitation)]
              for i in range(1, 5)]
    assert tuple(map(len, blocks)) == counts
    assert {se.gate for layer in blocks for se in layer} == ({gate} if gate else set())

    classifier_inputs = []
    model.classifier.register_forward_hook(lambda module, args, out: classifier_inputs.append(args[0].shape))
    keys = list(model.state_dict())
    network = TrainingNetwork(model).train()
    assert {k: tuple(v.shape) for k, v in network.aux_classifier.state_dict().items()} == AUX_KEYS
    assert list(model.state_dict()) == keys  # the head is beside the model, not in it
    x = torch.randn(2, model.in_channels, 65, 97)
    outputs = network(x)
    assert outputs.out.shape == outputs.aux.shape == (2, 19, 65, 97)
    (outputs.out.logsumexp(dim=1).mean() + outputs.aux.logsumexp(dim=1).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    # dlse-hed's long skip sits before the classifier, at full resolution; the others classify at 1/4
    assert classifier_inputs == [(2, 64, 65, 97) if variant == "dlse-hed" else (2, 256, 17, 25)]

    rebuilt = build_model(model.variant, **model.model_args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.uncovered_parameters == [name for name, _ in model.named_parameters()]  # random init


def test_model_args_and_output_stride_8():
    model = build_model("dlse-sf", num_classes=5, output_stride=8, sf_scale=1.5, sf_rescale=False).eval()
    assert model.model_args == {"num_classes": 5, "output_stride": 8, "sf_scale": 1.5, "sf_rescale": False}
    se = model.backbone.layer1[0].se
    assert (se.gate, se.sf_scale, se.sf_rescale) == ("softmax", 1.5, False)
    assert [branch[0].dilation for branch in model.aspp.convs[1:4]] == [(12, 12), (24, 24), (36, 36)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 5, 33, 47)


def test_aspp_keys_and_shapes_are_torchvisions():
    for output_stride in (16, 8):
        aspp = build_model("vanilla", output_stride=output_stride).aspp
        assert [(k, tuple(v.shape)) for k, v in aspp.state_dict().items()] == list(ASPP_KEYS.items())


@pytest.mark.parametrize("output_stride, input_name, output_name", [
    (16, "layer4_os16", "aspp_os16"),
    (16, WIDE_FEATURES[0], "aspp_os16_wide"),
    (8, "layer4_os8", "aspp_os8"),
])
def test_aspp_matches_torchvision(output_stride, input_name, output_name):
    state = seeded_state_dict(ASPP_KEYS)
    assert tensors_sha256(state) == RECORD["state_sha256"][f"aspp_os{output_stride}"]
    aspp = ASPP(2048, ASPP_RATES[output_stride])
    aspp.load_state_dict(state, strict=True)
    with np.load(GOLDEN / "segnet_golden.npz") as golden:
        expected = torch.from_numpy(golden[output_name])
        x = seeded_tensor(*WIDE_FEATURES) if input_name == WIDE_FEATURES[0] else torch.from_numpy(golden[input_name])
    with torch.no_grad():
        torch.testing.assert_close(aspp.eval()(x), expected, rtol=0, atol=GOLDEN_ATOL)


def test_backbone_weights_from_a_torchvision_file(tmp_path):
    shapes = {k: v for k, v in RECORD["resnet50_keys"].items()}  # fc.* included, as in torchvision's files
    state = seeded_state_dict(shapes)
    path = tmp_path / "resnet50-seeded.pth"
    torch.save(state, path)
    model = build_model("dlse-hed", backbone_weights=str(path))
    conv1 = model.backbone.conv1.weight.detach()
    assert torch.equal(conv1[:, :3], state["conv1.weight"])
    torch.testing.assert_close(conv1[:, 3], state["conv1.weight"].mean(dim=1))
    assert torch.equal(model.backbone.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])

    uncovered = model.uncovered_parameters
    assert uncovered[0] == "backbone.conv1.weight[:, 3]"
    names = [name for name, _ in model.named_parameters()]
    expected = [n for n in names if ".se." in n or not n.startswith("backbone.")]
    assert uncovered[1:] == expected
    assert {n.split(".")[0] for n in expected} == {"backbone", "aspp", "decoder", "edge_skip", "classifier"}


def test_option_errors(tmp_path, monkeypatch):
    for kwargs, start in (({"variant": "foo"}, "--variant foo: "),
                          ({"variant": "dlse", "output_stride": 32}, "--output-stride 32: ")):
        with pytest.raises(SegnetOptionError) as error:
            build_model(**kwargs)
        assert str(error.value).startswith(start) and "\n" not in str(error.value)
        assert error.value.exit_code == 2
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SegnetError) as error:
        build_model("vanilla", backbone_weights="imagenet")
    assert "resnet50-0676ba61.pth" in str(error.value) and error.value.exit_code == 1


# torchvision's FCNHead(1024, 19): the auxiliary classifier of its deeplabv3_resnet50(aux_loss=True)
AUX_KEYS = {"0.weight": (256, 1024, 3, 3), "1.weight": (256,), "1.bias": (256,), "1.running_mean": (256,),
            "1.running_var": (256,), "1.num_batches_tracked": (), "4.weight": (19, 256, 1, 1), "4.bias": (19,)}


def test_aux_head_computes_torchvisions_fcn_head_on_layer3():
    """The head in eval mode against its formula written with torch.nn.functional."""
    torch.manual_seed(1)
    network = TrainingNetwork(build_model("vanilla", num_classes=5, output_stride=8)).eval()
    for module in network.aux_classifier.modules():  # BatchNorm statistics other than the initial 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 40, 56)
    head = dict(network.aux_classifier.state_dict())
    with torch.no_grad():
        layer3 = network.model.backbone(x).layer3
        assert layer3.shape == (1, 1024, 5, 7)  # 1/8: output stride 8 dilates layer3
        hidden = F.batch_norm(F.conv2d(layer3, head["0.weight"], padding=1), head["1.running_mean"],
                              head["1.running_var"], head["1.weight"], head["1.bias"], eps=1e-5)
        logits = F.conv2d(F.relu(hidden), head["4.weight"], head["4.bias"])
        expected = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)
        torch.testing.assert_close(network(x).aux, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the edge variants and --se-init, --edge-init


def test_edge_loss_variants_are_vanillas_network_at_inference():
    """dl-boundary, dl-hed-head and dl-hed-loss build vanilla's model: RGB input, vanilla's state-dict
    keys and shapes, vanilla's FLOPs (torch's FLOP counter); what they add trains in the wrapper."""
    from torch.utils.flop_counter import FlopCounterMode

    from segnet.deeplab import EDGE_LOSS_VARIANTS, VARIANT_SPECS, TrainingNetwork, training_network

    def flops(model):
        with FlopCounterMode(display=False) as counter:
            model.eval()(torch.empty(1, 3, 32, 64))
        return counter.get_total_flops()

    with torch.device("meta"):
        vanilla = build_model("vanilla")
        shapes = {k: v.shape for k, v in vanilla.state_dict().items()}
        expected = flops(vanilla)
        assert training_network(vanilla) is vanilla and expected > 0  # nothing to train beside vanilla
        for variant in EDGE_LOSS_VARIANTS:
            model = build_model(variant)
            assert model.in_channels == 3 and {k: v.shape for k, v in model.state_dict().items()} == shapes
            assert flops(model) == expected
            network = training_network(model)
            heads = {"dl-hed-loss": set()}.get(variant, {"boundary_head"})
            assert isinstance(network, TrainingNetwork) and set(network.heads()) == heads
            # the training loader reads the edge where the loss does
            assert VARIANT_SPECS[variant].train_channels == (3 if variant == "dl-boundary" else 4)


def test_the_training_network_feeds_rgb_to_the_model_and_the_edge_to_the_loss():
    """dl-hed-head with --aux-loss: a 4-channel batch; the model's logits are those of its RGB part,
    the edge comes back as it went in, the boundary logits are at the input size, and every parameter
    of the model and both heads gets a gradient (DDP needs each one used)."""
    from segnet.deeplab import training_network

    torch.manual_seed(3)
    model = build_model("dl-hed-head", num_classes=5)
    network = training_network(model, aux_head=True)
    assert set(network.heads()) == {"aux_classifier", "boundary_head"}
    x = torch.randn(2, 4, 33, 47)
    outputs = network.train()(x)
    assert outputs.out.shape == outputs.aux.shape == (2, 5, 33, 47) and outputs.boundary.shape == (2, 33, 47)
    assert torch.equal(outputs.edge, x[:, 3])
    (outputs.out.logsumexp(1).mean() + outputs.aux.logsumexp(1).mean() + outputs.boundary.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    with torch.no_grad():
        assert torch.equal(network.eval()(x).out, model(x[:, :3]))


def test_identity_se_gates_start_at_one_so_vanillas_weights_give_vanillas_logits():
    torch.manual_seed(4)
    vanilla = build_model("vanilla").eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = vanilla(x)
    for variant in ("dlse", "dlse-sf"):
        model = build_model(variant, se_init="identity")
        loaded = model.load_state_dict(vanilla.state_dict(), strict=False)
        assert not loaded.unexpected_keys and all(".se." in key for key in loaded.missing_keys)
        gates: list[torch.Tensor] = []
        for module in model.modules():
            if isinstance(module, SqueezeExcitation):
                module.register_forward_hook(lambda m, args, out, gates=gates: gates.append(m.gates(args[0])))
        with torch.no_grad():
            assert torch.equal(model.eval()(x), expected), variant
        assert len(gates) == 13 and all(torch.equal(g, torch.ones_like(g)) for g in gates)
        # the gate form is the architecture's: a checkpoint's model_args rebuild it; older ones lack the key
        assert model.model_args["se_init"] == "identity"
        with torch.device("meta"):
            rebuilt, older = build_model(variant, **model.model_args), build_model(variant)
        assert all(m.identity for m in rebuilt.modules() if isinstance(m, SqueezeExcitation))
        assert "se_init" not in older.model_args
        assert not any(m.identity for m in older.modules() if isinstance(m, SqueezeExcitation))


def test_edge_init_zero_makes_dlse_hed_start_as_its_rgb_network_and_mean_averages_the_rgb_filters():
    torch.manual_seed(5)
    zero = build_model("dlse-hed", edge_init="zero").backbone.conv1
    mean = build_model("dlse-hed", edge_init="mean").backbone.conv1.weight.detach()
    default = build_model("dlse-hed").backbone.conv1.weight.detach()
    x = torch.randn(2, 4, 24, 32)
    with torch.no_grad():
        assert torch.equal(zero(x), F.conv2d(x[:, :3], zero.weight[:, :3], stride=2, padding=3))
    torch.testing.assert_close(mean[:, 3], mean[:, :3].mean(dim=1), rtol=0, atol=0)
    assert not torch.allclose(default[:, 3], default[:, :3].mean(dim=1))  # random init: a random filter
    for options, start in (({"se_init": "ones"}, "--se-init ones: "), ({"edge_init": "rgb"}, "--edge-init rgb: ")):
        with pytest.raises(SegnetOptionError) as error:
            build_model("dlse-hed", **options)
        assert str(error.value).startswith(start) and error.value.exit_code == 2
