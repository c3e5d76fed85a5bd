"""segnet training speed on CPU: images/s per variant and stage size, the training loop's overhead, and
peak memory at the largest stage.

    python benchmarks/segnet_train.py                          # all sections (about 20 minutes on 2 cores)
    python benchmarks/segnet_train.py --only speed --steps 2
    python benchmarks/segnet_train.py --only overhead memory
    python benchmarks/segnet_train.py --only overhead --augment --frames 8

Sections (each prints a Markdown table for docs/performance.md):
- speed: forward + backward + Adam step on a batch already in memory, per variant and stage size
  (the schedule's batch sizes), fp32, and bf16 autocast where the CPU has native bf16.
- overhead: `segnet.train.train` images/s (the second of two epochs per stage, reading 1024x2048 gzip shards with
  `--levels` resolution levels (default 3) and the default DataLoader workers (0 on a CPU), validation off)
  over the same model's in-memory step rate, per stage; goal >= 0.9. With `--augment`, also with
  mmsegmentation's augmentations (`--scale-range 0.5,2.0 --cat-max-ratio 0.75 --photometric`).
- memory: peak RSS (VmHWM) of a fresh process training vanilla at 512x912, batch 4, for 2 steps.
- layout: the in-memory step in NCHW and in channels-last (`--channels-last`), interleaved, per
  variant at the first stages; the ratio decides `segnet.backends.CHANNELS_LAST_ON_CPU`.
- compile: `torch.compile` of the model (`--compile`): the first step's time (compilation) and the
  step rate after it, beside eager, at 128x224 batch 4.
- optimizer: Adam's three CPU implementations (a loop over parameters, `foreach`, `fused`), interleaved:
  the optimizer step's milliseconds and the whole step's images/s, vanilla at the first stages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.process_tuning import tune_process_for_hed  # noqa: E402
from segnet.config import DEFAULT_SCHEDULE, TrainConfig, parse_schedule  # noqa: E402
from segnet.deeplab import VARIANTS, build_model  # noqa: E402
from segnet.devices import native_bf16  # noqa: E402


def step_rate(variant: str, size: tuple[int, int], batch: int, steps: int, dtype: torch.dtype | None) -> float:
    """Images/s of forward + backward + Adam (fused, as segnet train) on one in-memory batch (best of `steps`
    after a warm-up)."""
    torch.manual_seed(0)
    model = build_model(variant).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
    images = torch.randn(batch, model.in_channels, *size)
    labels = torch.randint(0, 19, (batch, *size))
    best = float("inf")
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            best = min(best, time.perf_counter() - start)
    return batch / best


class Step:
    """forward + backward + Adam on one in-memory batch, in a chosen memory layout, eager or compiled."""

    def __init__(self, variant: str, size: tuple[int, int], batch: int, channels_last: bool = False,
                 compiled: bool = False, **adam: bool) -> None:
        torch.manual_seed(0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(variant).train().to(memory_format=layout)
        self.network = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-5, **adam)
        self.optimizer_seconds = 0.0  # of the last step
        self.images = torch.randn(batch, self.model.in_channels, *size).contiguous(memory_format=layout)
        self.labels = torch.randint(0, 19, (batch, *size))

    def __call__(self) -> float:
        """Seconds of one step."""
        start = time.perf_counter()
        loss = F.cross_entropy(self.network(self.images).float(), self.labels, ignore_index=255)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepping = time.perf_counter()
        self.optimizer.step()
        end = time.perf_counter()
        self.optimizer_seconds = end - stepping
        return end - start


ADAMS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizer_section(args) -> None:
    print(f"\n### Adam on the CPU: vanilla, the three implementations interleaved, best of {args.steps} steps\n")
    print("| size, batch | " + " | ".join(f"{name}: Adam ms, images/s" for name in ADAMS) + " | fused / loop |")
    print("|---|" + "---|" * (len(ADAMS) + 1))
    for stage in args.stages[: args.layout_stages]:
        steps = {name: Step("vanilla", stage.size, stage.batch_size, **adam) for name, adam in ADAMS.items()}
        best = {name: (float("inf"), float("inf")) for name in steps}
        for i in range(args.steps + 1):
            for name, step in steps.items():
                seconds = step()
                if i:  # the first step of each warms up
                    best[name] = (min(best[name][0], step.optimizer_seconds), min(best[name][1], seconds))
        cells = [f"{adam * 1000:.0f}, {stage.batch_size / whole:.2f}" for adam, whole in best.values()]
        print(f"| {stage.height}x{stage.width}, {stage.batch_size} | " + " | ".join(cells) +
              f" | {best['loop'][1] / best['fused'][1]:.2f} |", flush=True)


def layout(args) -> None:
    print(f"\n### Memory layout: images/s, NCHW and channels-last interleaved, best of {args.steps} steps\n")
    print("| variant | size, batch | NCHW | channels-last | channels-last / NCHW |")
    print("|---|---|---|---|---|")
    for variant in ("vanilla", "dlse-hed"):
        for stage in args.stages[: args.layout_stages]:
            steps = {last: Step(variant, stage.size, stage.batch_size, channels_last=last) for last in (False, True)}
            best = {last: float("inf") for last in steps}
            for i in range(args.steps + 1):
                for last, step in steps.items():
                    seconds = step()
                    if i:  # the first step of each warms up
                        best[last] = min(best[last], seconds)
            rates = {last: stage.batch_size / best[last] for last in steps}
            print(f"| {variant} | {stage.height}x{stage.width}, {stage.batch_size} | {rates[False]:.2f} | "
                  f"{rates[True]:.2f} | {rates[True] / rates[False]:.2f} |", flush=True)


def compile_section(args) -> None:
    size, batch = (128, 224), 4
    print(f"\n### torch.compile: {size[0]}x{size[1]} batch {batch}, eager and compiled steps interleaved, "
          f"best of {args.steps}\n")
    print("| variant | compilation, first step (s) | eager images/s | compiled images/s | compiled / eager |")
    print("|---|---|---|---|---|")
    for variant in ("vanilla", "dlse-hed"):
        steps = {mode: Step(variant, size, batch, compiled=mode == "compile") for mode in ("eager", "compile")}
        steps["eager"]()  # warm-up
        first = steps["compile"]()
        best = {mode: step() for mode, step in steps.items()}
        for _ in range(args.steps - 1):
            for mode, step in steps.items():
                best[mode] = min(best[mode], step())
        rates = {mode: batch / seconds for mode, seconds in best.items()}
        print(f"| {variant} | {first:.0f} | {rates['eager']:.2f} | {rates['compile']:.2f} | "
              f"{rates['compile'] / rates['eager']:.2f} |", flush=True)


def speed(args) -> None:
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if native_bf16(torch.device("cpu")) else [])
    print(f"\n### Training step rate (images/s), in-memory batches, best of {args.steps} steps\n")
    print("| variant | " + " | ".join(f"{s.height}x{s.width} b{s.batch_size} {p}" for s in args.stages
                                     for p, _ in precisions) + " |")
    print("|---|" + "---|" * (len(args.stages) * len(precisions)))
    for variant in VARIANTS:
        cells = [f"{step_rate(variant, s.size, s.batch_size, args.steps, dtype):.2f}"
                 for s in args.stages for _, dtype in precisions]
        print(f"| {variant} | " + " | ".join(cells) + " |", flush=True)


def shards_for_overhead(work: Path, frames: int, levels: int) -> Path:
    from hedprep.build_plan import BuildConfig
    from hedprep.fixture import make_fixture
    from pipelines.build import build_split

    shards = work / "shards"
    if not (work / "cityscapes").is_dir():
        make_fixture(work / "cityscapes", {"train": frames, "val": 0, "test": 0}, size=(1024, 2048), seed=4)
    # HED runs once; another --levels rewrites the levels only
    build_split(BuildConfig(root=str(work / "cityscapes"), split="train", out=str(shards),
                            frames_per_shard=frames, levels=levels))
    return shards


# mmsegmentation's Cityscapes augmentations, as `--augment` trains with them.
AUGMENTATIONS = {"scale_range": (0.5, 2.0), "cat_max_ratio": 0.75, "flip": True, "photometric": True}


def train_rate(shards: Path, work: str, stage, **options) -> float:
    """`segnet train` images/s of vanilla at one stage: the second of two epochs (the process and the
    page cache are warm)."""
    from segnet.train import train

    out = Path(tempfile.mkdtemp(prefix="overhead-", dir=work)) / "run"
    schedule = parse_schedule(f"{stage.height}x{stage.width}:{stage.batch_size}:2")
    train(TrainConfig(variant="vanilla", shards=str(shards), out=str(out), schedule=schedule,
                      val_split=None, backbone_weights="none", device="cpu", seed=0, **options))
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]


def overhead(args) -> None:
    shards = shards_for_overhead(Path(args.work), args.frames, args.levels)
    print(f"\n### Training loop overhead: vanilla, {args.frames} frames of 1024x2048 (gzip shards, "
          f"--levels {args.levels}), default DataLoader workers, validation off\n")
    head = "| stage | in-memory step (images/s) | segnet train (images/s) | train / in-memory |"
    if args.augment:
        head += " augmented train (images/s) | augmented / in-memory |"
        print("augmented: `--scale-range 0.5,2.0 --cat-max-ratio 0.75 --flip --photometric` (crops of the stage "
              "size from frames scaled by 0.5-2.0)\n")
    print(head + "\n|" + "---|" * head.count(" | ") + "---|")
    for stage in args.stages:
        memory = step_rate("vanilla", stage.size, stage.batch_size, args.steps, None)
        loop = train_rate(shards, args.work, stage)
        row = (f"| {stage.height}x{stage.width} b{stage.batch_size} | {memory:.2f} | {loop:.2f} | "
               f"**{loop / memory:.3f}** |")
        if args.augment:
            augmented = train_rate(shards, args.work, stage, **AUGMENTATIONS)
            row += f" {augmented:.2f} | **{augmented / memory:.3f}** |"
        print(row, flush=True)


MEMORY_SCRIPT = r"""
import sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
from segnet.deeplab import build_model
model = build_model("vanilla").train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
images, labels = torch.randn(4, 3, 512, 912), torch.randint(0, 19, (4, 512, 912))
for _ in range(2):
    loss = F.cross_entropy(model(images), labels, ignore_index=255)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
status = open("/proc/self/status").read()
print(int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) // 1024)
"""


def memory(args) -> None:
    peaks = [int(subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT)], capture_output=True, text=True,
                                check=True).stdout.strip()) for _ in range(2)]
    print(f"\n### Peak RSS, vanilla at 512x912, batch 4, 2 training steps, fp32: {peaks[0]} and {peaks[1]} MiB "
          "(two fresh processes)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=("speed", "overhead", "memory", "layout", "compile", "optimizer"),
                        default=["speed", "overhead", "memory", "layout", "compile", "optimizer"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layout-stages", type=int, default=2, help="stages the layout section measures")
    parser.add_argument("--frames", type=int, default=32, help="frames of the overhead section's shards")
    parser.add_argument("--levels", type=int, default=3, help="resolution levels of the overhead section's shards")
    parser.add_argument("--work", default=None, help="folder for the overhead section's data (default: temporary)")
    parser.add_argument("--augment", action="store_true",
                        help="overhead: also train with mmsegmentation's augmentations (scale, crop, photometric)")
    args = parser.parse_args()
    args.stages = parse_schedule(DEFAULT_SCHEDULE)
    args.work = args.work or tempfile.mkdtemp(prefix="segnet-bench-")
    tuning = tune_process_for_hed()
    print(f"torch {torch.__version__}, {tuning.threads} threads, native bf16: {native_bf16(torch.device('cpu'))}")
    for section in args.only:
        {"speed": speed, "overhead": overhead, "memory": memory, "layout": layout,
         "compile": compile_section, "optimizer": optimizer_section}[section](args)


if __name__ == "__main__":
    main()
