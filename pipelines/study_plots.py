"""The study's figures as PNG files (matplotlib, no display): mIoU per variant beside the reported
figure and its mean boundary F per tolerance, per-class IoU as a heatmap, training curves with the
stages marked, and the qualitative sheet (image, edge map, ground truth and each variant's prediction
for a few val frames)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from hedprep.atomic import atomic_file  # noqa: E402
from hedprep.shards import TRAIN_CLASSES, trainid_to_color  # noqa: E402
from segnet.run_folder import RunFolder  # noqa: E402

OURS_COLOR = "#1f77b4"
REPORTED_COLOR = "#bbbbbb"
BOUNDARY_COLORS = ("#fdd0a2", "#fd8d3c", "#d94801", "#7f2704")  # boundary F bars, tightest tolerance lightest
SHEET_PANEL_WIDTH = 320  # pixels per picture on the qualitative sheet


def plot_miou(rows, reported: dict[str, float], path: Path) -> Path:
    """Bars of our val mIoU per variant beside the study's reported mIoU (%), and beside them a panel of
    each variant's mean boundary F (%) at each tolerance."""
    variants = [row.variant for row in rows]
    ours = [100 * row.miou if row.miou is not None and not math.isnan(row.miou) else 0.0 for row in rows]
    x = np.arange(len(variants))
    fig, (ax, boundary_ax) = plt.subplots(1, 2, figsize=(12, 3.6), dpi=100)
    ax.bar(x - 0.2, ours, 0.4, label="ours (val)", color=OURS_COLOR)
    ax.bar(x + 0.2, [reported.get(v, 0.0) for v in variants], 0.4, label="reported (full Cityscapes)",
           color=REPORTED_COLOR)
    ax.set_xticks(x, variants)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    ax.set_title("mIoU per variant")
    _plot_boundary_f(rows, boundary_ax)
    return _save(fig, path)


def _plot_boundary_f(rows, ax) -> None:
    """Grouped bars: each variant's mean boundary F (%) at each tolerance of its evaluation."""
    tolerances = sorted({(e["threshold"], e["pixels"]) for row in rows for e in row.boundary_f})
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(tolerances))
    for k, (threshold, pixels) in enumerate(tolerances):
        means = [next((e["mean"] for e in row.boundary_f if e["threshold"] == threshold), None) for row in rows]
        ax.bar(x + (k - (len(tolerances) - 1) / 2) * width, [0.0 if m is None else 100 * m for m in means], width,
               label=f"{pixels} px ({100 * threshold:g}%)", color=BOUNDARY_COLORS[k % len(BOUNDARY_COLORS)])
    ax.set_xticks(x, [row.variant for row in rows])
    ax.set_ylabel("mean boundary F (%)")
    ax.set_ylim(0, 100)
    if tolerances:
        ax.legend(loc="upper right", title="tolerance", fontsize=8)
    ax.set_title("boundary F per variant (val)")


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
        epochs = RunFolder(row.run_dir).metrics()
        if not epochs:
            continue
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


def plot_qualitative_sheet(frames, variants: list[str], path: Path) -> Path:
    """One row per frame: image, edge map (white = edge), ground truth, then each variant's prediction,
    in Cityscapes colours (ignore and missing predictions black), then the boundary map of each variant
    trained with a boundary head (white = boundary), pictures drawn pixel for pixel."""
    with_maps = [v for v in variants if any(v in frame.boundaries for frame in frames)]
    columns = ["image", "HED edge", "ground truth", *variants, *(f"{v} boundaries" for v in with_maps)]
    height, width = frames[0].label.shape if frames else (1, 2)
    panel_h = max(1, round(SHEET_PANEL_WIDTH * height / width))
    dpi = 100
    fig, axes = plt.subplots(max(1, len(frames)), len(columns), squeeze=False, dpi=dpi,
                             figsize=(len(columns) * (SHEET_PANEL_WIDTH + 8) / dpi,
                                      max(1, len(frames)) * (panel_h + 12) / dpi + 0.8))
    for r, frame in enumerate(frames):
        pictures = [_fit(frame.image, panel_h, cv2.INTER_AREA),
                    np.repeat(_fit(frame.edge, panel_h, cv2.INTER_AREA)[..., None], 3, axis=2),
                    trainid_to_color(_fit(frame.label, panel_h, cv2.INTER_NEAREST))]
        for variant in variants:
            prediction = frame.predictions.get(variant)
            pictures.append(np.zeros_like(pictures[0]) if prediction is None
                            else trainid_to_color(_fit(prediction, panel_h, cv2.INTER_NEAREST)))
        for variant in with_maps:
            boundary = frame.boundaries.get(variant)
            pictures.append(np.zeros_like(pictures[0]) if boundary is None
                            else np.repeat(_fit(boundary, panel_h, cv2.INTER_AREA)[..., None], 3, axis=2))
        for c, (ax, picture) in enumerate(zip(axes[r], pictures, strict=True)):
            ax.imshow(picture, interpolation="nearest")
            if frame.predictions.get(columns[c], True) is None:
                ax.text(0.5, 0.5, "no model", color="white", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(columns[c] if r == 0 else "", fontsize=10)
        axes[r][0].set_ylabel(frame.frame_id, fontsize=7)
    colors = trainid_to_color(np.arange(len(TRAIN_CLASSES), dtype=np.uint8)) / 255.0
    handles = [Patch(color=color, label=name) for name, color in zip(TRAIN_CLASSES, colors, strict=True)]
    handles.append(Patch(facecolor="black", edgecolor="grey", label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=8, frameon=False)
    inches = fig.get_figheight()
    fig.subplots_adjust(left=0.02, right=0.995, top=1 - 0.3 / inches, bottom=0.5 / inches, wspace=0.04, hspace=0.1)
    return _save(fig, path, tight=False)


def _fit(picture: np.ndarray, height: int, interpolation: int) -> np.ndarray:
    """`picture` resized to the sheet's panel size (area for pictures, nearest for label maps)."""
    return cv2.resize(picture, (SHEET_PANEL_WIDTH, height), interpolation=interpolation)


def _save(fig, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as f:
            if tight:
                fig.tight_layout()
                fig.savefig(f, format="png")
            else:
                fig.savefig(f, format="png", bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(fig)
    return path
