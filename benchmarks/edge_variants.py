"""The measurements behind issue 19's defaults and comparisons, on the demo fixture: runs of a tiny schedule
from random weights, each scored on val by mIoU and the mean boundary F-score (segnet.boundary) at
its four thresholds, at the labels' 128x256 (tolerances of 1, 1, 2 and 2 px there).

    python benchmarks/edge_variants.py --shards out/study/shards                 # every group
    python benchmarks/edge_variants.py --shards out/study/shards --only alpha --seeds 0 1

docs/segnet.md's figures: `OMP_NUM_THREADS=1` (one thread per run, on a shared 2-core machine), seeds
0 and 1 for alpha, se-init and edge-init, 0 1 2 for compare.

Groups (each prints a Markdown table for docs/segnet.md: one row per setting, per-seed figures, mean
and spread = max - min):
- alpha: dl-hed-loss with --edge-alpha 0 (vanilla's loss exactly), 1, 2, 5;
- se-init: dlse with --se-init default and identity;
- edge-init: dlse-hed with --edge-init default, zero and mean;
- compare: vanilla, dl-boundary, dl-hed-head, dl-hed-loss (issue 19, section 4).

`--shards` is a folder of built train and val splits: `make demo` leaves one in out/study/shards; the
Makefile's demo lines `hedprep fixture out/fixture` and the two `hedprep build` lines make one alone.
Runs go to `--work` (a temporary folder by default) and are reused when rerun with the same folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segnet.boundary import BoundaryFScore  # noqa: E402
from segnet.config import TrainConfig, parse_schedule  # noqa: E402
from segnet.data import ShardDataset  # noqa: E402
from segnet.evaluate import evaluate, predict_frames  # noqa: E402
from segnet.run_folder import RunFolder  # noqa: E402
from segnet.train import train  # noqa: E402

GROUPS = {
    "alpha": [("dl-hed-loss", {"edge_alpha": alpha}) for alpha in (0.0, 1.0, 2.0, 5.0)],
    "se-init": [("dlse", {"se_init": init}) for init in ("default", "identity")],
    "edge-init": [("dlse-hed", {"edge_init": init}) for init in ("default", "zero", "mean")],
    # dl-hed-loss at the default --edge-alpha, named as its run in the alpha group (reused from it)
    "compare": [("vanilla", {}), ("dl-boundary", {}), ("dl-hed-head", {}),
                ("dl-hed-loss", {"edge_alpha": TrainConfig("dl-hed-loss", "", "").edge_alpha})],
}


def run_name(variant: str, options: dict, seed: int) -> str:
    settings = "-".join(f"{key}={value}" for key, value in sorted(options.items()))
    return f"{variant}-{settings}-seed{seed}" if settings else f"{variant}-seed{seed}"


def scores(checkpoint: Path, shards: str) -> dict[str, float]:
    """val mIoU and the mean boundary F at each threshold, at the labels' stored size."""
    result = evaluate(checkpoint, shards, "val", device="cpu", workers=0).result
    dataset = ShardDataset(shards, "val", 3, resize_labels=False)
    labels = [dataset[i][1].numpy() for i in range(len(dataset))]
    boundary = BoundaryFScore()
    for prediction, label in zip(predict_frames(checkpoint, shards, "val", list(range(len(dataset))), "cpu"),
                                 labels, strict=True):
        boundary.update(prediction, label)
    return {"mIoU": result.miou, **{f"BF {s.threshold:g} ({s.pixels} px)": s.mean_f for s in boundary.result()}}


def measure(variant: str, options: dict, seed: int, args: argparse.Namespace) -> dict[str, float]:
    out = Path(args.work) / run_name(variant, options, seed)
    figures = out / "figures.json"
    if figures.is_file():
        return json.loads(figures.read_text())
    config = TrainConfig(variant=variant, shards=args.shards, out=str(out), schedule=parse_schedule(args.schedule),
                         lr=args.lr, backbone_weights="none", device="cpu", workers=0, seed=seed, val_split=None,
                         **options)
    train(config, resume=RunFolder(out).started())
    values = scores(out / "last.pt", args.shards)
    figures.write_text(json.dumps(values))
    return values


def table(group: str, args: argparse.Namespace) -> str:
    lines = []
    for variant, options in GROUPS[group]:
        runs = [measure(variant, options, seed, args) for seed in args.seeds]
        setting = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in options.items()) or "-"
        cells = []
        for key in runs[0]:
            values = [100 * r[key] for r in runs]
            spread = max(values) - min(values)
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f} ({', '.join(f'{v:.1f}' for v in values)})")
        if not lines:
            lines += ["| variant | setting | " + " | ".join(runs[0]) + " |", "|---|---|" + "---|" * len(runs[0])]
        lines.append(f"| {variant} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="built train and val splits of the demo fixture")
    parser.add_argument("--work", default=None, help="folder of the runs (default: a temporary one)")
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--schedule", default="64x128:4:8")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    args.work = args.work or tempfile.mkdtemp(prefix="edge-variants-")
    print(f"fixture shards {args.shards}; schedule {args.schedule}, Adam {args.lr}, random weights, CPU; "
          f"seeds {', '.join(map(str, args.seeds))}; val: mIoU and mean boundary F (%), mean ± spread (per seed)\n")
    for group in args.only:
        print(f"{group}:\n\n{table(group, args)}\n", flush=True)


if __name__ == "__main__":
    main()
