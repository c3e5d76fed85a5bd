"""dlse-sf with and without rescaling its softmax gates by the channel count C, trained side by side.

    python benchmarks/segnet_sf_rescale.py                  # fixture 64x128, 30 epochs of 2 batches each
    python benchmarks/segnet_sf_rescale.py --epochs 10

Softmax gates over C channels average 1/C, so without rescaling every SE branch of layer1-3 is scaled
down about C-fold (256-1024x). Both runs use the same seed, data, order and schedule; the script
prints each run's loss and val mIoU per epoch (Markdown, for docs/segnet.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.build_plan import BuildConfig  # noqa: E402
from hedprep.fixture import make_fixture  # noqa: E402
from pipelines.build import build_split  # noqa: E402
from segnet.config import TrainConfig, parse_schedule  # noqa: E402
from segnet.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sf-rescale-"))
    make_fixture(work / "cityscapes", {"train": 8, "val": 4, "test": 0}, size=(64, 128), seed=11)
    for split in ("train", "val"):
        build_split(BuildConfig(root=str(work / "cityscapes"), split=split, out=str(work / "shards"), device="cpu"))
    curves = {}
    for rescale in (True, False):
        out = work / f"run-{rescale}"
        train(TrainConfig(variant="dlse-sf", shards=str(work / "shards"), out=str(out),
                          schedule=parse_schedule(f"64x128:4:{args.epochs}"), lr=args.lr, backbone_weights="none",
                          sf_rescale=rescale, device="cpu", workers=0, seed=0))
        curves[rescale] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"dlse-sf on the fixture (8 train, 4 val frames of 64x128), batch 4, Adam {args.lr}, from scratch\n")
    print("| epoch | loss, rescaled | loss, not rescaled | val mIoU, rescaled | val mIoU, not rescaled |")
    print("|---|---|---|---|---|")
    for a, b in zip(curves[True], curves[False], strict=True):
        if a["epoch"] in (1, 2, 5) or a["epoch"] % 10 == 0:
            print(f"| {a['epoch']} | {a['loss']:.3f} | {b['loss']:.3f} | {a['val_miou']:.3f} | {b['val_miou']:.3f} |")
    best = {k: max(r["val_miou"] for r in v) for k, v in curves.items()}
    print(f"\nbest val mIoU: rescaled {best[True]:.3f}, not rescaled {best[False]:.3f}")


if __name__ == "__main__":
    main()
