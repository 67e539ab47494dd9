"""vLLM's shared, size-rotated log file (exporter/middleware/logfile.py):
several processes write it at once, it rotates logrotate-style under a lock,
and the exporter's tailer following it reads every line exactly once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time

from exporter.middleware.logfile import SharedRotatingFileHandler
from exporter.tail import FileTailer

LINES = 1500


def _writer(path: str, name: str, max_bytes: int, backups: int) -> None:
    handler = SharedRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"w.{name}")
    log.propagate = False
    log.addHandler(handler)
    for i in range(LINES):
        log.warning("%s line %05d %s", name, i, "x" * 40)
    handler.close()


def run_writers(path, max_bytes, backups, n=3):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), f"p{k}", max_bytes, backups)) for k in range(n)]
    for p in procs:
        p.start()
    return procs


def test_three_processes_rotate_one_file_and_the_tailer_reads_every_line_once(tmp_path):
    path = tmp_path / "vllm.log"
    path.touch()
    tailer = FileTailer(str(path), from_start=True)
    procs = run_writers(path, 16 << 10, 10_000)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += [line.text for line in tailer.poll()]
        if all(not p.is_alive() for p in procs) and len(seen) >= 3 * LINES:
            break
        time.sleep(0.001)
    seen += [line.text for line in tailer.poll()]
    assert all(p.exitcode == 0 for p in procs)
    want = {f"p{k} line {i:05d} {'x' * 40}" for k in range(3) for i in range(LINES)}
    assert len(seen) == len(want) and set(seen) == want  # nothing lost, nothing doubled
    rotated = [f for f in os.listdir(tmp_path) if f.startswith("vllm.log.") and f[9:].isdigit()]
    assert len(rotated) >= 10 and tailer.stats.rotations >= 10


def test_the_volume_stays_bounded(tmp_path):
    path = tmp_path / "vllm.log"
    for p in run_writers(path, 8 << 10, 2):
        p.join(60)
    names = sorted(os.listdir(tmp_path))
    assert names == ["vllm.log", "vllm.log.1", "vllm.log.2", "vllm.log.lock"]
    line = len(f"p0 line 00000 {'x' * 40}\n")
    for name in names[:3]:
        assert os.path.getsize(tmp_path / name) <= (8 << 10) + line


def test_with_pruning_the_directory_keeps_only_unread_data_and_every_line_is_read_once(tmp_path):
    """--prune-rotated against three writers rotating under their lock: each
    generation is deleted once read and "committed" (here: the position
    after each poll, what Pipeline.commit checkpoints), no rename between
    the check and the unlink makes it delete an unread one (every line is
    still read), and at the end only the live file is left. The writers'
    ring is big enough never to drop a file itself."""
    from prometheus_client import CollectorRegistry, Counter

    from exporter.tail.prune import RotatedPruner

    path = tmp_path / "vllm.log"
    path.touch()
    tailer = FileTailer(str(path), from_start=True)
    reg = CollectorRegistry()
    deleted = Counter("deleted", "", ["source"], registry=reg)
    failures = Counter("failures", "", ["source", "reason"], registry=reg)
    pruner = RotatedPruner({"vllm": tailer}, deleted=deleted, failures=failures)
    procs = run_writers(path, 16 << 10, 10_000)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += [line.text for line in tailer.poll()]
        pruner.after_commit({"sources": {"vllm": tailer.position()}})
        if all(not p.is_alive() for p in procs) and len(seen) >= 3 * LINES and not tailer.finished:
            break
        time.sleep(0.001)
    assert all(p.exitcode == 0 for p in procs)
    want = {f"p{k} line {i:05d} {'x' * 40}" for k in range(3) for i in range(LINES)}
    assert len(seen) == len(want) and set(seen) == want  # nothing lost, nothing doubled
    assert sorted(os.listdir(tmp_path)) == ["vllm.log", "vllm.log.lock"]
    assert tailer.stats.rotations >= 10
    assert reg.get_sample_value("deleted_total", {"source": "vllm"}) == tailer.stats.rotations
    assert sum(s.value for m in reg.collect() if m.name == "failures" for s in m.samples
               if s.name == "failures_total") == 0


def test_dir_mode_lets_the_exporter_group_delete(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    handler = SharedRotatingFileHandler(str(logs / "vllm.log"), maxBytes=1 << 20, dirMode="0770")
    handler.close()
    assert os.stat(logs).st_mode & 0o777 == 0o770
