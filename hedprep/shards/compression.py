"""The HDF5 filters shards may use, and the fast deflate that writes gzip chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hedprep.errors import OptionError


@dataclass(frozen=True)
class Codec:
    """A compression choice of `--compression`: its default level and level range (None: no level)."""

    default_level: int | None = None
    levels: tuple[int, int] | None = None


# gzip level 1 (ISA-L) writes a 1024x2048 frame 4.5x faster than zlib's level 4, for 16% more bytes
# (docs/performance.md): on 2 cores that time is taken from HED.
CODECS: dict[str, Codec] = {
    "none": Codec(),
    "gzip": Codec(1, (0, 9)),
    "lzf": Codec(),
    "zstd": Codec(3, (1, 22)),
    "lz4": Codec(),
}


@dataclass(frozen=True)
class Compression:
    """An HDF5 compression filter: `none`, `gzip[:level]`, `lzf`, `zstd[:level]` or `lz4`."""

    codec: str = "gzip"
    level: int | None = 1

    def __str__(self) -> str:
        return self.codec if self.level is None else f"{self.codec}:{self.level}"

    def plugin_note(self) -> str:
        """What a reader needs for this filter: "" for those every HDF5 library has built in."""
        if self.codec in ("zstd", "lz4"):
            filter_id = 32015 if self.codec == "zstd" else 32004
            return (f"HDF5 filter {filter_id} ({self.codec}) from hdf5plugin: pip install hdf5plugin, then import "
                    "hdf5plugin (Python) or set HDF5_PLUGIN_PATH=$(python -c 'import hdf5plugin; "
                    "print(hdf5plugin.PLUGIN_PATH)') (HDF5 tools and viewers)")
        if self.codec == "lzf":
            return "HDF5 filter 32000 (lzf): built into h5py; other HDF5 tools need an LZF plugin"
        return ""

    def h5py_options(self) -> dict[str, Any]:
        """Keyword arguments for `h5py.Group.create_dataset`."""
        if self.codec == "none":
            return {}
        if self.codec == "gzip":
            return {"compression": "gzip", "compression_opts": self.level}
        if self.codec == "lzf":
            return {"compression": "lzf"}
        hdf5plugin = _import_hdf5plugin(self.codec)
        if self.codec == "zstd":
            return dict(hdf5plugin.Zstd(clevel=self.level))
        return dict(hdf5plugin.LZ4())


def _import_hdf5plugin(codec: str):
    try:
        import hdf5plugin
    except ImportError:
        raise OptionError(
            f"--compression {codec} needs the hdf5plugin package: pip install hdf5plugin "
            "(or the project's [fast] extra)"
        ) from None
    return hdf5plugin


_plugins_loaded = False


def load_filter_plugins() -> None:
    """Register hdf5plugin's filters (zstd, lz4), if it is installed, so such shards decode."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        try:
            import hdf5plugin  # noqa: F401 - importing registers the filters with HDF5
        except ImportError:
            pass


def fast_deflate(compression: Compression) -> Callable[[bytes], bytes] | None:
    """ISA-L's deflate for gzip levels 1-3, if the `isal` package is installed; else None.

    HDF5's gzip filter stores zlib streams, and any deflate encoder makes valid ones. On a 1024x2048
    RGB+edge frame ISA-L's level 1 took 23-38 ms where zlib's level 1 took 86-101 ms, and its output
    was about 9% larger (docs/performance.md); on 2 cores that CPU time is taken from HED.
    Readers need nothing new: the chunks decode with the standard gzip filter.
    """
    if compression.codec != "gzip" or compression.level not in (1, 2, 3):
        return None
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    level = compression.level

    def deflate(data: bytes) -> bytes:
        compressed = isal_zlib.compress(data, level)
        clean_vector_state()
        return compressed

    return deflate


def fast_inflate() -> Callable[[bytes], bytes] | None:
    """ISA-L's inflate, if the `isal` package is installed; else None (HDF5's zlib filter inflates)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None

    def inflate(data: bytes) -> bytes:
        raw = isal_zlib.decompress(data)
        clean_vector_state()
        return raw

    return inflate


_VECTOR_SCRATCH = np.zeros(256, np.float32)


def clean_vector_state() -> None:
    """Clear the upper halves of this thread's AVX registers after an ISA-L call.

    ISA-L returns with them dirty (no `vzeroupper`), and until AVX code clears them every SSE
    instruction of the thread pays for it: OpenCV's INTER_AREA resize of a 512x1024x4 frame to
    512x912 took 7.7 ms after an ISA-L call and 2.1 ms after this (benchmarks/segnet_loader.py,
    docs/performance.md). numpy's AVX loops end with `vzeroupper`; a small add runs one.
    """
    np.add(_VECTOR_SCRATCH, _VECTOR_SCRATCH)
