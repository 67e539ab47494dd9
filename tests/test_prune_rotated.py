"""--prune-rotated: the exporter deletes rotated generations of vLLM's log
(logrotate naming, exporter/middleware/logfile.py) once a durable checkpoint
shows them read, and nothing else. Real files, the real tailer, pipeline and
runtime (a fake clock); the input is the real vLLM 0.32 capture."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.runtime import build
from exporter.settings import build as build_settings
from tests.faults.harness import START, capture_lines, header_epoch, YEAR, split_at_requests
from tests.loki_server import FakeClock

LINES = capture_lines()


def rotate(path: Path, backups: int = 10) -> None:
    """What SharedRotatingFileHandler._rotate does, under its lock."""
    with open(f"{path}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for i in range(backups - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        os.replace(path, f"{path}.1")
        path.touch()


class Exporter:
    def __init__(self, tmp: Path, *, prune: bool = True, clock: FakeClock | None = None):
        self.log = tmp / "logs" / "vllm.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if not self.log.exists():
            self.log.touch()
        self.archive = tmp / "archive"
        argv = ["run", "--log", str(self.log), "--archive-dir", str(self.archive), "--model", "tiny",
                "--merge-grace", "0", "--request-timeout", "10",
                "--checkpoint-interval", "1e9"]  # commits only where a test makes them
        argv += ["--prune-rotated"] if prune else []
        self.clock = clock or FakeClock(START)
        self.rt = build(build_settings("run", make_parser().parse_args(argv), {}), live=True,
                        clock=self.clock)
        self.pipeline = self.rt.pipeline
        self.pipeline.batch_lines = 7

    @property
    def pruner(self):
        return self.pipeline.after_commit[0].__self__

    def write(self, lines: list[bytes]) -> None:
        with open(self.log, "ab") as f:
            f.write(b"".join(lines))
        times = [t for t in (header_epoch(ln, YEAR) for ln in lines) if t is not None]
        if times:
            self.clock.now = max(self.clock.now, max(times) + 1)

    def read_all(self) -> None:
        src = self.pipeline.sources[0]
        for _ in range(10_000):
            if not self.pipeline.step() and src.tailer.at_eof:
                return
        raise AssertionError("the tailer never caught up")

    def finish(self) -> None:
        self.read_all()
        self.clock.now += 60  # past --request-timeout: everything held is recorded
        self.read_all()
        assert self.pipeline.commit()

    def sample(self, name: str, **labels) -> float:
        labels = {"source": str(self.log), **labels}
        return self.rt.registry.get_sample_value(name, labels) or 0.0

    def deleted(self) -> float:
        return self.sample("vllm_audit_rotated_files_deleted_total")

    def failed(self, reason: str) -> float:
        return self.sample("vllm_audit_rotated_file_delete_failures_total", reason=reason)


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def archive_bytes(archive: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(archive.glob("audit-*.jsonl")))


def test_a_read_rotated_file_is_deleted_after_the_commit_not_before(tmp_path, caplog):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.read_all()  # .1 drained to its end, the path read on
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.1", "vllm.log.lock"]  # read, not committed
    assert ex.pipeline.sources[0].tailer.finished
    caplog.set_level("WARNING", logger="exporter.prune")
    assert ex.pipeline.commit()
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.lock"]
    assert ex.deleted() == 1
    assert [r.getMessage() for r in caplog.records if "deleted rotated log" in r.getMessage()] == [
        f"deleted rotated log {ex.log}.1 ({len(b''.join(first))} bytes, read and committed)"]
    ex.finish()  # the live file stays, whatever is committed
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.lock"]


def test_off_by_default_nothing_is_deleted(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path, prune=False)
    assert ex.pipeline.after_commit == [] and not ex.pipeline.sources[0].tailer.keep_finished
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.finish()
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.1", "vllm.log.lock"]


def test_a_crash_before_the_commit_deletes_nothing(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    assert ex.pipeline.commit()  # the checkpoint is in the file that becomes .1
    rotate(ex.log)
    ex.write(second)
    ex.read_all()
    clock = ex.clock
    del ex  # kill -9: no commit after .1 was read
    assert names(tmp_path / "logs") == ["vllm.log", "vllm.log.1", "vllm.log.lock"]
    again = Exporter(tmp_path, clock=clock)  # resumes in .1 (found by inode), reads it again
    again.read_all()
    assert names(tmp_path / "logs") == ["vllm.log", "vllm.log.1", "vllm.log.lock"]
    assert again.pipeline.commit()
    assert names(tmp_path / "logs") == ["vllm.log", "vllm.log.lock"] and again.deleted() == 1


def test_a_partly_read_rotated_file_is_kept(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    rotate(ex.log)
    ex.write(second)
    ex.pipeline.step()  # 7 lines of .1
    assert ex.pipeline.commit()
    assert "vllm.log.1" in names(ex.log.parent) and ex.deleted() == 0
    ex.read_all()
    assert ex.pipeline.commit()
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.lock"] and ex.deleted() == 1


def test_files_never_read_symlinks_and_other_names_are_untouched(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    first, second, third = split_at_requests(LINES, 0.33, 0.66)
    (logs / "vllm.log").write_bytes(b"".join(first))
    rotate(logs / "vllm.log")  # .1 exists before the exporter's first start
    ex = Exporter(tmp_path)  # starts at the path: .1 is never read, so never deleted
    ex.write(second)
    ex.read_all()
    rotate(ex.log)  # the first start's file is now .1, the unread one .2
    ex.write(third)
    ex.read_all()
    # Before the commit, the read file moves to a name outside the rotation
    # names, and a rotation name becomes a symlink to it.
    os.replace(logs / "vllm.log.1", logs / "vllm.log.old")
    os.symlink("vllm.log.old", logs / "vllm.log.1")
    (logs / "vllm.log.3.gz").write_bytes(b"compressed")
    (logs / "vllm.log.9").write_bytes(b"a rotation name, never read\n")
    before = {n: (logs / n).read_bytes() for n in names(logs)}
    assert ex.pipeline.commit()
    assert {n: (logs / n).read_bytes() for n in names(logs)} == before
    assert os.path.islink(logs / "vllm.log.1") and ex.deleted() == 0
    assert not ex.pipeline.sources[0].tailer.finished  # forgotten: not provably ours


def test_a_file_changed_since_it_was_read_is_kept_and_counted(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.read_all()
    with open(ex.log.parent / "vllm.log.1", "ab") as f:  # a late write to the old inode
        f.write(b"late line\n")
    assert ex.pipeline.commit()
    assert "vllm.log.1" in names(ex.log.parent)
    assert ex.failed("changed") == 1 and ex.deleted() == 0


def test_a_deletion_failure_is_counted_and_ingestion_goes_on(tmp_path):
    first, second, third = split_at_requests(LINES, 0.33, 0.66)
    ex = Exporter(tmp_path)
    fs = ex.pruner._fs

    class ReadOnly(type(fs)):
        def unlink(self, path):  # as root, chmod cannot deny it: a read-only mount
            raise OSError(errno.EROFS, "Read-only file system", path)

    ex.pruner._fs = ReadOnly()
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.read_all()
    assert ex.pipeline.commit()
    assert "vllm.log.1" in names(ex.log.parent) and ex.failed("permission") == 1
    rotate(ex.log)
    ex.write(third)
    ex.finish()
    assert ex.failed("permission") == 2 and ex.deleted() == 0
    assert len(archive_bytes(ex.archive).splitlines()) == 22  # every request of the capture


def test_no_rotation_lock_means_no_deletion(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    os.unlink(f"{ex.log}.lock")  # another writer (logrotate): renames we cannot exclude
    ex.write(second)
    ex.read_all()
    assert ex.pipeline.commit()
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.1"] and ex.failed("no_lock") == 1


def test_a_busy_lock_is_retried_after_the_next_commit(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.read_all()
    with open(f"{ex.log}.lock", "a+") as lock:  # the writer is rotating or logging
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert ex.pipeline.commit()
        assert "vllm.log.1" in names(ex.log.parent)
    ex.pipeline._dirty = True
    assert ex.pipeline.commit()
    assert names(ex.log.parent) == ["vllm.log", "vllm.log.lock"] and ex.deleted() == 1


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_restart_after_deletions_gives_a_byte_identical_archive(tmp_path, crash_at):
    """Four generations, each deleted once read and committed; a kill -9 after
    the deletion of the crash_at'th, a restart, the rest: the same archive as
    an exporter that never pruned nor crashed."""
    parts = split_at_requests(LINES, 0.25, 0.5, 0.75)

    def run(tmp: Path, *, prune: bool, crash: int | None):
        ex = Exporter(tmp, prune=prune)
        for k, part in enumerate(parts):
            if k:
                rotate(ex.log)
            ex.write(part)
            ex.read_all()
            assert ex.pipeline.commit()
            if crash is not None and k == crash:
                assert ex.deleted() == crash
                clock = ex.clock
                del ex
                ex = Exporter(tmp, prune=prune, clock=clock)
        ex.finish()
        return ex

    ref = run(tmp_path / "ref", prune=False, crash=None)
    assert names(ref.log.parent) == ["vllm.log", "vllm.log.1", "vllm.log.2", "vllm.log.3", "vllm.log.lock"]
    got = run(tmp_path / "pruned", prune=True, crash=crash_at)
    assert names(got.log.parent) == ["vllm.log", "vllm.log.lock"]
    assert archive_bytes(got.archive) == archive_bytes(ref.archive)
    assert len(archive_bytes(got.archive).splitlines()) == 22


def test_a_crash_between_the_commit_and_the_deletion_only_delays_it(tmp_path):
    first, second = split_at_requests(LINES, 0.5)
    ex = Exporter(tmp_path)
    ex.write(first)
    ex.read_all()
    rotate(ex.log)
    ex.write(second)
    ex.read_all()
    with open(f"{ex.log}.lock", "a+") as lock:  # the deletion waits for the writer ...
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert ex.pipeline.commit()
        clock = ex.clock
        del ex  # ... and the exporter is killed before the next commit
    assert "vllm.log.1" in names(tmp_path / "logs")
    again = Exporter(tmp_path, clock=clock)  # the checkpoint lists .1 as read: deleted at start
    assert names(tmp_path / "logs") == ["vllm.log", "vllm.log.lock"] and again.deleted() == 1
    again.finish()
    assert len(archive_bytes(again.archive).splitlines()) == 22


def test_the_middleware_file_rotates_under_the_lock_and_is_pruned(tmp_path):
    """middleware.jsonl (exporter/middleware/writer.py FileSink: one .1) takes
    the same rotation lock, so its read .1 goes too and every line is read once."""
    from prometheus_client import CollectorRegistry, Counter

    from exporter.middleware.writer import FileSink
    from exporter.tail import FileTailer
    from exporter.tail.prune import RotatedPruner

    path = tmp_path / "middleware.jsonl"
    sink = FileSink(str(path), max_bytes=4096)
    sink.write(b'{"n": -1}\n')
    tailer = FileTailer(str(path), from_start=True)
    reg = CollectorRegistry()
    pruner = RotatedPruner({"mw": tailer}, deleted=Counter("d", "", ["source"], registry=reg),
                           failures=Counter("f", "", ["source", "reason"], registry=reg))
    seen = []
    for n in range(2000):
        sink.write(b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * 60))
        if n % 10 == 0:  # the tailer keeps up: each .1 is read before the next rotation
            seen += [line.text for line in tailer.poll()]
            pruner.after_commit({"sources": {"mw": tailer.position()}})
    for _ in range(3):
        seen += [line.text for line in tailer.poll()]
        pruner.after_commit({"sources": {"mw": tailer.position()}})
    sink.close()
    assert [int(t.split(",")[0].split(":")[1].strip(" }")) for t in seen] == list(range(-1, 2000))
    assert tailer.stats.rotations > 20
    assert reg.get_sample_value("d_total", {"source": "mw"}) == tailer.stats.rotations
    assert sorted(os.listdir(tmp_path)) == ["middleware.jsonl", "middleware.jsonl.lock"]


def test_a_malformed_entry_in_the_checkpoint_is_ignored(tmp_path):
    ex = Exporter(tmp_path)
    tailer = ex.pipeline.sources[0].tailer
    ex.pruner.restore({"rotated_read": {str(ex.log): [{"file": "/etc/passwd"}, None,
                                                      {**tailer.position(), "path": "/elsewhere"}]}})
    assert not tailer.finished
