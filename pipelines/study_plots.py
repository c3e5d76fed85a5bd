"""The study's figures as PNG files (matplotlib, no display): mIoU per variant beside the reported
figure, per-class IoU as a heatmap, and training curves with the stages marked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hedprep.shards import TRAIN_CLASSES  # noqa: E402

OURS_COLOR = "#1f77b4"
REPORTED_COLOR = "#bbbbbb"


def plot_miou(rows, reported: dict[str, float], path: Path) -> Path:
    """Bars of our val mIoU per variant beside the study's reported mIoU (%)."""
    variants = [row.variant for row in rows]
    ours = [100 * row.miou if row.miou is not None and not math.isnan(row.miou) else 0.0 for row in rows]
    x = np.arange(len(variants))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.bar(x - 0.2, ours, 0.4, label="ours (val)", color=OURS_COLOR)
    ax.bar(x + 0.2, [reported.get(v, 0.0) for v in variants], 0.4, label="reported (full Cityscapes)",
           color=REPORTED_COLOR)
    ax.set_xticks(x, variants)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    ax.set_title("mIoU per variant")
    return _save(fig, path)


def plot_class_iou(rows, path: Path) -> Path:
    """Per-class IoU (%) as a variants x 19 classes heatmap; classes without a figure are blank."""
    values = np.array([[np.nan if row.iou.get(name) is None else 100 * row.iou[name] for name in TRAIN_CLASSES]
                       for row in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 2.2), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(TRAIN_CLASSES)), TRAIN_CLASSES, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), [row.variant for row in rows])
    fig.colorbar(image, ax=ax, label="IoU (%)")
    ax.set_title("per-class IoU on val")
    return _save(fig, path)


def plot_training_curves(rows, path: Path) -> Path:
    """Loss and val mIoU per epoch of each variant's run (metrics.jsonl), stage boundaries dashed."""
    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    boundaries: set[int] = set()
    for row in rows:
        metrics = row.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            continue
        epochs = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        x = np.arange(1, len(epochs) + 1)
        loss_ax.plot(x, [e["loss"] for e in epochs], marker="o", label=row.variant)
        miou_ax.plot(x, [100 * e["val_miou"] if e["val_miou"] is not None else np.nan for e in epochs], marker="o",
                     label=row.variant)
        boundaries |= {i + 0.5 for i in range(1, len(epochs)) if epochs[i]["stage"] != epochs[i - 1]["stage"]}
    for ax, label in ((loss_ax, "training loss"), (miou_ax, "val mIoU (%) at the stage size")):
        for b in sorted(boundaries):
            ax.axvline(b, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (dashed: next stage)")
        ax.set_ylabel(label)
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
