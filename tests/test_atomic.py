"""hedprep.atomic: a file is either the old one or the complete new one, never half of one."""

from __future__ import annotations

import pytest

from hedprep.atomic import atomic_path, write_bytes_atomic


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


def test_temporary_names_are_unique_hidden_siblings(tmp_path):
    with atomic_path(tmp_path / "a.h5") as first, atomic_path(tmp_path / "a.h5") as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".a.h5.") and first.suffix == ".tmp"
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert (tmp_path / "a.h5").read_bytes() == b"1"  # the outer context finished last
