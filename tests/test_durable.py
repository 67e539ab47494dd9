"""exporter.durable.atomic_file: the one atomic writer (write_atomic, exports,
retention's gzip all go through it)."""

from __future__ import annotations

import os

import pytest

from exporter.durable import atomic_file, write_atomic


def test_the_file_appears_whole_with_its_mode_whatever_the_umask(tmp_path):
    target = tmp_path / "out.csv"
    old = os.umask(0)
    try:
        with atomic_file(target, 0o640) as fh:
            fh.write(b"a,b\n")
            assert not target.exists()  # nothing under the name before the end
        assert target.read_bytes() == b"a,b\n"
        assert target.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_an_error_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.csv"
    write_atomic(target, b"old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("disk said no")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
