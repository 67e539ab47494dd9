import json
import os
import stat

import pytest

from exporter.archive import ArchiveError, ArchiveWriter
from exporter.chain import GENESIS, Chain
from exporter.compliance.verify import verify_archive
from exporter.record import new_record

KEY = b"test-key-0123456789"
DAY1 = 1795329600.0  # 2026-11-22T06:40:00Z


class Clock:
    def __init__(self, t=DAY1):
        self.t = t

    def __call__(self):
        return self.t


def rec(i):
    r = new_record()
    r.update(ts="2026-11-22T06:40:00.000Z", request_id=f"chatcmpl-{i}", prompt=f"p{i}", output=f"o{i}",
             status="completed")
    return r


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_append_flush_state_and_mode(tmp_path):
    old = os.umask(0)
    try:
        w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=Clock())
        a = w.append(rec(1))
        b = w.append(rec(2))
        assert w.state() == {"file": None, "size": 0, "seq": 0, "head_hash": GENESIS}  # nothing fsynced yet
        w.flush()
    finally:
        os.umask(old)
    path = tmp_path / "audit-2026-11-22.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (a["seq"], b["seq"], b["prev_hash"]) == (1, 2, a["hash"])
    assert lines(path) == [a, b]
    assert w.state() == {"file": path.name, "size": path.stat().st_size, "seq": 2, "head_hash": b["hash"]}
    json.dumps(w.state())


def test_fsync_every_flushes_by_itself(tmp_path):
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=Clock(), fsync_every=2)
    w.append(rec(1))
    assert w.pending == 1
    w.append(rec(2))
    assert w.pending == 0 and w.state()["seq"] == 2


def test_day_boundary_switches_file_and_writes_manifest(tmp_path):
    clock = Clock(DAY1 + 17 * 3600 + 19 * 60 + 59)  # 2026-11-22T23:59:59Z
    w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=clock)
    w.append(rec(1))
    w.flush()
    w.append(rec(2))
    clock.t += 2  # next UTC day
    w.flush()
    day1, day2 = tmp_path / "audit-2026-11-22.jsonl", tmp_path / "audit-2026-11-23.jsonl"
    assert [r["seq"] for r in lines(day1)] == [1] and [r["seq"] for r in lines(day2)] == [2]
    m = json.loads((tmp_path / "audit-2026-11-22.manifest.json").read_text())
    assert (m["count"], m["first_seq"], m["last_seq"], m["first_prev_hash"]) == (1, 1, 1, GENESIS)
    assert m["hmac"].startswith("hmac-sha256:")
    assert stat.S_IMODE((tmp_path / "audit-2026-11-22.manifest.json").stat().st_mode) == 0o640
    assert not (tmp_path / "audit-2026-11-23.manifest.json").exists()  # still open
    assert verify_archive(tmp_path, KEY).ok


def test_clock_stepping_back_keeps_current_file(tmp_path):
    clock = Clock(DAY1 + 86400)
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=clock)
    w.append(rec(1))
    w.flush()
    clock.t = DAY1
    w.append(rec(2))
    w.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["audit-2026-11-23.jsonl"]


def test_restart_with_state_cuts_uncommitted_tail_and_newer_files(tmp_path):
    clock = Clock()
    w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=clock)
    for i in range(3):
        w.append(rec(i))
    w.flush()
    state = w.state()
    w.append(rec(3))
    w.flush()  # flushed but the checkpoint never saw it
    clock.t += 86400
    w.append(rec(4))
    w.flush()  # closes day 1 (manifest) and creates day 2: all uncommitted
    w.close()
    assert (tmp_path / "audit-2026-11-23.jsonl").exists()

    w2 = ArchiveWriter.open(tmp_path, Chain(KEY), state, clock=clock)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit-2026-11-22.jsonl"]
    assert (tmp_path / "audit-2026-11-22.jsonl").stat().st_size == state["size"]
    assert w2.state() == state
    again = w2.append(rec(3))
    assert again["seq"] == 4 and again["prev_hash"] == state["head_hash"]
    w2.flush()
    assert verify_archive(tmp_path, KEY).ok


def test_restart_re_derives_byte_identical_records(tmp_path):
    w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=Clock())
    w.append(rec(1))
    w.flush()
    state = w.state()
    w.append(rec(2))
    w.flush()
    before = (tmp_path / "audit-2026-11-22.jsonl").read_bytes()
    w.close()
    w2 = ArchiveWriter.open(tmp_path, Chain(KEY), state, clock=Clock())
    w2.append(rec(2))
    w2.flush()
    assert (tmp_path / "audit-2026-11-22.jsonl").read_bytes() == before


def test_open_without_state_drops_torn_line_and_continues(tmp_path):
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=Clock())
    w.append(rec(1))
    last = w.append(rec(2))
    w.close()
    path = tmp_path / "audit-2026-11-22.jsonl"
    good = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b'{"ts":"2026-11-22T')  # crash mid-write
    w2 = ArchiveWriter.open(tmp_path, Chain(None), None, clock=Clock())
    assert path.stat().st_size == good
    assert w2.state() == {"file": path.name, "size": good, "seq": 2, "head_hash": last["hash"]}
    assert w2.append(rec(3))["prev_hash"] == last["hash"]


def test_open_without_state_empty_dir_starts_at_genesis(tmp_path):
    w = ArchiveWriter.open(tmp_path / "new", Chain(None), None, clock=Clock())
    assert w.append(rec(1))["prev_hash"] == GENESIS


def test_open_without_state_after_retention_deleted_files_uses_manifest(tmp_path):
    clock = Clock()
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=clock)
    last = w.append(rec(1))
    w.flush()
    clock.t += 86400
    w.append(rec(2))
    w.flush()  # seals day 1
    w.close()
    os.truncate(tmp_path / "audit-2026-11-23.jsonl", 0)  # newest file empty
    w2 = ArchiveWriter.open(tmp_path, Chain(None), None, clock=clock)
    assert w2.append(rec(2))["prev_hash"] == last["hash"]


def test_open_refuses_when_committed_bytes_are_missing(tmp_path):
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=Clock())
    w.append(rec(1))
    w.flush()
    state = w.state()
    w.close()
    os.truncate(tmp_path / state["file"], state["size"] - 5)
    with pytest.raises(ArchiveError, match="committed"):
        ArchiveWriter.open(tmp_path, Chain(None), state, clock=Clock())
    with pytest.raises(ArchiveError, match="checkpointed record"):
        ArchiveWriter.open(tmp_path, Chain(None), {**state, "size": state["size"] - 5, "seq": 5}, clock=Clock())


def test_open_with_state_reopens_sealed_day(tmp_path):
    clock = Clock()
    w = ArchiveWriter(tmp_path, chain=Chain(None), clock=clock)
    w.append(rec(1))
    w.flush()
    state = w.state()
    clock.t += 86400
    w.append(rec(2))
    w.flush()
    w.close()
    w2 = ArchiveWriter.open(tmp_path, Chain(None), state, clock=Clock())
    assert not (tmp_path / "audit-2026-11-22.manifest.json").exists()
    w2.append(rec(2))
    w2.flush()
    assert verify_archive(tmp_path, None).ok


def test_full_disk_keeps_sealed_records_buffered_and_recovers(tmp_path, monkeypatch):
    """ENOSPC on the implicit flush (the buffer's bound) used to raise out of
    append() and so out of the pipeline; now the record stays buffered, the
    writer says it is full, and the next flush that succeeds writes all."""
    import errno

    from exporter.archive import writer as archive_mod
    w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=Clock(), fsync_every=2)
    w.append(rec(0))
    w.flush()
    committed = w.state()
    real_write, full = os.write, [True]

    def write(fd, data):
        if full[0]:
            real_write(fd, bytes(data[:10]))  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(archive_mod.os, "write", write)
    sealed = [w.append(rec(i)) for i in (1, 2, 3)]  # the 2nd reaches the bound: no raise
    assert w.full and w.pending == 3 and w.write_failures == 1
    assert w.write_error == "ENOSPC: No space left on device" and w.failing_since == DAY1
    assert w.state() == committed  # nothing committed, nothing half-written on disk
    assert (tmp_path / committed["file"]).stat().st_size == committed["size"]
    with pytest.raises(OSError):
        w.flush()  # an explicit flush (the pipeline's commit) does raise
    assert w.write_failures == 2
    full[0] = False
    w.flush()
    assert not w.full and w.write_error is None and w.failing_since is None
    assert [r["seq"] for r in lines(tmp_path / committed["file"])] == [1, 2, 3, 4]
    assert lines(tmp_path / committed["file"])[1:] == sealed


def test_failed_day_switch_is_retried_on_the_next_flush(tmp_path, monkeypatch):
    clock = Clock()
    w = ArchiveWriter(tmp_path, chain=Chain(KEY), clock=clock)
    w.append(rec(1))
    w.flush()
    clock.t += 86400
    w.append(rec(2))
    real_open_fd, fail = w._open_fd, [True]

    def open_fd():
        if fail[0]:
            raise OSError(28, "No space left on device")
        real_open_fd()
    monkeypatch.setattr(w, "_open_fd", open_fd)
    with pytest.raises(OSError):
        w.flush()  # the old day is sealed, the new file could not be created
    fail[0] = False
    w.flush()
    assert [r["seq"] for r in lines(tmp_path / "audit-2026-11-23.jsonl")] == [2]
    assert verify_archive(tmp_path, key=KEY).ok
