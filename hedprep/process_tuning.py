"""Process-wide settings for running HED fast, made once by an entry point (a command, a build worker, a
benchmark), never by the library on its own.

HED keeps every core busy and allocates activations of hundreds of MiB per pass. Two settings of the
whole process make it run at full speed (docs/performance.md):

- torch's CPU threads: one per CPU this process may use (cgroup/affinity aware), or a worker's share of
  them when several workers share a machine.
- glibc keeps freed memory (`hedprep.allocator.retain_freed_memory`): large blocks come from the heap,
  which is never trimmed, and the process has one malloc arena. Otherwise each large activation is
  a fresh `mmap` whose pages are zero-filled on first touch: about a quarter of a 512x1024 pass. The
  process then keeps its peak heap until it exits.

Both would surprise someone who imports `hedprep.hed` into a notebook or another program, so
`load_hed`, `detect_edges` and `EdgeDetector` leave them alone; `tune_process_for_hed` makes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from hedprep.allocator import retain_freed_memory


@dataclass(frozen=True)
class ProcessTuning:
    """What `tune_process_for_hed` set: torch's CPU threads, and whether glibc now keeps freed memory."""

    threads: int
    retains_freed_memory: bool


def available_cpus() -> int:
    """The CPUs this process may run on (cgroup/affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def tune_process_for_hed(threads: int | None = None) -> ProcessTuning:
    """Set this whole process up to run HED fast: torch threads, and glibc keeping freed memory.

    Called by entry points only: `hedprep edges`, each shard task of `hedprep build` (with its
    worker's share of the cores), the benchmarks. Call it early, before other threads start: the
    allocator's one-arena setting only holds for threads created after it. Idempotent.

    Args:
        threads: torch CPU threads; default: every CPU this process may use (`available_cpus`).

    Returns:
        What was set; `retains_freed_memory` is False where the C library is not glibc.
    """
    count = threads or available_cpus()
    torch.set_num_threads(count)
    return ProcessTuning(count, retain_freed_memory())
