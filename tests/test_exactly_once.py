"""Nothing lost, nothing doubled: crash anywhere, restart, same archive.

A run that is abandoned at an arbitrary point (no flush; archive flushed but
not checkpointed; checkpointed) and restarted from disk must end with an
archive byte-identical to one uninterrupted pass over the same input, and
with the same metric store. The input is a real vLLM 0.32 capture (DEBUG
request logging, so records carry token counts and users).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.runtime import build
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"
REPO = Path(__file__).resolve().parents[1]


def _settings(log: Path, archive: Path):
    args = make_parser().parse_args(["replay", str(log), "--archive-dir", str(archive),
                                     "--model", "tiny", "--no-progress"])
    return build_settings("replay", args, {})


def _runtime(log: Path, archive: Path):
    rt = build(_settings(log, archive), live=False)
    for src in rt.pipeline.sources:  # small batches: many distinct crash points
        pass
    rt.pipeline.batch_lines = 7
    return rt


def _archive_bytes(archive: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(archive.glob("audit-*.jsonl")))


def _one_pass(log: Path, archive: Path):
    rt = _runtime(log, archive)
    while not rt.pipeline.done():
        rt.pipeline.step()
    rt.pipeline.finish()
    return _archive_bytes(archive), rt.metrics.snapshot()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _one_pass(CAPTURE, tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("crash_after", [1, 3, 8, 15, 27, 40])
@pytest.mark.parametrize("how", ["no_flush", "flushed_not_checkpointed", "checkpointed"])
def test_crash_and_restart_gives_the_same_archive(tmp_path, reference, crash_after, how):
    ref_bytes, ref_metrics = reference
    archive = tmp_path / "archive"
    rt = _runtime(CAPTURE, archive)
    steps = 0
    while not rt.pipeline.done() and steps < crash_after:
        rt.pipeline.step()
        steps += 1
    if how == "flushed_not_checkpointed":
        rt.archive.flush()  # records on disk that no checkpoint covers
    elif how == "checkpointed":
        rt.pipeline.commit()
    del rt  # the "kill -9": nothing else reaches the disk

    rt2 = _runtime(CAPTURE, archive)
    while not rt2.pipeline.done():
        rt2.pipeline.step()
    rt2.pipeline.finish()
    assert _archive_bytes(archive) == ref_bytes
    assert rt2.metrics.snapshot() == ref_metrics


def test_double_restart_after_finish_adds_nothing(tmp_path, reference):
    ref_bytes, _ = reference
    archive = tmp_path / "archive"
    _one_pass(CAPTURE, archive)
    again, _ = _one_pass(CAPTURE, archive)  # same file again: already read
    assert again == ref_bytes


def _request_ids(archive: Path) -> list[str]:
    ids = []
    for p in sorted(archive.glob("audit-*.jsonl")):
        ids += [json.loads(line)["request_id"] for line in p.read_text().splitlines()]
    return ids


def test_sigkill_during_live_tail_loses_and_doubles_nothing(tmp_path):
    """The real process, really killed with SIGKILL while the log grows."""
    lines = CAPTURE.read_bytes().splitlines(keepends=True)
    log = tmp_path / "vllm.log"
    log.write_bytes(b"")
    archive = tmp_path / "archive"
    cmd = [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start",
           "--archive-dir", str(archive), "--model", "tiny", "--web.listen-address", "127.0.0.1:0",
           "--checkpoint-interval", "0.05", "--merge-grace", "0", "--request-timeout", "0.5"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    chunks = [lines[i:i + 40] for i in range(0, len(lines), 40)]
    proc = None
    for i, chunk in enumerate(chunks):
        if proc is None:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with log.open("ab") as f:
            f.writelines(chunk)
        time.sleep(0.15)
        if i % 3 == 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = None
    if proc is None:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    expected = len(_request_ids_reference(tmp_path))
    while time.monotonic() < deadline and len(_request_ids(archive)) < expected:
        time.sleep(0.2)
    time.sleep(1.0)  # anything extra would show up now
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    got = _request_ids(archive)
    assert sorted(got) == sorted(_request_ids_reference(tmp_path))
    assert len(got) == len(set(got))


def _request_ids_reference(tmp_path: Path) -> list[str]:
    ref = tmp_path / "ref-archive"
    if not ref.exists():
        _one_pass(CAPTURE, ref)
    return _request_ids(ref)
