"""FastAPI app: landing page, /metrics negotiation, /health rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.health import Health
from exporter.httpapp import create_app
from exporter.labels import UserLabels
from exporter.metrics import RequestMetrics
from exporter.scrape import ScrapeStatus


class FakeClock:
    def __init__(self):
        self.now = 1_790_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup():
    registry = CollectorRegistry()
    store = RequestMetrics(registry, users=UserLabels())
    store.observe({"model": "tiny", "user": "alice", "endpoint": "chat", "status": "completed",
                   "finish_reason": "stop", "prompt_tokens": 4})
    clock = FakeClock()
    health = Health(clock=clock)
    client = TestClient(create_app(registry=registry, health=health, title="audit <test>"))
    return SimpleNamespace(client=client, health=health, clock=clock)


def test_landing_page_links(setup):
    resp = setup.client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert 'href="metrics"' in resp.text and 'href="health"' in resp.text
    assert "audit &lt;test&gt;" in resp.text  # title is escaped


def test_metrics_text_format(setup):
    resp = setup.client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert ('vllm_audit_prompt_tokens_total{model="tiny",user="alice"} 4.0' in resp.text)


def test_metrics_openmetrics_negotiation(setup):
    resp = setup.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    families = {f.name: f for f in om_parse(resp.text)}
    assert families["vllm_audit_prompt_tokens"].samples[0].value == 4


def test_no_docs_routes(setup):
    assert setup.client.get("/docs").status_code == 404
    assert setup.client.get("/openapi.json").status_code == 404


def test_health_ok_when_nothing_configured(setup):
    resp = setup.client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["vllm"] is None and body["loki"] is None
    assert resp.headers["cache-control"] == "no-store"


def test_health_sources(setup):
    h = setup.health
    src = h.add_source("vllm", "/var/log/vllm.log")
    opt = h.add_source("middleware", "/var/log/mw.jsonl", required=False)
    src.error = "FileNotFoundError: /var/log/vllm.log"
    resp = setup.client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["problems"] == ["source vllm: not up (FileNotFoundError: /var/log/vllm.log)"]
    src.up, src.error, src.at_eof, src.lag_bytes, src.last_line_unix = True, None, True, 0, 1_789_999_999.5
    resp = setup.client.get("/health")
    assert resp.status_code == 200  # an optional source that is down does not count
    body = resp.json()
    assert body["sources"]["vllm"] == {
        "name": "vllm", "path": "/var/log/vllm.log", "required": True, "up": True, "at_eof": True,
        "position": 0, "size": None, "lag_bytes": 0, "last_line_unix": 1_789_999_999.5, "error": None,
        "time_offset_seconds": 0, "time_offset_note": None, "vllm": None, "waiting": False}
    assert body["sources"]["middleware"]["up"] is opt.up is False


def test_health_checkpoint_failures(setup):
    h = setup.health
    h.checkpoint_ok(1_790_000_000.0)
    h.checkpoint_failed("OSError: [Errno 28] No space left on device")
    resp = setup.client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["checkpoint"] == {"last_success_unix": 1_790_000_000.0,
                                         "last_error": "OSError: [Errno 28] No space left on device",
                                         "consecutive_failures": 1}
    h.checkpoint_ok(1_790_000_005.0)
    assert setup.client.get("/health").status_code == 200


def test_health_vllm_scrape(setup):
    h = setup.health
    h.scraper = SimpleNamespace(last_scrape=ScrapeStatus())
    resp = setup.client.get("/health")
    assert resp.status_code == 200 and resp.json()["vllm"]["up"] is None  # not scraped yet
    # vLLM still loading its model: never answered since the start, not the exporter's fault
    h.scraper.last_scrape = ScrapeStatus(up=False, attempts=1, consecutive_failures=1,
                                         error="ConnectError: refused")
    resp = setup.client.get("/health")
    assert resp.status_code == 200 and resp.json()["vllm"]["error"] == "ConnectError: refused"
    h.scraper.last_scrape = ScrapeStatus(up=True, attempts=2, last_success_unix=1_790_000_001.0,
                                         requests_finished=12.0)
    assert setup.client.get("/health").json()["vllm"]["requests_finished"] == 12.0
    # answered once, fails now: unhealthy
    h.scraper.last_scrape = ScrapeStatus(up=False, attempts=3, consecutive_failures=1,
                                         last_success_unix=1_790_000_001.0, error="ConnectError: refused")
    resp = setup.client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["problems"] == ["vllm: scrape failing (ConnectError: refused)"]


def test_health_reports_loki_and_uptime_without_judging_loki(setup):
    setup.health.loki = {"last_error": "HTTP 502", "backlog_records": 40}
    setup.clock.now += 12.5
    resp = setup.client.get("/health")
    assert resp.status_code == 200
    assert resp.json()["loki"] == {"last_error": "HTTP 502", "backlog_records": 40}
    assert resp.json()["uptime_seconds"] == 12.5


def test_health_threads_and_archive(setup):
    h = setup.health
    t = h.add_thread("pipeline")
    alive = [True]
    t.alive = lambda: alive[0]
    t.state = "running"
    assert setup.client.get("/health").status_code == 200
    t.state, t.consecutive_failures, t.last_error = "restarting", 1, "RuntimeError: boom"
    resp = setup.client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["problems"] == [
        "thread pipeline: failed 1 time(s) in a row (RuntimeError: boom); restarted, no progress yet"]
    assert resp.json()["threads"]["pipeline"]["state"] == "restarting"
    t.state, t.consecutive_failures = "running", 0
    alive[0] = False
    assert setup.client.get("/health").json()["problems"] == [
        "thread pipeline: not running (ended unexpectedly)"]
    t.state = "stopped"  # asked to stop: not a problem
    assert setup.client.get("/health").status_code == 200
    h.archive.write_error, h.archive.pending_records, h.archive.ingestion_paused = \
        "ENOSPC: No space left on device", 300, True
    resp = setup.client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["problems"] == [
        "archive: cannot be written (ENOSPC: No space left on device); 300 records wait in memory; "
        "ingestion paused until a write succeeds (it resumes by itself; nothing is lost)"]
    assert resp.json()["archive"]["ingestion_paused"] is True


def test_every_tailer_counter_is_exported_and_health_says_why_a_source_is_down(tmp_path):
    """7 of 12 tailer counters were counted and dropped, and /health never
    said why a source was down."""
    from prometheus_client import generate_latest

    from exporter.cli import make_parser
    from exporter.runtime import build
    from exporter.settings import build as build_settings
    log = tmp_path / "vllm.log"
    log.write_bytes(b"INFO 11-22 10:00:00 [x.py:1] bad \xff byte\nno newline at the end")
    missing = tmp_path / "not-yet.log"
    argv = ["run", "--log", str(log), "--log", str(missing), "--from-start", "--archive-dir",
            str(tmp_path / "a"), "--web.listen-address", "127.0.0.1:0"]
    rt = build(build_settings("run", make_parser().parse_args(argv), {}), live=True)
    rt.pipeline.step()
    text = generate_latest(rt.registry).decode()
    for name in ("open_errors", "lost_files", "position_resets", "invalid_utf8_lines", "nul_byte_lines",
                 "long_lines", "partial_lines"):
        assert f"vllm_audit_tail_{name}_total" in text, name
    assert f'vllm_audit_tail_invalid_utf8_lines_total{{source="{log}"}} 1.0' in text
    healthy, report = rt.health.report()
    # never existed since the start: waiting, not a problem (fresh idle stack)
    assert healthy, report["problems"]
    down = next(s for s in report["sources"].values() if s["path"] == str(missing))
    assert down["up"] is False and down["waiting"] is True and "no such file" in down["error"]
    missing.write_text("")
    rt.pipeline.step()
    missing.unlink()
    rt.pipeline.step()
    healthy, report = rt.health.report()
    assert not healthy and any("no such file" in p for p in report["problems"])
    up = next(s for s in report["sources"].values() if s["path"] == str(log))
    assert up["error"] is None and up["last_line_unix"] is not None
