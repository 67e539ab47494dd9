"""Case 31 (issue #18, item 5): the archive's disk fills up while a backlog of
more than 256 records (the archive's in-memory bound) is waiting, then space
returns. Ingestion must resume by itself, /health must say why it stopped,
and the invariant of harness.py must hold (nothing lost, nothing doubled, in
the archive, in Loki and in the counters)."""

from __future__ import annotations

import errno
import os
import types

import pytest

from exporter.archive import writer as archive_mod
from exporter import checkpoint as ckpt_mod
from exporter import pipeline as pipeline_mod

from .harness import (
    Writer, archive_ids, assert_exactly_once, copies, reference_ids, sample,
)


class DiskFull:
    """One volume for the archive and its checkpoints that can be made full:
    every write (archive batch, checkpoint temp file) fails with ENOSPC."""

    def __init__(self):
        self.full = False
        self.refused = 0

    def check(self, what):
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)


@pytest.fixture
def disk(monkeypatch):
    d = DiskFull()
    real_os = archive_mod.os

    def write(fd, data):
        d.check("archive")
        return real_os.write(fd, data)
    # exporter.archive sees an os module whose write() fails while the disk is full
    names = {k: getattr(real_os, k) for k in dir(real_os) if not k.startswith("__")}
    monkeypatch.setattr(archive_mod, "os", types.SimpleNamespace(**{**names, "write": write}))

    class Ops(ckpt_mod.OsOps):
        def write(self, fd, data):
            d.check("checkpoint")
            return super().write(fd, data)
    real_write_atomic = ckpt_mod.write_atomic
    monkeypatch.setattr(pipeline_mod, "write_atomic",
                        lambda path, state, *, ops=None: real_write_atomic(path, state, ops=Ops()))
    return d


def feed(exp, w, lines) -> bytes:
    data = w.write(lines)
    exp.follow(data)
    exp.pump()
    return data


def test_31_disk_full_with_a_backlog_over_256_records_resumes_by_itself(make_exporter, loki, ref_dir,
                                                                       disk):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = copies(16)
    written = feed(exp, w, parts[0])
    assert exp.commit()
    exp.push()
    before = len(archive_ids(exp.archive))
    assert before >= 15

    disk.full = True
    for p in parts[1:14]:  # 13 x 22 = 286 records while the disk is full
        written += feed(exp, w, p)
    health = exp.rt.health
    ok, body = health.report()
    assert not ok
    why = " ".join(body["problems"])
    assert "archive" in why and "ENOSPC" in why and "paused" in why, body["problems"]
    assert body["archive"]["ingestion_paused"] is True
    reg = exp.rt.registry
    assert sample(reg, "vllm_audit_ingestion_paused") == 1
    assert sample(reg, "vllm_audit_archive_pending_records") >= 256
    assert sample(reg, "vllm_audit_archive_write_failures_total") >= 1
    assert len(archive_ids(exp.archive)) == before  # nothing half-written meanwhile

    disk.full = False  # space returns: no restart, the same runtime goes on
    exp.clock.now += 1  # the next commit attempt is due
    exp.pump()
    assert sample(reg, "vllm_audit_ingestion_paused") == 0
    assert health.report()[0], health.report()[1]["problems"]
    for p in parts[14:]:
        written += feed(exp, w, p)
    exp.settle()
    assert disk.refused >= 1
    expected = reference_ids(written, ref_dir)
    assert len(expected) == 16 * 22
    assert_exactly_once(exp, expected, loki=loki)


def test_31_replay_onto_a_full_disk_fails_with_the_error_instead_of_waiting(tmp_path, disk):
    """A backfill is a batch job: it stops with the disk's error (its
    checkpoint lets the next replay resume), it does not wait for space."""
    from exporter.cli import make_parser
    from exporter.runtime import build
    from exporter.settings import build as build_settings
    log = tmp_path / "backfill.log"
    log.write_bytes(b"".join(b"".join(p) for p in copies(14)))
    args = make_parser().parse_args(["replay", str(log), "--archive-dir", str(tmp_path / "a"),
                                     "--model", "tiny", "--no-progress"])
    rt = build(build_settings("replay", args, {}), live=False)
    disk.full = True
    with pytest.raises(OSError) as err:
        for _ in range(10_000):  # bounded: a regression would spin here, not hang the suite
            rt.pipeline.step()
    assert err.value.errno == errno.ENOSPC
    assert rt.archive.full and rt.pipeline.records_emitted >= 256
