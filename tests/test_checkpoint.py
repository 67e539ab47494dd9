"""Atomic checkpoint file: round trip, torn and corrupt files, write failures."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from exporter.checkpoint import CheckpointError, OsOps, encode, read_checkpoint, write_atomic

STATE = {"tail": {"offset": 12, "ino": 3}, "inflight": ["é"], "n": 1}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "checkpoint.json")


def test_round_trip_and_mode(path):
    write_atomic(path, STATE)
    assert read_checkpoint(path) == (STATE, "current", None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert not os.path.exists(path + ".tmp")


def test_previous_checkpoint_is_kept(path):
    write_atomic(path, {"n": 1})
    write_atomic(path, {"n": 2})
    write_atomic(path, {"n": 3})
    assert read_checkpoint(path).state == {"n": 3}
    with open(path + ".prev", "rb") as f:
        assert json.loads(f.read())["state"] == {"n": 2}


def test_missing_returns_none_with_reason(path):
    loaded = read_checkpoint(path)
    assert loaded.state is None and loaded.source == "none"
    assert loaded.reason == "current: missing; prev: missing"


@pytest.mark.parametrize("content, why", [
    (b"", "empty"),
    (b"\n", "empty"),
    (None, "not_json"),  # torn: the first half of a real checkpoint
    (b"\x00\x00\x00\x00", "not_json"),
    (b"[1, 2]", "bad_format"),
    (b'{"checkpoint": 1, "sha256": "00", "state": {"n": 1}}', "bad_digest"),
    (b'{"checkpoint": 9, "state": {}}', "bad_format"),
])
def test_corrupt_current_falls_back_to_prev(path, content, why):
    write_atomic(path, {"n": 1})
    write_atomic(path, {"n": 2})
    if content is None:
        content = encode({"n": 2})[:15]
    with open(path, "wb") as f:
        f.write(content)
    loaded = read_checkpoint(path)
    assert loaded == ({"n": 1}, "prev", f"current: {why}")


def test_corrupt_current_and_no_prev(path):
    with open(path, "wb") as f:
        f.write(b'{"checkpoint": 1, "sha')
    assert read_checkpoint(path) == (None, "none", "current: not_json; prev: missing")


def test_edited_state_is_detected(path):
    write_atomic(path, {"offset": 100})
    with open(path, "rb") as f:
        data = f.read().replace(b"100", b"999")
    with open(path, "wb") as f:
        f.write(data)
    assert read_checkpoint(path).reason == "current: bad_digest; prev: missing"


def test_kill_mid_write_leaves_torn_temp_file_that_is_ignored(path):
    write_atomic(path, {"n": 1})
    with open(path + ".tmp", "wb") as f:  # killed before the rename
        f.write(encode({"n": 2})[:10])
    assert read_checkpoint(path).state == {"n": 1}
    write_atomic(path, {"n": 3})  # the stray temp file is simply overwritten
    assert read_checkpoint(path).state == {"n": 3}
    assert not os.path.exists(path + ".tmp")


class FailAt(OsOps):
    """Fail one step of the write with an errno, like a full or read-only disk."""

    def __init__(self, step: str, err: int):
        self.step, self.err = step, err

    def _maybe(self, step):
        if step == self.step:
            raise OSError(self.err, os.strerror(self.err))

    def open(self, path):
        self._maybe("open")
        return super().open(path)

    def write(self, fd, data):
        self._maybe("write")
        return super().write(fd, data)

    def fsync(self, fd):
        self._maybe("fsync")
        super().fsync(fd)

    def replace(self, src, dst):
        if not src.endswith(".prev.tmp"):
            self._maybe("replace")
        super().replace(src, dst)


@pytest.mark.parametrize("step, err, reason", [
    ("write", errno.ENOSPC, "ENOSPC"),
    ("fsync", errno.EIO, "EIO"),
    ("open", errno.EROFS, "EROFS"),
    ("replace", errno.EROFS, "EROFS"),
])
def test_write_failure_raises_checkpoint_error_and_keeps_old(path, step, err, reason):
    write_atomic(path, {"n": 1})
    with pytest.raises(CheckpointError) as exc:
        write_atomic(path, {"n": 2}, ops=FailAt(step, err))
    assert exc.value.reason == reason
    assert read_checkpoint(path) == ({"n": 1}, "current", None)
    assert not os.path.exists(path + ".tmp")


def test_short_writes_are_completed(path):
    class Dribble(OsOps):
        def write(self, fd, data):
            return super().write(fd, bytes(data[:3]))

    write_atomic(path, STATE, ops=Dribble())
    assert read_checkpoint(path).state == STATE


def test_without_hard_links_prev_is_made_by_rename(path):
    class NoLinks(OsOps):
        def link(self, src, dst):
            raise OSError(errno.EPERM, "links not supported")

    write_atomic(path, {"n": 1}, ops=NoLinks())
    write_atomic(path, {"n": 2}, ops=NoLinks())
    assert read_checkpoint(path).state == {"n": 2}
    with open(path + ".prev", "rb") as f:
        assert json.loads(f.read())["state"] == {"n": 1}


def test_unserialisable_state_is_a_checkpoint_error(path):
    with pytest.raises(CheckpointError) as exc:
        write_atomic(path, {"x": float("nan")})
    assert exc.value.reason == "not_serialisable" and not os.path.exists(path)


def test_unreadable_checkpoint_reports_errno(path, tmp_path):
    os.mkdir(path)  # reading a directory fails with EISDIR
    loaded = read_checkpoint(path)
    assert loaded.state is None and loaded.reason == "current: EISDIR; prev: missing"
