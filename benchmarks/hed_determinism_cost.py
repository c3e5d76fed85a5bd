"""What thread-count-independent fp32 HED costs: side outputs summed over groups of 128 channels and a
float64 sigmoid, against one matrix product per side output and a float32 sigmoid (the code before).

    python benchmarks/hed_determinism_cost.py                   # 512x1024, 5 interleaved repeats
    python benchmarks/hed_determinism_cost.py --size 1024x2048 --repeats 3

Both variants run in this process on the same frame, interleaved; the best pass of each counts.
Prints a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.hed import EdgeDetector, inference, load_hed  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from hedprep.process_tuning import tune_process_for_hed  # noqa: E402


def float32_sigmoid_probabilities(detector: EdgeDetector, images: torch.Tensor) -> torch.Tensor:
    """`EdgeDetector.probabilities` as it was: the sigmoid in float32."""
    with torch.inference_mode():
        x = inference.preprocess(images.to(detector.device))
        size = (x.shape[-2], x.shape[-1])
        side = inference.pointwise_conv if detector.precision == "fp32" else inference.side_conv
        sides = detector.model.side_outputs(x, detector._conv_relu, inference.max_pool_2x2_nchw, side)
        return torch.sigmoid(detector.model.fuse_sides(sides, size, side))[:, 0]


def best_pass(detector: EdgeDetector, frame: np.ndarray, variant: str) -> float:
    if variant == "before":
        inference.POINTWISE_CHANNELS = 1 << 20
        call = lambda: float32_sigmoid_probabilities(detector, torch.from_numpy(frame))  # noqa: E731
    else:
        inference.POINTWISE_CHANNELS = 128
        call = lambda: detector.probabilities(torch.from_numpy(frame))  # noqa: E731
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tuning = tune_process_for_hed()
    h, w = parse_size(args.size)
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    detector = EdgeDetector(load_hed(), precision="fp32", device="cpu")
    times: dict[str, list[float]] = {"before": [], "now": []}
    for variant in times:  # warm-up
        best_pass(detector, frame, variant)
    for _ in range(args.repeats):
        for variant in times:
            times[variant].append(best_pass(detector, frame, variant))
    before, now = min(times["before"]), min(times["now"])
    print(f"{h}x{w}, fp32, {tuning.threads} threads, best of {args.repeats} interleaved passes\n")
    print("| variant | s/frame | frames/s |\n|---|---|---|")
    print(f"| one product per side output, float32 sigmoid (before) | {before:.3f} | {1 / before:.3f} |")
    print(f"| 128-channel groups, float64 sigmoid (now) | {now:.3f} | {1 / now:.3f} |")
    print(f"\nnow / before time: **{now / before:.3f}**")


if __name__ == "__main__":
    main()
