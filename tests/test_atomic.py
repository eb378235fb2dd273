"""Files replaced whole (parrot_cvmfs/atomic.py): never through a link, nothing left
behind on failure, and a bounded search for a free temporary name."""

from __future__ import annotations

import itertools
import os

import pytest

from parrot_cvmfs import atomic


def test_replaces_a_link_without_writing_through_it(tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"mine")
    (tmp_path / "f").symlink_to(victim)
    atomic.write_atomic(str(tmp_path / "f"), b"new", 0o644)
    assert victim.read_bytes() == b"mine"
    assert not (tmp_path / "f").is_symlink()
    assert (tmp_path / "f").read_bytes() == b"new"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == ["f", "victim"]


def test_taken_temporary_names_are_given_up_after_a_bound(tmp_path, monkeypatch) -> None:
    """Someone who may write the directory plants the next temporary name: the writer
    does not spin for ever, and the file keeps its old contents."""
    monkeypatch.setattr(atomic, "_temp_counter", itertools.repeat(7))
    (tmp_path / f".tmp.{os.getpid()}.7.f").write_bytes(b"planted")
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        atomic.write_atomic(str(tmp_path / "f"), b"new")
    assert (tmp_path / "f").read_bytes() == b"old"


def test_a_failed_write_leaves_no_temporary(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):  # the rename cannot replace a directory by a file
        atomic.write_atomic(str(tmp_path / "d"), b"x")
    assert os.listdir(tmp_path) == ["d"]
