"""Disk per frame of each codec, by part of the shard, and what Cityscapes' splits would take.

    python benchmarks/shard_storage.py --split-dir /tmp/hedseg-bench/train8-1024x2048/shards-levels3/train

Takes a built split (with its levels; benchmarks/segnet_loader.py builds one of 8 fixture frames of
1024x2048 with real HED edges), rewrites it under each `--compression` (same frames, same levels, no
HED) in a temporary folder, and prints MB per frame of level 0 (frames + labels), levels 1..L, the
label colours for viewers, and the whole file; then the size of Cityscapes' splits at that rate.
Fixture frames compress differently from real photographs: read the figures as estimates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.options import parse_compression  # noqa: E402
from hedprep.shards import ShardInfo, ShardWriter, level_dataset, open_shard, open_split, read_manifest  # noqa: E402

CODECS = ("none", "gzip", "gzip:4", "lzf", "zstd", "lz4")
# Frames of Cityscapes' splits: fine annotations (train, val, test) and the coarse train_extra.
CITYSCAPES = {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998}


def rewrite(split_dir: Path, out_dir: Path, codec: str) -> list[Path]:
    """Every shard of `split_dir` written again under `codec` into `out_dir`; returns the files."""
    manifest = read_manifest(split_dir)
    compression = parse_compression(codec)
    info = ShardInfo.from_params({**manifest.params, "compression": str(compression)})
    reader = open_split(split_dir)
    files, start = [], 0
    for shard in manifest.shards:
        path = out_dir / shard.file
        with ShardWriter(path, len(shard.frame_ids), info, compression) as writer:
            for i in range(start, start + len(shard.frame_ids)):
                sample = reader[i]
                writer.append(sample.frame_id, sample.frame, sample.label)
            writer.close()
        files.append(path)
        start += len(shard.frame_ids)
    return files


def parts(path: Path) -> dict[str, int]:
    """Stored bytes of one shard by part: level 0, the other levels, the label colours, the file."""
    with open_shard(path) as f:
        levels = int(f.attrs["levels"])
        size = {
            "level 0": sum(f[level_dataset(0, n)].id.get_storage_size() for n in ("frames", "labels")),
            "levels": sum(f[level_dataset(k, n)].id.get_storage_size()
                          for k in range(1, levels + 1) for n in ("frames", "labels")),
            "label colours": f["label_colors"].id.get_storage_size(),
        }
    size["file"] = path.stat().st_size
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", required=True, type=Path, help="a built split folder (with manifest.json)")
    args = parser.parse_args()
    frames = read_manifest(args.split_dir).num_frames
    print(f"{frames} frames from {args.split_dir}; MB per frame (10^6 bytes)\n")
    print("| codec | level 0 | levels | label colours | file | train + val + test | train_extra |")
    print("|---|---|---|---|---|---|---|")
    fine = CITYSCAPES["train"] + CITYSCAPES["val"] + CITYSCAPES["test"]
    for codec in CODECS:
        with tempfile.TemporaryDirectory(prefix="shard-storage-") as tmp:
            files = rewrite(args.split_dir, Path(tmp), codec)
            totals: dict[str, int] = {}
            for path in files:
                for key, value in parts(path).items():
                    totals[key] = totals.get(key, 0) + value
        per_frame = {key: value / frames / 1e6 for key, value in totals.items()}
        extra = per_frame["file"] * CITYSCAPES["train_extra"] / 1e3
        print(f"| {codec} | {per_frame['level 0']:.2f} | {per_frame['levels']:.2f} | "
              f"{per_frame['label colours']:.3f} | {per_frame['file']:.2f} | "
              f"{per_frame['file'] * fine / 1e3:.1f} GB | {extra:.1f} GB |", flush=True)


if __name__ == "__main__":
    main()
