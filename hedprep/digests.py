"""Content digests of files: what the weights records and the shard manifest identify files by."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
