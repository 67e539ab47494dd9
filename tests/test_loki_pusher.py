"""End to end against the strict fake Loki: every fault ends with every
archive record stored exactly once (after dedup), backlog 0, memory bounded."""

import json
import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry

from exporter.loki import LokiPusher, LokiSettings
from exporter.loki import pusher as pusher_mod
from exporter.record import format_ts

try:
    from tests.loki_server import FakeClock, LokiServer, archive_line, write_archive
except ImportError:
    from loki_server import FakeClock, LokiServer, archive_line, write_archive

START = 1_795_000_000.0  # 2026-11-18
DAY = "2026-11-18"


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def loki(clock):
    with LokiServer(clock=clock) as srv:
        clock.hooks.append(srv.tick)
        yield srv


def make_pusher(tmp_path, loki, clock, registry=None, http=None, **kw):
    cfg = {"url": loki.url, "batch_bytes": 4096, "timeout_seconds": 2.0, **kw}
    return LokiPusher(LokiSettings(**cfg), tmp_path, registry or CollectorRegistry(),
                      label_user=lambda u: u, client=http, clock=clock, sleep=clock.sleep,
                      rng=lambda: 0.5)


def records(n, start=0, users=("alice", "bob"), **fields):
    return [archive_line(i, format_ts(START - 60 + i * 0.0004), user=users[i % len(users)], **fields)
            for i in range(start, start + n)]


def drain(p, limit=500):
    total = 0
    for _ in range(limit):
        if p.backlog() == 0:
            return total
        total += p.run_once()
    raise AssertionError("pusher did not drain")


def seqs(loki):
    return sorted(json.loads(l)["request_id"] for l in loki.lines())


def expected(n, start=0):
    return sorted(f"chatcmpl-{i}" for i in range(start, start + n))


def sample(reg, name, **labels):
    return reg.get_sample_value(name, labels) or 0.0


def test_delivers_all_in_order_gzip_and_persists_position(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(30))
    write_archive(tmp_path, "2026-11-19", records(10, start=30))
    reg = CollectorRegistry()
    p = make_pusher(tmp_path, loki, clock, reg)
    assert p.backlog() == 40 and sample(reg, "vllm_audit_loki_backlog_records") == 40
    assert drain(p) == 40
    assert seqs(loki) == expected(40) and loki.received == 40
    assert len(loki.requests) > 5 and all(r.gzip and r.status == 204 for r in loki.requests)
    # Per stream, values arrive in archive order across all batches.
    for stream in loki.streams().values():
        order = [int(json.loads(line)["request_id"].split("-")[1]) for _, line, _ in stream]
        assert order == sorted(order)
    state = json.loads((tmp_path / ".state" / "loki.json").read_text())
    assert state == {"file": "audit-2026-11-19.jsonl",
                     "offset": (tmp_path / "audit-2026-11-19.jsonl").stat().st_size}
    assert sample(reg, "vllm_audit_loki_entries_pushed_total") == 40
    assert sample(reg, "vllm_audit_loki_backlog_records") == 0
    assert sample(reg, "vllm_audit_loki_last_success_timestamp_seconds") == START
    assert sample(reg, "vllm_audit_loki_push_failures_total", reason="connection") == 0
    # A restarted pusher has nothing left to send.
    assert make_pusher(tmp_path, loki, clock).run_once() == 0


def test_batch_waits_for_age_or_size(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(2))
    p = make_pusher(tmp_path, loki, clock, batch_wait=1.0)
    assert p._step(flush=False) == 0 and loki.requests == []
    clock.now += 1.0
    assert p._step(flush=False) == 2


def test_auth_headers_and_tenant(tmp_path, clock):
    with LokiServer(clock=clock, tenant="team-a", authorization="Basic dTpwdw==") as srv:
        write_archive(tmp_path, DAY, records(3))
        p = make_pusher(tmp_path, srv, clock, tenant="team-a", username="u", password="pw")
        assert drain(p) == 3
        h = srv.requests[0].headers
        assert h["x-scope-orgid"] == "team-a" and h["content-encoding"] == "gzip"
        assert "pw" not in repr(p.settings) and "Basic" not in repr(p._client)
    with LokiServer(clock=clock, authorization="Bearer tok") as srv:
        p = LokiPusher(LokiSettings(url=srv.url, bearer_token="tok"), tmp_path / "b",
                       CollectorRegistry(), label_user=lambda u: u, clock=clock, sleep=clock.sleep)
        write_archive(tmp_path / "b", DAY, records(2))
        assert drain(p) == 2


def test_connection_refused_for_minutes_then_catch_up(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(10))
    reg = CollectorRegistry()
    p = make_pusher(tmp_path, loki, clock, reg)
    loki.refuse_connections(300)
    # The archive keeps growing during the outage; memory stays one batch.
    added = []

    def grow():
        if len(added) < 20:
            write_archive(tmp_path, DAY, records(1, start=10 + len(added)))
            added.append(1)

    clock.hooks.append(grow)
    drain(p)
    n = 10 + len(added)
    assert n == 30
    # Bounded memory: one batch in flight, never the whole backlog at once.
    assert all(len(json.dumps(r.body)) <= 2 * 4096 for r in loki.requests if r.body)
    assert seqs(loki) == expected(n) and p.backlog() == 0
    assert sample(reg, "vllm_audit_loki_push_failures_total", reason="connection") >= 5
    assert sample(reg, "vllm_audit_loki_retries_total") >= 5
    assert max(clock.sleeps) <= 30 * 0.5  # cap * rng
    assert clock.now >= START + 300
    assert p.status.report()["ok"] and p.status.last_error.startswith("connection")


@pytest.mark.parametrize("status,reason", [(429, "rate_limited"), (500, "server_error"),
                                           (503, "server_error"), (260, "unexpected_status"),
                                           (200, "unexpected_status"), (404, "client_error")])
def test_retryable_statuses_never_drop(tmp_path, loki, clock, status, reason):
    write_archive(tmp_path, DAY, records(8))
    reg = CollectorRegistry()
    p = make_pusher(tmp_path, loki, clock, reg)
    loki.fail_next(status, times=4)
    drain(p)
    assert seqs(loki) == expected(8) and p.backlog() == 0
    assert sample(reg, "vllm_audit_loki_push_failures_total", reason=reason) == 4
    assert clock.sleeps[:4] == [0.25, 0.5, 1.0, 2.0]  # exponential, rng=0.5


def test_auth_failure_is_loud_and_retried(tmp_path, loki, clock, caplog):
    write_archive(tmp_path, DAY, records(4))
    reg = CollectorRegistry()
    p = make_pusher(tmp_path, loki, clock, reg)
    loki.fail_next(401, times=3, body="no org id")
    seen = []
    clock.hooks.append(lambda: seen.append(p.status.report()))
    drain(p)
    assert seen[0]["auth_failing"] and not seen[0]["ok"] and "no org id" in seen[0]["last_error"]
    assert sample(reg, "vllm_audit_loki_push_failures_total", reason="auth") == 3
    assert any(r.levelname == "ERROR" and "auth" in r.getMessage() for r in caplog.records)
    assert seqs(loki) == expected(4) and not p.status.auth_failing


def test_timeout_after_store_resend_is_deduplicated(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(6))
    p = make_pusher(tmp_path, loki, clock, timeout_seconds=0.2)
    loki.timeout_next(1)
    drain(p)
    assert seqs(loki) == expected(6)
    assert loki.received > 6  # really resent, absorbed by dedup


def test_crash_between_ack_and_persist_resends_once(tmp_path, loki, clock, monkeypatch):
    write_archive(tmp_path, DAY, records(12))
    p = make_pusher(tmp_path, loki, clock)
    real = pusher_mod.save_position
    calls = []

    def crash_on_second(path, pos):
        calls.append(pos)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill after Loki's 204")
        real(path, pos)

    monkeypatch.setattr(pusher_mod, "save_position", crash_on_second)
    p.run_once()
    with pytest.raises(KeyboardInterrupt):
        p.run_once()
    monkeypatch.setattr(pusher_mod, "save_position", real)
    fresh = make_pusher(tmp_path, loki, clock)
    drain(fresh)
    assert seqs(loki) == expected(12) and loki.received > 12 and fresh.backlog() == 0


def test_archive_cut_back_below_position_is_clamped(tmp_path, loki, clock):
    lines = records(6)
    write_archive(tmp_path, DAY, lines)
    drain(make_pusher(tmp_path, loki, clock))
    # Pipeline recovery cut the last 2 records, then re-derives them identically.
    write_archive(tmp_path, DAY, lines[:4], mode="w")
    p = make_pusher(tmp_path, loki, clock)
    assert "clamped" in p.status.note and p.backlog() == 0
    write_archive(tmp_path, DAY, lines[4:])
    drain(p)
    assert seqs(loki) == expected(6) and loki.received == 8


def test_partial_400_bisects_and_dead_letters_only_bad_entries(tmp_path, clock):
    with LokiServer(clock=clock, max_line_size=6000) as srv:
        lines = records(16)
        lines[5] = archive_line(5, format_ts(START), prompt="p" * 8000)  # Loki limit < ours
        lines[9] = archive_line(9, format_ts(START - 8 * 86400))  # too old
        lines[12] = archive_line(12, format_ts(START + 3600))  # too far in the future
        write_archive(tmp_path, DAY, lines)
        reg = CollectorRegistry()
        p = make_pusher(tmp_path, srv, clock, reg, batch_bytes=1 << 20)
        drain(p)
        assert seqs(srv) == sorted(set(expected(16)) - {"chatcmpl-5", "chatcmpl-9", "chatcmpl-12"})
        dead = [json.loads(l) for f in (tmp_path / "dead-letter").iterdir() for l in f.read_text().splitlines()]
        assert {d["request_id"]: d["reason"] for d in dead} == {
            "chatcmpl-5": "line_too_long", "chatcmpl-9": "too_old", "chatcmpl-12": "too_far_in_future"}
        assert all(d["line"] and d["timestamp_ns"].isdigit() for d in dead)
        assert sample(reg, "vllm_audit_loki_dead_letters_total", reason="too_old") == 1
        assert sample(reg, "vllm_audit_loki_push_failures_total", reason="bad_request") >= 3
        assert p.backlog() == 0


def test_too_old_watermark_skips_bisecting_older_entries(tmp_path, loki, clock):
    old = [archive_line(i, format_ts(START - 9 * 86400 + i)) for i in range(8)]
    write_archive(tmp_path, DAY, old[:1])
    p = make_pusher(tmp_path, loki, clock)
    drain(p)
    write_archive(tmp_path, DAY, [archive_line(20, format_ts(START - 10 * 86400))])
    before = len(loki.requests)
    drain(p)
    assert len(loki.requests) == before  # dead-lettered locally, not re-bisected
    assert loki.lines() == []


def test_local_rejects_invalid_lines_and_truncates_long_ones(tmp_path, loki, clock):
    big = archive_line(1, format_ts(START), prompt="é" * 200_000, output="o" * 100_000)
    write_archive(tmp_path, DAY, [records(1)[0], "{torn json\n", big])
    reg = CollectorRegistry()
    p = make_pusher(tmp_path, loki, clock, reg)
    drain(p)
    stored = {json.loads(l)["request_id"]: json.loads(l) for l in loki.lines()}
    assert set(stored) == {"chatcmpl-0", "chatcmpl-1"}
    assert "loki_truncated" in stored["chatcmpl-1"]["flags"]
    assert max(len(l.encode()) for l in loki.lines()) <= p.settings.max_line_bytes
    assert sample(reg, "vllm_audit_loki_dead_letters_total", reason="invalid_record") == 1
    dead = (tmp_path / "dead-letter").iterdir().__next__().read_text()
    assert "{torn json" in dead and (tmp_path / "dead-letter").stat().st_mode & 0o777


def test_structured_metadata_and_user_label_bound(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(4, users=("alice", "bob", "carol", "dave")))
    p = LokiPusher(LokiSettings(url=loki.url, structured_metadata=True), tmp_path, CollectorRegistry(),
                   label_user=lambda u: u if u == "alice" else "__other__", clock=clock, sleep=clock.sleep)
    drain(p)
    ents = loki.entries()
    assert {e[0]["user"] for e in ents} == {"alice", "__other__"}
    assert {dict(e[3])["user"] for e in ents} == {"alice", "bob", "carol", "dave"}
    assert all(dict(e[3])["request_id"].startswith("chatcmpl-") for e in ents)
    assert len({e[1] for e in ents}) == 4  # distinct ns timestamps in one ms


def test_run_thread_stops_promptly_even_while_loki_is_down(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(5))
    settings = LokiSettings(url=loki.url, batch_wait=0.0, poll_interval_seconds=0.01,
                            backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
    p = LokiPusher(settings, tmp_path, CollectorRegistry(), label_user=lambda u: u, clock=clock)
    stop = threading.Event()
    t = threading.Thread(target=p.run, args=(stop,))
    t.start()
    for _ in range(400):
        if len(loki.lines()) == 5:
            break
        stop.wait(0.01)
    assert len(loki.lines()) == 5
    loki.refuse_connections(10**6)
    write_archive(tmp_path, DAY, records(2, start=5))
    stop.wait(0.1)
    stop.set()
    t.join(5)
    assert not t.is_alive() and p.backlog() == 2  # nothing acked that Loki did not take
    p.close()


def test_injected_client_is_used(tmp_path, loki, clock):
    write_archive(tmp_path, DAY, records(2))
    with httpx.Client() as http:
        p = make_pusher(tmp_path, loki, clock, http=http)
        drain(p)
        p.close()
        assert not http.is_closed  # not ours to close
    assert seqs(loki) == expected(2)
