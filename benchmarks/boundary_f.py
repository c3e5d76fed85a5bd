"""What the boundary F-score adds to `segnet evaluate` (issue 19: at most 1.5x evaluation without it).

    python benchmarks/boundary_f.py --work /tmp/hedseg-bench   # 6 frames of 1024x2048: ~2 min (+2 min to build once)
    python benchmarks/boundary_f.py --frames 4 --repeats 1 --eval-size 256x448
    python benchmarks/boundary_f.py --device cuda          # on a GPU: the boundary F on the device

It builds (once, in a child process) a fixture val split of synthetic 1024x2048 frames with the
default resolution levels, trains vanilla on it for a few steps (random backbone, so that predictions
have a structure of their own rather than a random model's blobs), then:

- evaluate: `segnet.evaluate.evaluate` on the split with and without the boundary F, interleaved
  (`--repeats` pairs, the first pair after a warm-up evaluation), at `--eval-size` (default: the last stage of
  the default schedule, the study's evaluation size), labels at their full 1024x2048; seconds per frame
  of each and their ratio per pair. Only a ratio measured side by side counts on a shared machine; the
  run with the boundary F also times its `BoundaryFScore.update` calls, so that its own ratio (*inside*:
  its time over its time less theirs) holds even when the machine's load changes between runs.
- per frame: the boundary F alone on the maps evaluate scores (the model's predictions and the labels),
  and on the labels against themselves shifted by 3 px (a near-perfect prediction), ms per frame: both
  ways, `frame_boundary_f` (OpenCV on the host, what a CPU evaluation uses) and `frame_boundary_f_tensor`
  (on `--device`, what a GPU evaluation uses).

Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.options import parse_size  # noqa: E402
from hedprep.shards import MANIFEST_NAME, open_split, read_manifest  # noqa: E402
from segnet.boundary import BoundaryFScore, frame_boundary_f, frame_boundary_f_tensor  # noqa: E402
from segnet.config import DEFAULT_SCHEDULE, TrainConfig, parse_schedule  # noqa: E402
from segnet.evaluate import evaluate, predict_frames  # noqa: E402

SPLIT = "val"
SIZE = (1024, 2048)


def build_data(root: Path, shards: Path, frames: int) -> None:
    """The fixture's val split of `frames` 1024x2048 frames and its shards (HED on the CPU, default levels)."""
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    if not (root / "leftImg8bit" / SPLIT).is_dir():
        make_fixture(root, {"train": 0, SPLIT: frames, "test": 0}, size=SIZE, seed=5)
    print(f"building {frames} frames of 1024x2048 with HED (once) in {shards}", file=sys.stderr)
    build_split(BuildConfig(root=str(root), split=SPLIT, out=str(shards), frames_per_shard=frames))


def prepare(work: Path, frames: int) -> tuple[Path, Path]:
    """The shards (built by a child process: the build tunes its process for HED) and a trained checkpoint."""
    base = work / f"boundary-f-{frames}"
    shards = base / "shards"
    manifest = shards / SPLIT / MANIFEST_NAME
    if not (manifest.is_file() and read_manifest(shards / SPLIT).complete):
        child = multiprocessing.get_context("spawn").Process(target=build_data, args=(base / "cityscapes", shards,
                                                                                      frames))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"building the benchmark's shards under {base} failed (exit status {child.exitcode})")
    checkpoint = base / "run" / "last.pt"
    if not checkpoint.is_file():
        from segnet.train import train

        print("training vanilla for 6 steps", file=sys.stderr)
        train(TrainConfig(variant="vanilla", shards=str(shards), out=str(base / "run"), split=SPLIT, val_split=None,
                          schedule=parse_schedule("128x256:2:2,256x512:2:1"), backbone_weights="none", device="cpu",
                          workers=0, lr=1e-3))
    return shards, checkpoint


def seconds_per_frame(checkpoint: Path, shards: Path, eval_size: tuple[int, int], device: str,
                      boundary_f: bool) -> tuple[float, float]:
    """Seconds per frame of one evaluation, and of them the seconds in `BoundaryFScore.update` (timed
    inside the same run, so that their ratio holds on a machine whose load changes between runs)."""
    spent = [0.0]
    update = BoundaryFScore.update

    def timed_update(self, prediction, label) -> None:
        started = time.perf_counter()
        update(self, prediction, label)
        spent[0] += time.perf_counter() - started

    BoundaryFScore.update = timed_update  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        outcome = evaluate(checkpoint, shards, SPLIT, eval_size, device=device, boundary_f=boundary_f)
        seconds = time.perf_counter() - start
    finally:
        BoundaryFScore.update = update  # type: ignore[method-assign]
    assert (outcome.result.boundary is not None) == boundary_f
    return seconds / outcome.frames, spent[0] / outcome.frames


def boundary_ms(pairs: list[tuple[np.ndarray, np.ndarray]], repeats: int, device: str | None = None) -> float:
    """Mean ms per frame (best of `repeats` passes) of `frame_boundary_f`, or with a `device`, of
    `frame_boundary_f_tensor` there (the maps already on it, the figures read back)."""
    if device is not None:
        pairs = [(torch.from_numpy(p).to(device), torch.from_numpy(lab).to(device)) for p, lab in pairs]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for prediction, label in pairs:
            if device is None:
                frame_boundary_f(prediction, label)
            else:
                frame_boundary_f_tensor(prediction, label).cpu()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hedseg-bench"))
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="Pairs of evaluations (with, without).")
    parser.add_argument("--eval-size", default=None, help="HxW; default: the default schedule's last stage.")
    parser.add_argument("--device", default="cpu", help="Where evaluate runs (cpu, cuda).")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # tables as they come, into a file too
    eval_size = parse_size(args.eval_size) if args.eval_size else parse_schedule(DEFAULT_SCHEDULE)[-1].size
    shards, checkpoint = prepare(args.work, args.frames)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; {args.frames} frames of "
          f"1024x2048, model at {eval_size[0]}x{eval_size[1]}", file=sys.stderr)
    seconds_per_frame(checkpoint, shards, eval_size, args.device, True)  # warm-up: caches, allocator
    pairs = []
    for _ in range(args.repeats):
        pairs.append((seconds_per_frame(checkpoint, shards, eval_size, args.device, True),
                      seconds_per_frame(checkpoint, shards, eval_size, args.device, False)[0]))
    print(f"\n### Evaluation with and without the boundary F ({args.frames} frames of 1024x2048, model at "
          f"{eval_size[0]}x{eval_size[1]}, s per frame)\n")
    print("*inside*: the run with the boundary F over itself less its time in `BoundaryFScore.update`.\n")
    print("| pair | with boundary F | of it, the boundary F | without | ratio | ratio inside |")
    print("|---|---|---|---|---|---|")
    for k, ((with_f, spent), without) in enumerate(pairs, 1):
        print(f"| {k} | {with_f:.3f} | {spent:.3f} | {without:.3f} | {with_f / without:.3f} | "
              f"{with_f / (with_f - spent):.3f} |")
    ratios = [with_f / without for (with_f, _), without in pairs]
    inside = [with_f / (with_f - spent) for (with_f, spent), _ in pairs]
    print(f"\nmedian ratio {statistics.median(ratios):.3f}, inside {statistics.median(inside):.3f} (goal <= 1.5)")
    with open_split(shards, SPLIT) as reader:
        labels = [reader.read(i).label for i in range(len(reader))]
    maps = predict_frames(checkpoint, shards, SPLIT, list(range(len(labels))), device=args.device, eval_size=eval_size)
    shifted = [np.roll(np.where(label == 255, 0, label), 3, axis=1) for label in labels]
    cases = {"the model's predictions against the labels": list(zip(maps, labels, strict=True)),
             "the labels shifted 3 px against the labels": list(zip(shifted, labels, strict=True))}
    # the tensors' way on a CPU takes seconds a frame (it is for GPUs): one frame, once, there
    few, repeats = (slice(1), 1) if args.device == "cpu" else (slice(None), 2)
    times = {name: (boundary_ms(frames, 2), boundary_ms(frames[few], repeats, args.device))
             for name, frames in cases.items()}

    print("\n### The boundary F alone at 1024x2048, 4 thresholds (ms per frame, best of 2 passes; tensors on a CPU: "
          "the first frame, once)\n")
    print(f"| maps | `frame_boundary_f` (OpenCV, host) | `frame_boundary_f_tensor` ({args.device}) |")
    print("|---|---|---|")
    for name, (host, tensors) in times.items():
        print(f"| {name} | {host:.0f} | {tensors:.0f} |")


if __name__ == "__main__":
    main()
