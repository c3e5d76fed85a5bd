"""Write files so that a reader never sees half of one: a temporary name, then a rename.

The one writer of both packages (shards, manifests, PNGs, checkpoints, run files, the study's
tables and figures). Every write goes to a unique hidden sibling (`temporary_name`: two processes
writing the same file never share one), which is fsync'd, renamed over the target, and the folder
fsync'd; on any error, a KeyboardInterrupt too, the temporary file is removed and the target is
left as it was.

`atomic_path`, `atomic_file`, `write_bytes_atomic` and `link_or_copy_atomic` raise the `OSError`
for the caller to word its one-line error; `write_text_atomic` words its own.

`HEDSEG_NO_FSYNC=1` in the environment skips the fsyncs, for throwaway runs (the test suite sets it:
half the time of a tiny training run went to fsyncing its checkpoints). Writes stay whole and
atomic, so a killed process still never leaves half a file; only a power loss or a kernel crash may
lose the last ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hedprep.errors import HedsegError


def temporary_name(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of `path` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write and close; on success it is fsync'd and replaces `path`, on any
    error it is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file open for writing under a temporary name; on success it is closed, fsync'd
    and replaces `path`, on any error it is removed."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (UTF-8) atomically, e.g. a run's config.json or `segnet evaluate --json`.

    Raises:
        HedsegError: the file cannot be written (`cannot_write`'s line).
    """
    path = Path(path)
    try:
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as error:
        raise HedsegError(cannot_write(path, error), path.parent) from None
    return path


def cannot_write(path: str | os.PathLike, error: OSError) -> str:
    """The one line of a failed write: `{folder}: cannot write {name} ({reason})`."""
    path = Path(path)
    return f"{path.parent}: cannot write {path.name} ({error.strerror or error})"


def link_or_copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make `path` hold what `source` holds now, atomically: a hard link under a temporary name, renamed
    (no second copy of a large file), or a copy where the file system has no hard links. Writes of
    `source` through this module replace it by a rename, so they never change `path`."""
    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


NO_FSYNC_VARIABLE = "HEDSEG_NO_FSYNC"


def fsync_wanted() -> bool:
    """False where `HEDSEG_NO_FSYNC` is set to 1 (see the module docstring)."""
    return os.environ.get(NO_FSYNC_VARIABLE, "") != "1"


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to the disk."""
    if not fsync_wanted():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in folder `path` durable (POSIX); a no-op where folders cannot be opened."""
    if not fsync_wanted():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
