"""Keep freed heap memory in the process, so that HED's large activations do not page-fault.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and returns
it with `munmap` when freed. A 512x1024 HED pass allocates and frees dozens of such tensors (64 channels
at full resolution are 128 MiB), and the kernel zero-fills the pages of each on first touch:
that costs about a quarter of the pass on a 2-core machine (docs/performance.md). Serving them from
the heap instead, and not trimming it, lets the second and later frames reuse warm pages. The process
then keeps its peak heap until it exits, which is what a long-running edge or build job wants.

Only the main arena behaves so: threads other than the main one get arenas of their own, made of
64 MiB heaps, which cannot hold such blocks and hand them to fresh mmaps again (HED run from a Dask
task thread was 20-40% slower). One arena for the whole process keeps every thread on the main heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_retained = False


def retain_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed memory; True if it applied.

    A no-op (False) on other C libraries and platforms. Idempotent.
    """
    global _retained
    if _retained:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
            and libc.mallopt(_M_ARENA_MAX, 1) == 1
        )
    except (OSError, AttributeError):
        return False
    _retained = ok
    return ok
