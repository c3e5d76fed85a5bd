"""Checkpoint files: written whole even when Ctrl-C comes in the middle, best.pt as a link that later
writes of last.pt leave alone."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest
import torch

from segnet.checkpoint import interrupts_deferred, link_checkpoint, load_checkpoint, save_checkpoint
from segnet.errors import SegnetError


@contextlib.contextmanager
def sigint_handler(handler):
    """SIGINT handled by `handler` inside, whatever earlier tests or libraries left set."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler of C code, which Python cannot put back
            signal.signal(signal.SIGINT, previous)


def state(value: float) -> dict:
    return {"variant": "vanilla", "model_args": {"num_classes": 19}, "model": {"w": torch.full((256, 256), value)}}


def test_ctrl_c_during_a_write_takes_effect_once_the_file_is_whole(tmp_path):
    """SIGINT every millisecond while a 64 MB checkpoint is written: the file is whole, then one
    KeyboardInterrupt (without the deferral, the first one cuts torch.save short)."""
    path = tmp_path / "last.pt"
    big = {**state(1.0), "model": {"w": torch.full((4096, 4096), 1.0)}}
    stop = threading.Event()

    def interrupt() -> None:
        while not stop.wait(0.001):
            os.kill(os.getpid(), signal.SIGINT)

    written = False
    with sigint_handler(signal.default_int_handler):
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                sender = threading.Thread(target=interrupt)
                sender.start()
                try:
                    save_checkpoint(path, big)
                    written = True
                finally:
                    stop.set()
                    sender.join()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    assert written and torch.equal(load_checkpoint(path)["model"]["w"], big["model"]["w"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_where_ctrl_c_is_ignored_it_stays_ignored(tmp_path):
    with sigint_handler(signal.SIG_IGN):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            save_checkpoint(tmp_path / "last.pt", state(3.0))
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"][0, 0] == 3.0


def test_without_ctrl_c_the_block_runs_as_it_is(tmp_path):
    with interrupts_deferred():
        save_checkpoint(tmp_path / "last.pt", state(2.0))
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"][0, 0] == 2.0


def test_best_is_a_link_that_later_writes_of_last_leave_alone(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, state(1.0))
    link_checkpoint(last, best)
    assert best.read_bytes() == last.read_bytes() and best.stat().st_ino == last.stat().st_ino
    save_checkpoint(last, state(2.0))  # a later epoch: last.pt replaced by a rename
    assert load_checkpoint(best)["model"]["w"][0, 0] == 1.0 and load_checkpoint(last)["model"]["w"][0, 0] == 2.0
    save_checkpoint(last, state(3.0))
    link_checkpoint(last, best)  # an improvement replaces best.pt
    assert load_checkpoint(best)["model"]["w"][0, 0] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_damaged_file_named_safetensors_is_one_line(tmp_path):
    """torch.load reads a path ending in .safetensors as safetensors, whose own error type it raises."""
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(SegnetError, match="not a readable checkpoint"):
        load_checkpoint(path)
