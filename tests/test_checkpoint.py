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


def test_state_comes_back_in_its_own_key_order(path):
    """Restored dicts keep the order they were built in (a middleware line's
    identity, prompt messages): the records built from them stay the same."""
    state = {"z": 1, "inflight": {"b": {"mw": {"prompt": [{"role": "user", "content": "hi"}],
                                               "identity": {"headers": {}, "user_field": "u",
                                                            "api_key_hash": None}}}, "a": {}}}
    write_atomic(path, state)
    loaded = read_checkpoint(path).state
    assert json.dumps(loaded) == json.dumps(state)  # order included, at every depth


def test_format_1_files_are_still_read_and_replaced_by_format_2(path):
    import hashlib
    body = json.dumps(STATE, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(body.encode()).hexdigest()
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"checkpoint":1,"sha256":"%s","state":%s}\n' % (digest, body))
    assert read_checkpoint(path) == (STATE, "current", None)
    write_atomic(path, {"n": 2})
    with open(path, "rb") as f:
        assert json.loads(f.read())["checkpoint"] == 2
    os.unlink(path)
    assert read_checkpoint(path) == (STATE, "prev", "current: missing")  # the old one, as .prev


def test_digest_covers_the_exact_bytes(path):
    write_atomic(path, {"a": 1, "b": 2})
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b'{"checkpoint":2,"digest":"sha256:')
    with open(path, "wb") as f:  # same JSON value, other bytes: not what was sealed
        f.write(data.replace(b'"a":1,"b":2', b'"b":2,"a":1'))
    assert read_checkpoint(path).reason == "current: bad_digest; prev: missing"


KEY = b"archive-hmac-key"


def test_keyed_envelope_needs_the_key_and_refuses_unkeyed_files(path):
    write_atomic(path, {"n": 1}, key=KEY)
    with open(path, "rb") as f:
        assert f.read().startswith(b'{"checkpoint":2,"digest":"hmac-sha256:')
    assert read_checkpoint(path, key=KEY) == ({"n": 1}, "current", None)
    assert read_checkpoint(path, key=None).reason == "current: needs_key; prev: missing"
    assert read_checkpoint(path, key=b"other").reason == "current: bad_digest; prev: missing"
    # Someone without the key rewrites the file with a plain SHA-256 envelope
    # (format 2 or the old format 1): a keyed exporter does not take it.
    for forged in (encode({"n": 99}), b'{"checkpoint":1,"sha256":"%s","state":{"n":99}}' % (
            __import__("hashlib").sha256(b'{"n":99}').hexdigest().encode())):
        with open(path, "wb") as f:
            f.write(forged)
        assert read_checkpoint(path, key=KEY).reason == "current: not_keyed; prev: missing"
        assert read_checkpoint(path, key=None).state == {"n": 99}


def test_registered_key_applies_to_writes_and_reads_of_that_path(path, tmp_path):
    from exporter.checkpoint import use_key
    use_key(path, KEY)
    try:
        write_atomic(path, {"n": 1})  # as the pipeline calls it: no key argument
        other = str(tmp_path / "other.json")
        write_atomic(other, {"n": 2})
        assert read_checkpoint(path) == ({"n": 1}, "current", None)
        assert read_checkpoint(path, key=None).reason.startswith("current: needs_key")
        assert read_checkpoint(other) == ({"n": 2}, "current", None)  # unkeyed path
    finally:
        use_key(path, None)
    assert read_checkpoint(path).reason.startswith("current: needs_key")
