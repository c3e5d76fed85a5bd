"""hedprep.allocator: glibc serves large buffers from its heap and keeps them when freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_large_buffers_come_from_the_heap_and_stay():
    code = """
import ctypes, numpy as np
from hedprep.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_and_heap_while_alive():
    a = np.ones(64 << 20, np.uint8)  # 64 MiB: above glibc's largest mmap threshold
    info = libc.mallinfo2()
    del a
    return info.hblkhd, libc.mallinfo2().arena

default_mmapped, _ = mmapped_and_heap_while_alive()
assert retain_freed_memory() and retain_freed_memory()  # applies, and is idempotent
retained_mmapped, heap_after_free = mmapped_and_heap_while_alive()
print(default_mmapped, retained_mmapped, heap_after_free)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    default_mmapped, retained_mmapped, heap_after_free = map(int, result.stdout.split())
    assert default_mmapped >= 64 << 20  # by default: its own mmap, unmapped when freed
    assert retained_mmapped < 64 << 20  # retained: from the heap ...
    assert heap_after_free >= 64 << 20  # ... which keeps it after the free
