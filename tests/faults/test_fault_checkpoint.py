"""Cases 17-19: crash between Loki push and checkpoint, torn/corrupt
checkpoint, checkpoint directory full or read-only. Same invariant
(harness.py); counters across restarts come from the checkpoint."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter import checkpoint as ckpt_mod
from exporter import pipeline as pipeline_mod

from .harness import (
    LokiServer, Writer, archive_ids, assert_exactly_once, capture_lines, chunks, loki_ids,
    reference_ids, sample, wait_exit, written_now,
)

LINES = capture_lines()
REPO = Path(__file__).resolve().parents[2]


def feed(exp, w, lines) -> bytes:
    data = w.write(lines)
    exp.follow(data)
    exp.pump()
    return data


def clean_ids(ref_dir):
    return reference_ids(b"".join(LINES), ref_dir)


# 17 -------------------------------------------------------------------------
def test_17_crash_between_push_and_checkpoint_in_process(make_exporter, loki, ref_dir):
    """Archive flushed, a push attempted, checkpoint never written, kill.
    The pusher reads only checkpointed archive bytes, so the flushed tail was
    never sent; on restart the archive is cut back, the records re-derived
    byte for byte and pushed once — Loki receives nothing twice, even
    without its dedup. Counters come back from the older checkpoint and
    count the re-derived records once."""
    exp = make_exporter(extra=["--checkpoint-interval", "3600"])  # commits only when the test says
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    feed(exp, w, parts[0])
    exp.commit()
    for p in parts[1:3]:
        feed(exp, w, p)
    exp.rt.archive.flush()  # on disk, not checkpointed
    exp.push()              # ... so not for Loki yet
    pushed = len(loki.lines())
    assert pushed < len(clean_ids(ref_dir))  # at most the first, committed part
    exp.crash()
    exp.start()
    feed(exp, w, parts[3])
    exp.settle()
    assert loki.received == len(set(loki.lines()))  # nothing was ever sent twice
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def _cmd(log, archive, loki_url):
    return [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start",
            "--archive-dir", str(archive), "--model", "tiny", "--web.listen-address", "127.0.0.1:0",
            "--checkpoint-interval", "5", "--merge-grace", "0", "--request-timeout", "0.5",
            "--loki-url", loki_url, "--loki-batch-wait", "0.05", "--loki-batch-bytes", "2048"]


def _wait(cond, what, timeout=120.0):
    """Poll ``cond`` until true; fail naming ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def test_17_sigkill_real_process_after_loki_stored_before_checkpoint(tmp_path, ref_dir):
    """The real ``exporter run`` process is SIGKILLed by the Loki server the
    moment a push has been stored (before the 204 is read, and before the
    5 s checkpoint interval). Restart; everything exactly once."""
    log, archive = tmp_path / "vllm.log", tmp_path / "archive"
    log.write_bytes(b"".join(written_now(LINES)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = []
    with LokiServer() as srv:
        killed = threading.Event()

        def kill_on_first_stored(n):
            # The first push that stored entries, however this machine
            # batches the records: the event the test is about.
            if child and not killed.is_set():
                killed.set()
                os.kill(child[0].pid, signal.SIGKILL)
        srv.on_stored = kill_on_first_stored
        proc = subprocess.Popen(_cmd(log, archive, srv.url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.append(proc)
        rc = wait_exit(proc, 120, "no push reached the Loki server, so nothing triggered the SIGKILL")
        assert killed.is_set() and rc == -signal.SIGKILL, rc
        stored_before = len(srv.lines())
        assert stored_before > 0
        srv.on_stored = None
        proc = subprocess.Popen(_cmd(log, archive, srv.url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(lambda: len(set(srv.lines())) >= 22 and len(archive_ids(archive)) >= 22,
                  "after the restart, all 22 records in the archive and in Loki")
            time.sleep(0.5)  # anything extra would show now
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        assert rc == 0, proc.stderr.read().decode()[-2000:]
        got = archive_ids(archive)
        assert sorted(got) == sorted(clean_ids(ref_dir)) and len(set(got)) == len(got)
        ids = loki_ids(srv)
        assert sorted(ids) == sorted(got)
        # counters: the restored store counted each archive record once
        state = json.loads((archive / ".state" / "checkpoint.json").read_text())["state"]
        text = json.dumps(state["metrics"])
        assert text  # snapshot present; the sum is checked in-process in the other cases


# 18 -------------------------------------------------------------------------
def _run_with_checkpoints(exp, w, parts):
    for p in parts:
        feed(exp, w, p)
        exp.commit()
        exp.push()


@pytest.mark.parametrize("damage", ["torn", "empty", "bad_digest", "garbage"])
def test_18_corrupt_current_checkpoint_falls_back_to_prev(make_exporter, loki, ref_dir, damage):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 5)
    _run_with_checkpoints(exp, w, parts[:3])
    exp.crash()
    path = exp.archive / ".state" / "checkpoint.json"
    data = path.read_bytes()
    if damage == "torn":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bad_digest":
        obj = json.loads(data)
        obj["state"]["written_at"] = 0
        path.write_text(json.dumps(obj))
    else:
        path.write_bytes(b"\x00\xff not json at all")
    assert ckpt_mod.read_checkpoint(str(path)).source == "prev"
    exp.start()
    for p in parts[3:]:
        feed(exp, w, p)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_18_crash_during_the_checkpoint_write_leaves_a_torn_temp(make_exporter, loki, ref_dir):
    """Killed after writing half the temp file: <path> is still the old
    complete checkpoint; the stray temp file is never read."""
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    _run_with_checkpoints(exp, w, parts[:2])
    feed(exp, w, parts[2])

    class Die(BaseException):
        pass

    class TornOps(ckpt_mod.OsOps):
        def write(self, fd, data):
            os.write(fd, bytes(data[: len(data) // 2]))
            raise Die()  # the process dies here

    with pytest.raises(Die):
        ckpt_mod.write_atomic(str(exp.archive / ".state" / "checkpoint.json"), exp.pipeline.state(),
                              ops=TornOps())
    exp.crash()
    assert (exp.archive / ".state" / "checkpoint.json.tmp").exists()
    exp.start()
    feed(exp, w, parts[3])
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_18_both_checkpoint_copies_corrupt(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    _run_with_checkpoints(exp, w, parts[:2])
    exp.crash()
    state = exp.archive / ".state"
    for name in ("checkpoint.json", "checkpoint.json.prev"):
        (state / name).write_bytes(b"{torn")
    exp.start()
    for p in parts[2:]:
        feed(exp, w, p)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 19 -------------------------------------------------------------------------
class FailingOps(ckpt_mod.OsOps):
    """The checkpoint directory is full (ENOSPC) or read-only (EROFS)."""

    def __init__(self, err):
        self.err = err

    def open(self, path):
        raise OSError(self.err, os.strerror(self.err), path)


@pytest.fixture
def failing_checkpoints(monkeypatch):
    box = {"err": None}

    def write_atomic(path, state, *, ops=None):
        return ckpt_mod.write_atomic(path, state, ops=FailingOps(box["err"]) if box["err"] else ops)
    monkeypatch.setattr(pipeline_mod, "write_atomic", write_atomic)
    return box


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_19_checkpoint_dir_full_or_read_only_then_recovers(make_exporter, loki, ref_dir,
                                                           failing_checkpoints, err):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    feed(exp, w, parts[0])
    assert exp.commit()
    failing_checkpoints["err"] = err
    for p in parts[1:3]:
        feed(exp, w, p)
        assert not exp.commit()
        exp.push()  # the archive (fsynced) is still shipped meanwhile
    reg = exp.rt.registry
    assert sample(reg, "vllm_audit_checkpoint_write_failures_total") >= 2
    assert exp.rt.health.checkpoint_consecutive_failures >= 2
    failing_checkpoints["err"] = None
    feed(exp, w, parts[3])
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_19_crash_while_checkpoints_fail_restarts_from_the_last_good_one(
        make_exporter, loki, ref_dir, failing_checkpoints):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    feed(exp, w, parts[0])
    assert exp.commit()
    failing_checkpoints["err"] = errno.ENOSPC
    for p in parts[1:3]:
        feed(exp, w, p)
        assert not exp.commit()
        exp.push()
    exp.crash()
    failing_checkpoints["err"] = None
    exp.start()
    feed(exp, w, parts[3])
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)
