"""Give a finished shard other resolution levels without running HED: rewrite it from its stored frames.

This is the work of a build task when `hedprep build --levels L` meets a shard of the same parameters
holding other levels (a v1 shard holds none): the shard's level-0 frames, labels and ids are read back
and written again, with levels 1..L computed from them, to a temporary file renamed over the old one
(`hedprep.shards.ShardWriter`). A kill at any point leaves either the old shard or the new one under
the shard's name, both whole; the build's resume rules adopt whichever it finds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from hedprep.shards import (
    IGNORE_INDEX,
    Compression,
    ShardInfo,
    ShardRecord,
    ShardWriter,
    open_shard,
    read_attrs,
)


@dataclass(frozen=True)
class RelevelSpec:
    """One shard to rewrite with `info.levels` levels: small and picklable, like a build's ShardSpec."""

    index: int
    path: str
    record: ShardRecord  # the shard as it is now
    info: ShardInfo  # the build's parameters, with the wanted levels
    compression: Compression

    @property
    def frame_ids(self) -> list[str]:
        return list(self.record.frame_ids)


def relevel_shard(spec: RelevelSpec, on_frames: Callable[[int], None] | None = None) -> ShardRecord:
    """Rewrite one shard with `spec.info.levels` levels computed from its level-0 frames. Returns its record.

    Frames whose labels are all ignore (the test split's) keep no label chunks, as the build writes them.
    The shard keeps the HED device and precision it records (none, for v1 and v2 shards): its edges
    are the ones that HED run made.
    """
    report = on_frames or (lambda n: None)
    with open_shard(spec.path) as source:
        attrs = read_attrs(source)
        info = replace(spec.info, device=attrs.get("device", ""), precision=attrs.get("precision", spec.info.precision))
        frames, labels = source["frames"], source["labels"]
        ids = [i.decode("ascii") for i in source["frame_ids"][()]]
        # The planned frames, skipped ones included, as the build sizes a shard (and never 0: chunks of
        # one frame need room for one).
        planned = len(ids) + len(spec.record.skipped)
        with ShardWriter(spec.path, planned, info, spec.compression) as shard:
            for i, frame_id in enumerate(ids):
                label = labels[i]
                shard.append(frame_id, frames[i], None if np.all(label == IGNORE_INDEX) else label)
                report(1)
            for skipped in spec.record.skipped:
                shard.skip(skipped)
            return shard.close()
