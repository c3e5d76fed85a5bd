"""hedprep.atomic: a file is either the old one or the complete new one, never half of one."""

from __future__ import annotations

import os
import threading

import pytest

from hedprep.atomic import (
    atomic_file,
    atomic_path,
    link_or_copy_atomic,
    write_bytes_atomic,
    write_text_atomic,
)
from hedprep.errors import HedsegError


def test_write_replaces_whole_file(tmp_path):
    target = tmp_path / "map.png"
    target.write_bytes(b"old")
    write_bytes_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_failure_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "map.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.npy"]


@pytest.mark.parametrize("interrupt", [OSError, KeyboardInterrupt])
def test_an_error_or_ctrl_c_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, interrupt):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(interrupt), atomic_file(target) as f:
        f.write(b"half of it")
        f.flush()
        assert len(list(tmp_path.glob(".last.pt.*.tmp"))) == 1
        raise interrupt()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_temporary_names_are_unique_hidden_siblings(tmp_path):
    with atomic_path(tmp_path / "a.h5") as first, atomic_path(tmp_path / "a.h5") as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".a.h5.") and first.suffix == ".tmp"
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert (tmp_path / "a.h5").read_bytes() == b"1"  # the outer context finished last


def test_writers_of_the_same_file_at_once_do_not_collide(tmp_path):
    """Two writers of one file (two processes drawing the same figure) each rename their own temporary."""
    target = tmp_path / "miou.png"
    errors: list[BaseException] = []

    def write(byte: bytes) -> None:
        try:
            for _ in range(100):
                write_bytes_atomic(target, byte * 1000)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(b,)) for b in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["miou.png"]


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    monkeypatch.delenv("HEDSEG_NO_FSYNC", raising=False)  # the suite's setting (conftest)
    target = tmp_path / "config.json"
    target.write_bytes(b"old")
    synced = []  # (inode synced, what the target held then)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_bytes_atomic(target, b"new")
    assert synced == [(target.stat().st_ino, b"old"), (tmp_path.stat().st_ino, b"new")]


def test_hedseg_no_fsync_skips_the_fsyncs_and_still_renames_a_whole_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HEDSEG_NO_FSYNC", "1")
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    write_bytes_atomic(tmp_path / "config.json", b"new")
    assert synced == [] and (tmp_path / "config.json").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_write_text_fails_in_one_line_naming_the_file(tmp_path):
    path = write_text_atomic(tmp_path / "scores.json", "{}\n")
    assert path.read_text(encoding="utf-8") == "{}\n"
    with pytest.raises(HedsegError, match=rf"^{tmp_path / 'gone'}: cannot write scores.json \(No such file"):
        write_text_atomic(tmp_path / "gone" / "scores.json", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_link_or_copy_shares_the_file_and_later_writes_leave_it(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    write_bytes_atomic(last, b"epoch 1")
    link_or_copy_atomic(last, best)
    assert best.stat().st_ino == last.stat().st_ino  # a hard link: no second copy
    write_bytes_atomic(last, b"epoch 2")
    assert best.read_bytes() == b"epoch 1"

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links: a copy
    link_or_copy_atomic(last, best)
    assert best.read_bytes() == b"epoch 2" and best.stat().st_ino != last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
