"""Issue #18, item 1: an unexpected exception in a worker thread of ``run``
never silently stops the audit.

The real ``run`` service (:class:`exporter.service.Service`, the object
``cmd_run`` serves) runs in-process on real files and threads, its
``/health`` and ``/metrics`` read through the real HTTP app; an exception is
injected into the pipeline (mid-batch, in the detector: records of the batch
already observed and buffered) or into the Loki pusher (after Loki stored a
batch, before the position is saved). Expected: /health 503 and
``vllm_audit_thread_up`` 0 while down, a restart counted, every record
exactly once in the archive, the counters and Loki; a failure that repeats
without progress makes the process give up with exit status 1 — checked on a
real process too. Before the fix the thread died, /health kept answering 200
and nothing after that line was archived."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from exporter import runtime as runtime_mod
from exporter.cli import make_parser
from exporter.httpapp import create_app
from exporter.loki import pusher as pusher_mod
from exporter.service import Service
from exporter.settings import build as build_settings

from tests.faults.harness import (
    archive_ids, capture_lines, loki_ids, reference_ids, requests_total, sample, written_now,
)
from tests.loki_server import LokiServer

REPO = Path(__file__).resolve().parents[1]
LINES = capture_lines()


def wait_for(cond, what: str, timeout: float = 30.0):
    """Poll ``cond`` until it is true; fail naming the event that never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def settings_for(tmp_path: Path, *extra: str):
    argv = ["run", "--log", str(tmp_path / "vllm.log"), "--from-start",
            "--archive-dir", str(tmp_path / "archive"), "--model", "tiny",
            "--merge-grace", "0", "--request-timeout", "0.5", "--checkpoint-interval", "0.05",
            "--web.listen-address", "127.0.0.1:0", *extra]
    return build_settings("run", make_parser().parse_args(argv), {})


class Poison:
    """A detector that raises on the ``at``-th record it sees, while armed;
    ``gate`` (when given) holds the pipeline's rebuild until the test opens it."""

    def __init__(self, at: int = 5, times: int | None = 1):
        self.at, self.times = at, times
        self.seen = 0
        self.raised = 0

    def detect(self, rec):
        self.seen += 1
        if self.seen >= self.at and (self.times is None or self.raised < self.times):
            self.raised += 1
            raise RuntimeError("injected: detector blew up")
        return []


@pytest.fixture
def poison(monkeypatch):
    p = Poison()
    real = runtime_mod._detector

    def detector(settings):
        inner = real(settings)
        return lambda rec: p.detect(rec) or inner(rec)
    monkeypatch.setattr(runtime_mod, "_detector", detector)
    return p


@pytest.fixture
def running(tmp_path):
    started = []

    def start(*extra, **kw):
        kw.setdefault("backoff_initial", 0.01)
        kw.setdefault("idle_wait", 0.01)
        svc = Service(settings_for(tmp_path, *extra), **kw)
        svc.start()
        started.append(svc)
        client = TestClient(create_app(registry=svc.rt.registry, health=svc.rt.health))
        return svc, client
    yield start
    for svc in started:
        svc.shutdown()


def health(client):
    resp = client.get("/health")
    return resp.status_code, resp.json()


def recent(lines):
    """The capture as if vLLM had just written it (it spans 24 s): every
    request can be decided at once, none waits for the clock to catch up."""
    return written_now(lines, now=time.time() - 60)


def reference(tmp_path, data: bytes) -> list[str]:
    return reference_ids(data, tmp_path / "reference")


def test_pipeline_exception_restarts_from_the_checkpoint_nothing_lost_or_doubled(
        tmp_path, running, poison, monkeypatch):
    gate, held = threading.Event(), threading.Event()
    real_rebuild = runtime_mod.rebuild_pipeline

    def rebuild(rt):
        held.set()
        gate.wait(30)  # the test looks at /health while the pipeline is down
        return real_rebuild(rt)
    monkeypatch.setattr(runtime_mod, "rebuild_pipeline", rebuild)
    data = b"".join(recent(LINES))
    (tmp_path / "vllm.log").write_bytes(data)
    svc, client = running()
    reg = svc.rt.registry

    wait_for(held.is_set, "the injected exception and the restart that follows it")
    status, body = health(client)
    assert status == 503
    assert any("thread pipeline" in p and "injected: detector blew up" in p for p in body["problems"])
    assert body["threads"]["pipeline"]["state"] == "restarting"
    assert sample(reg, "vllm_audit_thread_up", thread="pipeline") == 0
    assert sample(reg, "vllm_audit_thread_restarts_total", thread="pipeline") == 0

    gate.set()
    expected = reference(tmp_path, data)
    wait_for(lambda: len(archive_ids(tmp_path / "archive")) >= len(expected),
             "every request archived after the restart")
    wait_for(lambda: health(client)[0] == 200, "/health back to 200 once the pipeline committed")
    assert sample(reg, "vllm_audit_thread_restarts_total", thread="pipeline") == 1
    assert sample(reg, "vllm_audit_thread_up", thread="pipeline") == 1
    svc.shutdown()
    got = archive_ids(tmp_path / "archive")
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    assert requests_total(reg) == len(got)  # the store came back from the checkpoint
    assert poison.raised == 1 and svc.exit_code == 0


def test_pipeline_failing_without_progress_gives_up_and_a_restart_recovers(tmp_path, running,
                                                                            poison):
    poison.times = None  # every attempt fails at the same record
    data = b"".join(recent(LINES))
    (tmp_path / "vllm.log").write_bytes(data)
    svc, client = running("--max-thread-restarts", "2")
    wait_for(svc.fatal_event.is_set, "the supervisor giving up")
    status, body = health(client)
    assert status == 503
    assert body["threads"]["pipeline"]["state"] == "failed"
    assert any("thread pipeline: gave up after 3 failure(s)" in p for p in body["problems"])
    reg = svc.rt.registry
    assert sample(reg, "vllm_audit_thread_restarts_total", thread="pipeline") == 2
    assert sample(reg, "vllm_audit_thread_up", thread="pipeline") == 0
    assert svc.exit_code == 1 and "giving up" in svc.fatal
    svc.shutdown()
    assert archive_ids(tmp_path / "archive") == []  # the failed pipeline was never committed

    poison.times = 0  # the orchestrator restarts the process; the cause is gone
    svc2, client2 = running()
    expected = reference(tmp_path, data)
    wait_for(lambda: len(archive_ids(tmp_path / "archive")) >= len(expected), "the restart archiving")
    svc2.shutdown()
    got = archive_ids(tmp_path / "archive")
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    assert requests_total(svc2.rt.registry) == len(got)


def test_loki_pusher_exception_restarts_and_loki_gets_each_record_once(tmp_path, running,
                                                                       monkeypatch):
    real = pusher_mod.LokiPusher._on_success
    raised = []

    def on_success(self, items):
        if not raised:  # Loki stored the batch; the position is not saved yet
            raised.append(len(items))
            raise RuntimeError("injected: pusher blew up")
        return real(self, items)
    monkeypatch.setattr(pusher_mod.LokiPusher, "_on_success", on_success)
    data = b"".join(recent(LINES))
    (tmp_path / "vllm.log").write_bytes(data)
    expected = reference(tmp_path, data)
    with LokiServer() as srv:
        svc, client = running("--loki-url", srv.url, "--loki-batch-wait", "0.05")
        reg = svc.rt.registry
        wait_for(lambda: sample(reg, "vllm_audit_thread_restarts_total", thread="loki") == 1,
                 "the pusher's restart after the injected exception")
        wait_for(lambda: svc.rt.loki.backlog() == 0 and len(archive_ids(tmp_path / "archive"))
                 == len(expected), "every record archived and acknowledged by Loki")
        wait_for(lambda: sample(reg, "vllm_audit_thread_up", thread="loki") == 1,
                 "the pusher up again")
        assert raised
        assert health(client)[0] == 200
        svc.shutdown()
        assert sorted(loki_ids(srv)) == sorted(expected)  # after Loki's dedup: once each
        assert srv.received > len(expected)  # the unacknowledged batch was sent again
    got = archive_ids(tmp_path / "archive")
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_thread_that_dies_outright_is_reported_and_ends_the_service(tmp_path, running, monkeypatch):
    """Not even an exception that bypasses ``except Exception`` ends a worker silently."""
    from exporter import service as service_mod

    def die(self, progress):
        raise SystemExit("gone")  # threading swallows SystemExit: the classic silent death
    monkeypatch.setattr(service_mod.Service, "_pipeline_body", die)
    (tmp_path / "vllm.log").write_bytes(b"")
    svc, client = running()
    wait_for(svc.fatal_event.is_set, "the dead thread being noticed")
    status, body = health(client)
    assert status == 503 and body["threads"]["pipeline"]["state"] == "failed"
    assert svc.exit_code == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WRAPPER = """
import sys
from exporter import runtime
def detector(settings):
    def detect(rec):
        raise RuntimeError("injected: detector blew up")
    return detect
runtime._detector = detector
from exporter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_real_process_exits_non_zero_instead_of_serving_ok(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(recent(LINES)))
    port = _free_port()
    cmd = [sys.executable, "-c", _WRAPPER, "run", "--log", str(log), "--from-start",
           "--archive-dir", str(tmp_path / "archive"), "--model", "tiny", "--merge-grace", "0",
           "--request-timeout", "0.5", "--web.listen-address", f"127.0.0.1:{port}",
           "--max-thread-restarts", "1"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pytest.fail("the exporter kept running with a dead pipeline thread")
    err = proc.stderr.read().decode()
    assert rc == 1, err[-2000:]
    assert "pipeline: giving up after 2 failure(s)" in err and "injected: detector blew up" in err
    assert "Traceback" in err  # the cause is logged, not swallowed
    state = json.loads((tmp_path / "archive" / ".state" / "checkpoint.json").read_text())["state"]
    assert state["archive"]["seq"] == 0  # nothing half-done was committed


def test_rebuild_before_any_checkpoint_resumes_where_the_start_began(tmp_path):
    """No checkpoint on disk yet (the first commit failed, say): the rebuild
    starts the inputs where this process started them, not at their end now."""
    from tests.faults.harness import FakeClock, START, split_at_requests
    old, new = split_at_requests(LINES, 0.5)
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(old))  # before the start: skipped (--from-end)
    argv = ["run", "--log", str(log), "--from-end", "--archive-dir", str(tmp_path / "archive"), "--model", "tiny",
            "--merge-grace", "0", "--request-timeout", "10", "--checkpoint-interval", "3600"]
    clock = FakeClock(START + 3600)
    rt = runtime_mod.build(build_settings("run", make_parser().parse_args(argv), {}), live=True,
                           clock=clock)
    with log.open("ab") as f:
        f.write(b"".join(new))
    while rt.pipeline.step():
        pass
    assert rt.pipeline.records_emitted > 0 and not (tmp_path / "archive" / ".state" /
                                                     "checkpoint.json").exists()
    runtime_mod.rebuild_pipeline(rt)  # nothing committed: everything read is re-read
    while rt.pipeline.step():
        pass
    clock.now += 60
    rt.pipeline.step()
    assert rt.pipeline.commit()
    got = archive_ids(tmp_path / "archive")
    expected = reference_ids(b"".join(new), tmp_path / "reference")
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    assert requests_total(rt.registry) == len(got)
