"""hedprep.process_tuning: the one opt-in switch for HED's process-wide settings."""

from __future__ import annotations

import torch

from hedprep import process_tuning
from hedprep.process_tuning import ProcessTuning, available_cpus, tune_process_for_hed


def test_tune_process_for_hed_sets_threads_and_keeps_freed_memory(monkeypatch):
    calls = []
    # The allocator itself is tested in test_allocator.py, in a subprocess; leave this one's alone.
    monkeypatch.setattr(process_tuning, "retain_freed_memory", lambda: calls.append("retain") or True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert tune_process_for_hed(3) == ProcessTuning(threads=3, retains_freed_memory=True)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        assert tune_process_for_hed().threads == torch.get_num_threads() == available_cpus()
        assert calls == ["retain", "retain"]
    finally:
        torch.set_num_threads(before)
