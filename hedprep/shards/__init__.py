"""The shard file format, v3 (v1 and v2 still read): the one owner of how frames, edges and labels sit in HDF5 files.

A split is a folder `OUT/{split}/` of `shard-00000.h5`, `shard-00001.h5`, ... and a `manifest.json`;
`docs/shard-format.md` specifies every dataset and attribute. The package's files follow its jobs:

- `format`: names, layout constants, root attributes (`ShardInfo`).
- `compression`: the HDF5 filters a shard may use.
- `levels`: the resolution levels (1/2, 1/4, ... of the frame) and reading a frame at any size.
- `writer`: `ShardWriter`, one shard written atomically (frames prepared on any thread, stored in order).
- `manifest`: `manifest.json` (`Manifest`, `ShardRecord`, `SkippedFrame`).
- `reader`: `open_shard` for one file, `open_split` / `SplitReader` for a split.
- `verify`: checks of shards against their manifest.
- `resume`: what an interrupted or repeated build keeps, removes and records.

`__all__` below is the contract: other packages (segnet, pipelines) and users import these names
from `hedprep.shards` and nothing from its modules.
"""

from hedprep.cityscapes import (
    IGNORE_INDEX,
    NUM_CLASSES,
    TRAIN_CLASSES,
    trainid_palette,
    trainid_to_color,
    trainid_to_labelid,
)
from hedprep.shards.compression import CODECS, Compression, load_filter_plugins
from hedprep.shards.format import (
    CHANNELS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IGNORED_PIXELS,
    IMAGES_GROUP,
    LEVELS_GROUP,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    ShardInfo,
    ignore_share,
    level_dataset,
    read_attrs,
    shard_name,
    stored_levels,
)
from hedprep.shards.levels import (
    DEFAULT_LEVELS,
    MAX_LEVELS,
    choose_level,
    downsample_frame,
    downsample_labels,
    level_size,
    max_levels,
    resize_frame,
    resize_labels,
)
from hedprep.shards.manifest import Manifest, ShardRecord, SkippedFrame, read_manifest, shard_path, write_manifest
from hedprep.shards.reader import (
    IncompleteSplitError,
    Sample,
    ShardError,
    SplitReader,
    open_shard,
    open_split,
    read_shard_frame,
)
from hedprep.shards.resume import (
    ManifestKeeper,
    build_lock,
    earlier_manifest,
    kept_shards,
    prepare_split_dir,
    remove_leftovers,
)
from hedprep.shards.verify import (
    INCOMPLETE_BUILD,
    ShardProblem,
    SplitCheck,
    check_shard,
    shard_is_complete,
    split_dirs,
    verify_output,
    verify_split,
)
from hedprep.shards.writer import PreparedFrame, ShardWriter

__all__ = [
    # reading
    "open_split",
    "SplitReader",
    "Sample",
    "open_shard",
    "read_shard_frame",
    "ShardError",
    "IncompleteSplitError",
    "load_filter_plugins",
    "read_attrs",
    # the format
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "CHANNELS",
    "IMAGES_GROUP",
    "LEVELS_GROUP",
    "level_dataset",
    "stored_levels",
    "MANIFEST_NAME",
    "CODECS",
    "Compression",
    "ShardInfo",
    "shard_name",
    "IGNORED_PIXELS",
    "ignore_share",
    # resolution levels
    "DEFAULT_LEVELS",
    "MAX_LEVELS",
    "max_levels",
    "level_size",
    "choose_level",
    "downsample_frame",
    "downsample_labels",
    "resize_frame",
    "resize_labels",
    # what the labels mean: Cityscapes trainIds 0-18, 255 = ignore
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "TRAIN_CLASSES",
    "trainid_palette",
    "trainid_to_color",
    "trainid_to_labelid",
    # manifests
    "Manifest",
    "ShardRecord",
    "SkippedFrame",
    "read_manifest",
    "write_manifest",
    "shard_path",
    # checking
    "verify_split",
    "verify_output",
    "check_shard",
    "shard_is_complete",
    "split_dirs",
    "SplitCheck",
    "ShardProblem",
    "INCOMPLETE_BUILD",
    # writing and resuming a build
    "ShardWriter",
    "PreparedFrame",
    "prepare_split_dir",
    "earlier_manifest",
    "kept_shards",
    "remove_leftovers",
    "build_lock",
    "ManifestKeeper",
]
