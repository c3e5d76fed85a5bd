"""What a build will do, decided before anything runs: the options checked, the split's frames cut
into shard specs, and the parameters every shard and the manifest record.

Everything a user can get wrong (options, dataset folder, labels, weights, device) fails here, in
about a second, before HED loads, a progress bar is drawn or a file is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hedprep.cityscapes import list_frames, resolve_root
from hedprep.errors import OptionError
from hedprep.hed import PRECISIONS, HedRun, read_weights, resolve_hed_run
from hedprep.options import parse_compression
from hedprep.shard_builder import EngineSpec, ShardSpec, first_frame_size
from hedprep.shards import DEFAULT_LEVELS, MAX_LEVELS, ShardInfo, max_levels, shard_name

ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `hedprep build` takes. See `hedprep build --help` for each option."""

    root: str | None
    split: str
    out: str
    weights: str = "bsds500"
    frames_per_shard: int = 32
    batch_size: int = 1
    precision: str = "fp32"
    device: str = "auto"
    compression: str = "gzip"
    scheduler: str | None = None
    workers: int | None = None
    limit: int | None = None
    on_error: str = "fail"
    force: bool = False
    labels: str = "fine"
    levels: int = DEFAULT_LEVELS


@dataclass
class BuildPlan:
    """The shards of a split and the manifest parameters, before anything runs."""

    split_dir: Path
    params: dict[str, Any]
    specs: list[ShardSpec]

    @property
    def planned(self) -> dict[int, list[str]]:
        """Shard index -> the frame ids planned for that shard."""
        return {spec.index: spec.frame_ids for spec in self.specs}


def check_config(config: BuildConfig) -> None:
    """The checks that need nothing but the options themselves."""
    for option, value in (("--frames-per-shard", config.frames_per_shard), ("--batch-size", config.batch_size),
                          ("--limit", config.limit), ("--workers", config.workers)):
        if value is not None and value < 1:
            raise OptionError(f"{option} {value}: must be at least 1")
    if not 0 <= config.levels <= MAX_LEVELS:
        raise OptionError(f"--levels {config.levels}: choose 0 to {MAX_LEVELS}")
    if config.precision not in PRECISIONS:
        raise OptionError(f"--precision {config.precision}: choose one of {', '.join(PRECISIONS)}")
    if config.on_error not in ON_ERROR:
        raise OptionError(f"--on-error {config.on_error}: choose one of {', '.join(ON_ERROR)}")
    if config.workers is not None and config.scheduler:
        raise OptionError("--workers and --scheduler exclude each other: --workers starts a local cluster")
    if config.device.startswith("cuda:") and (config.workers or config.scheduler):
        raise OptionError(f"--device {config.device}: each worker of a cluster sees its own GPU as cuda; "
                          "use --device cuda (docs/scaling.md)")
    parse_compression(config.compression)


def plan_build(config: BuildConfig, hed_run: HedRun | None = None) -> BuildPlan:
    """List the split's frames, fix the frame size, and cut the frames into shard specs.

    Reads the dataset's folders, the first frame and the weights file; writes nothing.

    Args:
        config: the build's options.
        hed_run: the device kind and precision HED will run as where the tasks run (a remote
            cluster's workers are asked, `pipelines.build`); default: resolved in this process.
    """
    check_config(config)
    compression = parse_compression(config.compression)
    root = resolve_root(config.root).resolve()
    frames = list_frames(root, config.split, config.labels, require_labels=config.on_error == "fail")
    if config.limit is not None:
        frames = frames[: config.limit]
    hed_run = hed_run or resolve_hed_run(config.device, config.precision)
    weights = read_weights(config.weights).info
    height, width = first_frame_size(frames, config.on_error)
    if config.levels > max_levels(height, width):
        raise OptionError(
            f"--levels {config.levels}: frames of {height}x{width} take at most {max_levels(height, width)} "
            f"(level k is 1/2^k of the frame, and 2^k may not exceed its smaller side)"
        )
    info = ShardInfo(
        split=config.split,
        dataset_root=str(root),
        hed_weights=weights.name,
        hed_weights_sha256=weights.sha256,
        precision=hed_run.precision,
        compression=str(compression),
        frame_height=height,
        frame_width=width,
        levels=config.levels,
        device=hed_run.device,
    )
    params = {
        **asdict(info),
        "labels": config.labels,
        "frames_per_shard": config.frames_per_shard,
        "limit": config.limit,
        "on_error": config.on_error,
        "filter_plugin": compression.plugin_note(),
    }
    # `auto` becomes the kind it resolved to: a worker without that device then fails instead of
    # making edges on another one.
    device = hed_run.device if config.device == "auto" else config.device
    engine = EngineSpec(config.weights, hed_run.precision, device, config.batch_size)
    split_dir = Path(config.out).absolute() / config.split  # workers on other hosts see the same path
    step = config.frames_per_shard
    specs = [
        ShardSpec(i, str(split_dir / shard_name(i)), tuple(frames[start : start + step]), info, compression,
                  engine, config.on_error)
        for i, start in enumerate(range(0, len(frames), step))
    ]
    return BuildPlan(split_dir, params, specs)
