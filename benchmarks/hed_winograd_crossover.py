"""Where NNPACK's Winograd 3x3 convolution beats oneDNN's direct one, per layer and for whole frames.

    python benchmarks/hed_winograd_crossover.py            # per-layer table, then whole frames
    python benchmarks/hed_winograd_crossover.py --frames-only

Per layer: HED's four channel widths (64-512) at input sizes from 8x16 to 256x512, the two kernels
interleaved on the same input, best of several calls. Whole frames: `EdgeDetector.probabilities` at
fp32 on the CPU with the size rule on (`MIN_WINOGRAD_PIXELS`, what builds use) against every layer
through NNPACK (no size rule) and every layer direct. Prints Markdown tables (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.hed import load_hed  # noqa: E402
from hedprep.hed.inference import (  # noqa: E402
    EdgeDetector,
    _DirectConvRelu,
    _WinogradConvRelu,
    nnpack_available,
)

LAYER_SIZES = [(8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512)]
FRAME_SIZES = [(64, 128), (128, 256), (256, 512), (512, 1024)]


def best_ms(call, repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def layer_table() -> None:
    print("| channels | input | values | Winograd ms | direct ms | Winograd / direct | rule picks |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for channels in (64, 128, 256, 512):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        winograd = _WinogradConvRelu(conv)
        direct = _DirectConvRelu(conv, torch.float32, torch.contiguous_format)
        for h, w in LAYER_SIZES:
            values = channels * h * w
            if values * 4 > 200e6:
                continue
            x = torch.randn(1, channels, h, w)
            repeats = 3 if values >= 1 << 22 else 10
            wino_ms = best_ms(lambda x=x, k=winograd: k._conv(x), repeats)  # NNPACK whatever the size
            direct_ms = best_ms(lambda x=x, k=direct: k(x), repeats)
            picks = "Winograd" if h * w >= _WinogradConvRelu.MIN_WINOGRAD_PIXELS else "direct"
            print(f"| {channels} | {h}x{w} | {values:,} | {wino_ms:.2f} | {direct_ms:.2f} | "
                  f"{wino_ms / direct_ms:.2f} | {picks} |")


def frame_table() -> None:
    model = load_hed()
    rule = _WinogradConvRelu.MIN_WINOGRAD_PIXELS
    print("| frame | size rule (ms) | all Winograd (ms) | all direct (ms) | all Winograd / rule |")
    print("|---|---|---|---|---|")
    for h, w in FRAME_SIZES:
        frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8))
        detector = EdgeDetector(model, "fp32", "cpu")
        timings: dict[str, float] = {}
        kinds = [("rule", rule), ("winograd", 0), ("direct", 1 << 40)]
        for round_ in range(3):  # rounds of the three, interleaved, each round in another order; best of each
            for name, threshold in kinds[round_:] + kinds[:round_]:
                _WinogradConvRelu.MIN_WINOGRAD_PIXELS = threshold
                ms = best_ms(lambda d=detector, f=frame: d.probabilities(f), 1)
                timings[name] = min(timings.get(name, ms), ms)
        _WinogradConvRelu.MIN_WINOGRAD_PIXELS = rule
        print(f"| {h}x{w} | {timings['rule']:.0f} | {timings['winograd']:.0f} | {timings['direct']:.0f} | "
              f"{timings['winograd'] / timings['rule']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-only", action="store_true", help="Whole frames only.")
    args = parser.parse_args()
    if not nnpack_available():
        sys.exit("no NNPACK in this torch build or on this CPU: every convolution runs direct")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not args.frames_only:
        layer_table()
        print()
    frame_table()


if __name__ == "__main__":
    main()
