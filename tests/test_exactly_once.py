"""Nothing lost, nothing doubled: crash anywhere, restart, same archive.

A run that is abandoned at an arbitrary point (no flush; archive flushed but
not checkpointed; checkpointed) and restarted from disk must end with an
archive byte-identical to one uninterrupted pass over the same input, and
with the same metric store. The input is a real vLLM 0.32 capture (DEBUG
request logging, so records carry token counts and users).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.record import dumps_line, parse_ts
from exporter.runtime import build
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"
# The same vLLM build with the audit middleware: two sources, and middleware
# lines carrying nested objects (prompt messages, identity, params, usage).
TWO_SOURCES = tuple(Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "middleware" / name
                    for name in ("vllm.log", "middleware.jsonl"))
REPO = Path(__file__).resolve().parents[1]


def _settings(log: Path | tuple[Path, ...], archive: Path):
    logs = log if isinstance(log, tuple) else (log,)
    args = make_parser().parse_args(["replay", *map(str, logs), "--archive-dir", str(archive),
                                     "--model", "tiny", "--no-progress"])
    return build_settings("replay", args, {})


def _runtime(log: Path | tuple[Path, ...], archive: Path):
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


@pytest.fixture(scope="module")
def reference_two_sources(tmp_path_factory):
    return _one_pass(TWO_SOURCES, tmp_path_factory.mktemp("ref2"))


def _nested_middleware_in_flight(archive: Path) -> int:
    """In-flight requests in the checkpoint on disk whose middleware line
    (with its nested identity and params objects, and its prompt) is held
    there. (The parser turns a structured prompt into its JSON text on
    arrival, so only identity and params stay objects.)"""
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]
    return sum(1 for e in state["correlator"]["inflight"].values()
               if isinstance(e.get("mw"), dict) and isinstance(e["mw"].get("identity"), dict)
               and isinstance(e["mw"].get("params"), dict) and e["mw"].get("prompt") is not None)


def _to_the_end(rt) -> None:
    while not rt.pipeline.done():
        rt.pipeline.step()
    rt.pipeline.finish()


def _records_without_chain(archive: Path) -> dict[tuple[str, str], bytes]:
    """Each record's line without seq/prev_hash/hash (nested key order kept),
    by (request_id, ts)."""
    out = {}
    for line in _archive_bytes(archive).splitlines():
        rec = json.loads(line)
        for k in ("seq", "prev_hash", "hash"):
            del rec[k]
        out[(rec["request_id"], rec["ts"])] = dumps_line(rec).encode()
    return out


@pytest.mark.parametrize("crash_after", [18, 36, 57, 62])
def test_restart_with_middleware_objects_in_flight_gives_the_same_records(
        tmp_path, reference_two_sources, crash_after):
    """Requests held in the checkpoint come back exactly as they were read
    (key order of the middleware line's identity, prompt messages, params
    included), so each record is the same bytes as in an uninterrupted run.
    (Replay after a restart may read the two files in another order, which
    can change the order of records, hence their seq and the float sums of
    the metrics: compared per record. The live test below compares bytes.)"""
    ref_bytes, _ = reference_two_sources
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "audit-ref.jsonl").write_bytes(ref_bytes)
    archive = tmp_path / "archive"
    rt = _runtime(TWO_SOURCES, archive)
    for _ in range(crash_after):
        rt.pipeline.step()
    rt.pipeline.commit()
    del rt  # the "kill -9" just after a checkpoint
    assert _nested_middleware_in_flight(archive) > 0  # the case under test
    rt2 = _runtime(TWO_SOURCES, archive)
    _to_the_end(rt2)
    assert _records_without_chain(archive) == _records_without_chain(ref_dir)


_TEXT_TIME = re.compile(rb"(?:^|\) )(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")


def _timeline() -> list[tuple[float, int, bytes]]:
    """Both capture files as one stream in time order: (time, file, line)."""
    out = []
    for index, path in enumerate(TWO_SOURCES):
        t = 0.0
        for line in path.read_bytes().splitlines(keepends=True):
            m = _TEXT_TIME.search(line)
            if m:
                mo, d, h, mi, sec = (int(x) for x in m.groups())
                t = float(calendar.timegm((2026, mo, d, h, mi, sec)))
            elif line.startswith(b"{"):
                t = parse_ts(json.loads(line)["finished_at"])
            out.append((t, index, line))
    return sorted(out, key=lambda x: (x[0], x[1]))


class _Live:
    """``exporter run`` over two growing files, in-process, on a fake clock:
    ``kill()`` drops the runtime with nothing more written (SIGKILL)."""

    def __init__(self, tmp: Path):
        self.logs = [tmp / "vllm.log", tmp / "middleware.jsonl"]
        for p in self.logs:
            p.write_bytes(b"")
        self.archive = tmp / "archive"
        self.now = [0.0]
        self.rt = None

    def start(self):
        argv = ["run", *(a for p in self.logs for a in ("--log", str(p))), "--from-start",
                "--archive-dir", str(self.archive), "--model", "tiny", "--merge-grace", "2",
                "--request-timeout", "30", "--web.listen-address", "127.0.0.1:0",
                # the reference and the killed run live in two state dirs: one
                # label key for both, so their metric snapshots can be compared
                "--hmac-key", "exactly-once-test-key"]
        self.rt = build(build_settings("run", make_parser().parse_args(argv), {}), live=True,
                        clock=lambda: self.now[0])

    def feed(self, chunk) -> None:
        for t, index, line in chunk:
            with self.logs[index].open("ab") as f:
                f.write(line)
        self.now[0] = max(self.now[0], max(t for t, _, _ in chunk))
        self.pump()

    def pump(self) -> None:
        idle = 0
        while idle < 2:
            idle = idle + 1 if self.rt.pipeline.step() == 0 else 0

    def kill(self) -> None:
        for s in self.rt.pipeline.sources:
            s.tailer.close()
        self.rt = None

    def finish(self) -> bytes:
        self.now[0] += 60
        self.pump()
        assert self.rt.pipeline.commit()
        return _archive_bytes(self.archive)


def test_live_kill_after_every_checkpoint_with_two_sources_gives_the_same_archive(tmp_path):
    """The case of issue #18 (kill -9 of a live exporter reading vLLM's log and
    the middleware's): restarted after every checkpoint, the archive is
    byte-identical to an uninterrupted run, though middleware lines (nested
    identity, prompt messages, params) were held in the checkpoints."""
    timeline = _timeline()
    chunks = [timeline[i:i + 9] for i in range(0, len(timeline), 9)]
    (tmp_path / "ref").mkdir()
    ref = _Live(tmp_path / "ref")
    ref.start()
    for chunk in chunks:
        ref.feed(chunk)
    ref_bytes = ref.finish()
    ref_metrics = ref.rt.metrics.snapshot()
    assert ref_bytes.count(b"\n") == 23

    (tmp_path / "killed").mkdir()
    live = _Live(tmp_path / "killed")
    held = 0
    for chunk in chunks:
        live.start()
        live.feed(chunk)
        assert live.rt.pipeline.commit()
        held += _nested_middleware_in_flight(live.archive)
        live.kill()
    live.start()
    assert held >= 5  # requests with their middleware line were in flight at many kills
    assert live.finish() == ref_bytes
    assert live.rt.metrics.snapshot() == ref_metrics


def test_keyed_exporter_ignores_a_checkpoint_rewritten_without_the_key(tmp_path, capsys):
    """Someone who can write .state but lacks the HMAC key forges a checkpoint
    (plain SHA-256 envelope) that would cut the last records off the archive
    on the next start. The keyed exporter does not take it: it starts as
    without a checkpoint (rebuild from the archive, skip what is archived)."""
    from exporter import checkpoint as ckpt
    archive = tmp_path / "archive"

    def keyed_runtime():
        args = make_parser().parse_args(["replay", str(CAPTURE), "--archive-dir", str(archive),
                                         "--model", "tiny", "--no-progress", "--hmac-key", "k3y"])
        return build(build_settings("replay", args, {}), live=False)

    _to_the_end(keyed_runtime())
    good = _archive_bytes(archive)
    path = str(archive / ".state" / "checkpoint.json")
    state = ckpt.read_checkpoint(path, key=b"k3y").state
    assert state is not None
    lines = good.splitlines(keepends=True)
    last_kept = json.loads(lines[-3])
    state["archive"].update(size=len(b"".join(lines[:-2])), seq=last_kept["seq"], head_hash=last_kept["hash"])
    state["sources"] = {}  # and the inputs "already read" to their end
    ckpt.write_atomic(path, state, key=None)
    ckpt.write_atomic(path, state, key=None)  # .prev too
    capsys.readouterr()
    rt = keyed_runtime()
    assert "no usable checkpoint (current: not_keyed; prev: not_keyed)" in capsys.readouterr().err
    _to_the_end(rt)
    assert _archive_bytes(archive) == good


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


def test_a_rebuild_from_a_damaged_archive_skips_the_damage_and_counts_the_rest(tmp_path):
    """The start without a checkpoint observes every archived record again.
    A damaged line (valid JSON, not a record: an array, a model that is a
    list, flags that are a string) raised there and the exporter could not
    start at all. Now the damage is skipped (verify is what reports it) and
    every intact record is counted and known as archived."""
    from exporter.archive.recovery import rebuild_from_archive
    from exporter.labels import ServedModels, UserLabels
    from exporter.metrics import RequestMetrics
    from prometheus_client import CollectorRegistry
    archive = tmp_path / "archive"
    _, want = _one_pass(CAPTURE, archive)
    (day,) = sorted(archive.glob("audit-*.jsonl"))
    good = [json.loads(x) for x in day.read_text().splitlines()]
    damaged = [[1], 7, dict(good[0], request_id="d1", model=[]), dict(good[0], request_id="d2", flags="pii"),
               dict(good[0], request_id="d3", flags=[["x"], ["x"]], user={"a": 1})]
    with day.open("a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in damaged))
    m = RequestMetrics(CollectorRegistry(), users=UserLabels(500, enabled=True, key=b"k"), max_models=100)
    m.served = ServedModels("tiny")
    keys = rebuild_from_archive(archive, m.observe)
    assert keys == {(r["request_id"], r["ts"]) for r in good} | {(n, good[0]["ts"]) for n in ("d1", "d2", "d3")}
    requests = m.snapshot()["counters"]["vllm_audit_requests_total"]["series"]
    assert sum(row[-1] for row in requests) == len(good) + 3
    assert sum(row[-1] for row in want["counters"]["vllm_audit_requests_total"]["series"]) == len(good)
