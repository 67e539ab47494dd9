"""Cases 20-30: Loki faults, through the real runtime and the strict test
Loki server (tests/loki_server.py). Same invariant (harness.py); where Loki
refuses an entry for good (400: too old, line too long) the record is in the
dead-letter file instead, exactly once, and nowhere twice.

Time is fake: the pusher's backoff sleeps advance the shared clock, so a
refusal of ten minutes or a 429 storm of hours costs microseconds. A
permanent fault (wrong URL/tenant) is left by "restarting with the fixed
configuration" after a retry budget (harness.blocking_budget)."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.loki.entries import build_entry

from .harness import (
    Blocked, HangingServer, LokiServer, Writer, archive_ids, assert_exactly_once, blocking_budget,
    capture_lines, chunks, forget_dedup, loki_ids, reference_ids, sample,
    shift_times, split_at_requests, wait_exit, written_now,
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


def failures(exp, reason: str) -> float:
    return sample(exp.rt.registry, "vllm_audit_loki_push_failures_total", reason=reason)


def produce_all(exp, parts=4):
    w = Writer(exp.log)
    if exp.rt is None:
        exp.start()
    for p in split_at_requests(LINES, *[k / parts for k in range(1, parts)]):
        feed(exp, w, p)
    exp.pump()
    exp.clock.now += 15
    exp.pump()
    assert exp.commit()
    return w


# 20 -------------------------------------------------------------------------
def test_20_connection_refused_for_ten_minutes(make_exporter, loki, ref_dir, clock):
    exp = make_exporter()
    produce_all(exp)
    loki.refuse_connections(600)  # reopened by the clock hook once 600 s have passed
    t0 = clock.now
    exp.push()
    assert clock.now - t0 >= 600
    assert failures(exp, "connection") >= 3
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


@pytest.mark.parametrize("bad", ["dns", "tls", "hang"])
def test_20_unresolvable_tls_error_or_hanging_then_fixed(make_exporter, loki, ref_dir, clock, bad):
    hang = HangingServer() if bad == "hang" else None
    url = {"dns": "http://loki.invalid:3100",
           "tls": f"https://127.0.0.1:{loki.port}",  # TLS to a plain-HTTP port
           "hang": hang.url if hang else None}[bad]
    try:
        exp = make_exporter(url=url)
        produce_all(exp)
        blocking_budget(clock, 3)
        t = time.monotonic()
        with pytest.raises(Blocked):
            exp.push()
        assert time.monotonic() - t < 10  # a hang is cut by the client timeout
        reason = {"dns": "connection", "tls": "tls", "hang": "timeout"}[bad]
        assert failures(exp, reason) >= 3, [(s.labels, s.value) for f in exp.rt.registry.collect()
                                             for s in f.samples if "push_failures" in s.name]
        assert exp.pusher.backlog() > 0 and loki.lines() == []
        exp.url = None  # configuration fixed, restarted
        exp.restart(graceful=True)
        exp.settle()
        assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)
    finally:
        if hang:
            hang.close()


# 21 -------------------------------------------------------------------------
def test_21_429_for_hours_keeps_stream_order(make_exporter, loki, ref_dir, clock):
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    w = Writer(exp.log)
    exp.start()
    t0 = clock.now
    for p in split_at_requests(LINES, 0.25, 0.5, 0.75):
        feed(exp, w, p)
        exp.commit()
        loki.fail_next(429, 40)
        exp.pusher.run_once()
    exp.settle()
    assert clock.now - t0 > 3600  # hours of rate limiting
    assert failures(exp, "rate_limited") == 160
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)
    for values in loki.streams().values():  # never reordered within a stream
        ts = [v[0] for v in values]
        assert ts == sorted(ts)


# 22 -------------------------------------------------------------------------
def test_22_5xx_then_success(make_exporter, loki, ref_dir):
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    produce_all(exp)
    for status in (500, 502, 503, 504):
        loki.fail_next(status, 2)
    exp.push()
    assert failures(exp, "server_error") == 8
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_22_timeout_after_loki_stored_the_batch(make_exporter, loki, ref_dir):
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    produce_all(exp)
    loki.timeout_next(2)  # stored, then no answer before the client's timeout
    exp.push()
    assert failures(exp, "timeout") == 2
    assert loki.received > len(loki.lines())  # the resend happened; dedup absorbed it
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 23 -------------------------------------------------------------------------
def test_23_400_partial_success_dead_letters_exactly_the_refused(make_exporter, loki, ref_dir):
    exp = make_exporter(extra=["--loki-batch-bytes", "8192"])
    produce_all(exp)
    lines = [ln for p in sorted(exp.archive.glob("audit-*.jsonl")) for ln in p.read_text().splitlines()]
    entries = [build_entry(ln, exp.pusher.settings, exp.rt.users.label, exp.pusher._policy) for ln in lines]
    limit = int(statistics.median(e.size for e in entries))
    too_long = {e.request_id for e in entries if e.size > limit}
    assert 0 < len(too_long) < len(entries)
    loki.max_line_size = limit  # Loki's max_line_size: the valid entries are stored, 400 for the rest
    exp.push()
    assert sample(exp.rt.registry, "vllm_audit_loki_dead_letters_total", reason="line_too_long") == len(too_long)
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki, dead_lettered=too_long)


# 24 -------------------------------------------------------------------------
def test_24_401_and_403_are_retried_until_accepted(make_exporter, loki, ref_dir):
    exp = make_exporter()
    produce_all(exp)
    loki.fail_next(401, 3, "no org id")
    loki.fail_next(403, 3, "forbidden")
    exp.push()
    assert failures(exp, "auth") == 6
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_24_missing_tenant_until_the_configuration_is_fixed(make_exporter, ref_dir, clock, tmp_path):
    with LokiServer(clock=clock, tenant="team-a") as srv:
        clock.hooks.append(srv.tick)
        exp = make_exporter(loki=srv)
        produce_all(exp)
        blocking_budget(clock, 5)
        with pytest.raises(Blocked):
            exp.push()
        assert exp.pusher.status.auth_failing and srv.lines() == []
        exp.extra = ["--loki-tenant", "team-a"]
        exp.restart(graceful=True)
        exp.settle()
        assert_exactly_once(exp, clean_ids(ref_dir), loki=srv)
        clock.hooks.remove(srv.tick)


# 25 -------------------------------------------------------------------------
@pytest.mark.parametrize("status", [260, 200, 202])
def test_25_unexpected_2xx_is_not_an_acknowledgement(make_exporter, loki, ref_dir, status):
    exp = make_exporter()
    produce_all(exp)
    loki.fail_next(status, 3)  # not stored by the server
    exp.push()
    assert failures(exp, "unexpected_status") == 3
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 26 -------------------------------------------------------------------------
def test_26_dedup_state_lost_acknowledged_records_are_never_resent(make_exporter, loki, ref_dir):
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    exp.commit()
    exp.push()
    forget_dedup(loki)          # ingester restart / stream idle > chunk_idle_period
    exp.restart(graceful=True)  # and the exporter restarts too
    feed(exp, w, b)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_26_dedup_state_lost_and_a_crash_before_the_checkpoint(make_exporter, loki, ref_dir):
    exp = make_exporter(extra=["--checkpoint-interval", "3600"])  # commits only when the test says
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 4)
    feed(exp, w, parts[0])
    exp.commit()
    feed(exp, w, parts[1])
    exp.rt.archive.flush()
    exp.push()               # Loki acknowledged records no checkpoint covers
    exp.crash()
    forget_dedup(loki)
    exp.start()
    for p in parts[2:]:
        feed(exp, w, p)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_26_timeout_after_store_and_dedup_lost_is_the_documented_duplicate(make_exporter, loki, ref_dir):
    """Documented at-least-once (loki/pusher.py): a batch Loki stored but
    never acknowledged is resent; if Loki lost its dedup state in between,
    exactly that batch is stored twice. Nothing else is."""
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    produce_all(exp)
    first = []
    loki.on_stored = lambda n: (first.extend(loki_ids(loki)), forget_dedup(loki)) if n == 1 else None
    loki.timeout_next(1)
    exp.push()
    ids = loki_ids(loki)
    twice = {i for i in ids if ids.count(i) == 2}
    assert twice == set(first) and max(ids.count(i) for i in ids) == 2
    assert sorted(set(ids)) == sorted(clean_ids(ref_dir))


# 27 -------------------------------------------------------------------------
def test_27_backlog_older_than_a_week_is_dead_lettered_not_lost(make_exporter, loki, ref_dir, clock):
    """Loki refuses entries older than reject_old_samples_max_age (1 week):
    those records stay in the archive and go to the dead-letter file
    (reason too_old); the newer ones are delivered, each exactly once."""
    exp = make_exporter(extra=["--loki-batch-bytes", "4096"])
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    exp.commit()
    loki.refuse_connections(8 * 86400)
    blocking_budget(clock, 3)
    with pytest.raises(Blocked):
        exp.push()
    b = shift_times(b, 8 * 86400)  # vLLM went on logging a week later
    feed(exp, w, b)
    exp.settle()  # Loki is back: the clock passed the outage
    old = set(reference_ids(b"".join(a), ref_dir))
    expected = reference_ids(b"".join(a + b), ref_dir)
    assert sorted(expected) == sorted(clean_ids(ref_dir))
    assert sample(exp.rt.registry, "vllm_audit_loki_dead_letters_total", reason="too_old") == len(old)
    assert_exactly_once(exp, expected, loki=loki, dead_lettered=old)


# 28 -------------------------------------------------------------------------
_HEX16 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])")


def _copy(k: int) -> list[bytes]:
    """The capture again with other request ids, 60 s later per copy."""
    out = []
    for ln in shift_times(LINES, 60 * k):
        if b"equest" in ln or b"response" in ln:
            ln = _HEX16.sub(lambda m: b"%02x" % k + m.group(0)[2:], ln)
            ln = ln.replace(b"fixture-req-", b"fixture-req-%02d" % k)
        out.append(ln)
    return out


def test_28_sustained_backpressure_memory_bounded_rotation_drained(make_exporter, loki, ref_dir):
    batch = 4096
    exp = make_exporter(extra=["--loki-batch-bytes", str(batch)])
    w = Writer(exp.log)
    exp.start()
    copies = [_copy(k) for k in range(1, 9)]
    backlog = []
    for k, lines in enumerate(copies):
        if k == 4:
            os.replace(exp.log, f"{exp.log}.1")  # rotated while Loki lags
            w.reopen()
        for p in split_at_requests(lines, 0.5):
            feed(exp, w, p)
            exp.commit()
            loki.fail_next(429, 2)   # Loki is slower than the log: one batch per round
            exp.pusher.run_once()
            assert exp.pusher._pending_bytes <= batch  # read-ahead bounded by one batch
            backlog.append(sample(exp.rt.registry, "vllm_audit_loki_backlog_records"))
    assert backlog[-1] > backlog[1] > 0 and max(backlog) == backlog[-1]  # the archive is the buffer
    exp.settle()
    assert sample(exp.rt.registry, "vllm_audit_loki_backlog_records") == 0
    expected = reference_ids(b"".join(b"".join(c) for c in copies), ref_dir)
    assert len(expected) > 7 * 22  # ids rewritten per copy (a few collide: fewer than 8 x 22)
    assert_exactly_once(exp, expected, loki=loki)


# 29 -------------------------------------------------------------------------
def _cmd(log, archive, loki_url):
    return [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start",
            "--archive-dir", str(archive), "--model", "tiny", "--web.listen-address", "127.0.0.1:0",
            # The pusher reads only checkpointed archive bytes, so pushes follow commits.
            "--merge-grace", "0", "--request-timeout", "0.5", "--checkpoint-interval", "0.2",
            "--loki-url", loki_url, "--loki-batch-wait", "0.05", "--loki-batch-bytes", "4096"]


def test_29_sigterm_mid_batch_drains_within_a_deadline(tmp_path, ref_dir):
    """SIGTERM while a push is in flight (Loki stored it and hangs): the
    process exits 0 within the deadline, after its final checkpoint; the
    unacknowledged batch is resent on restart and deduplicated."""
    log, archive = tmp_path / "vllm.log", tmp_path / "archive"
    log.write_bytes(b"".join(written_now(LINES)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child, signalled = [], []
    with LokiServer() as srv:
        def term_mid_batch(n):
            # The push that completes the set: by then the pipeline has read
            # the whole log, however this machine batched the records. It is
            # stored and never answered; SIGTERM lands while it is in flight.
            if child and not signalled and len(set(srv.lines())) >= 22:
                srv.timeout_next(1)
                signalled.append(time.monotonic())
                child[0].send_signal(signal.SIGTERM)
        srv.on_stored = term_mid_batch
        proc = subprocess.Popen(_cmd(log, archive, srv.url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.append(proc)
        rc = wait_exit(proc, 120, lambda: "no SIGTERM was sent: the 22 records never all reached Loki"
                       if not signalled else "exporter run did not exit after SIGTERM")
        took = time.monotonic() - signalled[0]
        assert rc == 0, proc.stderr.read().decode()[-2000:]
        # The pusher gives an in-flight push 2 s, then the final commit: far
        # below the 10 s client timeout of the hanging push.
        assert took < 15, f"shutdown took {took:.1f}s"
        ckpt = json.loads((archive / ".state" / "checkpoint.json").read_text())["state"]
        assert ckpt["sources"][str(log)]["offset"] == log.stat().st_size  # final commit
        srv.on_stored = None
        before = len(srv.requests)
        proc = subprocess.Popen(_cmd(log, archive, srv.url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(srv.requests) <= before:
                time.sleep(0.05)  # the unacknowledged batch is resent
            assert len(srv.requests) > before, "the unacknowledged batch was never resent after the restart"
            time.sleep(0.3)  # anything extra would show now
        finally:
            proc.send_signal(signal.SIGTERM)
            assert wait_exit(proc, 60, "exporter run did not exit after SIGTERM") == 0
        got = archive_ids(archive)
        assert sorted(got) == sorted(clean_ids(ref_dir)) and len(got) == len(set(got))
        assert sorted(loki_ids(srv)) == sorted(got)


# 30 -------------------------------------------------------------------------
def _blocked_exporter(make_exporter, hang, batch_wait):
    exp = make_exporter(url=hang.url, loki_overrides={"timeout_seconds": 3.0, "batch_wait": batch_wait})
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    exp.commit()
    stop = threading.Event()
    t = threading.Thread(target=exp.pusher.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not hang.conns and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hang.conns, "the pusher is blocked inside a push"
    return exp, w, b, stop, t


def _gauge(text, name):
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_30_metrics_responsive_while_blocked_on_loki(make_exporter, loki, ref_dir):
    from fastapi.testclient import TestClient

    from exporter.httpapp import create_app

    hang = HangingServer()
    stop = t = None
    try:
        exp, w, b, stop, t = _blocked_exporter(make_exporter, hang, batch_wait=0.0)
        feed(exp, w, b)  # vLLM goes on while the pusher hangs
        exp.clock.now += 15
        exp.pump()
        exp.commit()
        client = TestClient(create_app(registry=exp.rt.registry, health=exp.rt.health))
        for _ in range(3):
            t0 = time.monotonic()
            r = client.get("/metrics")
            assert time.monotonic() - t0 < 1.0 and r.status_code == 200
        text = r.text
        assert _gauge(text, "vllm_audit_loki_last_success_timestamp_seconds") == 0
        assert sum(float(v) for v in re.findall(r"^vllm_audit_requests_total\{.*\} (\S+)$", text, re.M)) \
            == len(archive_ids(exp.archive))
        deadline = time.monotonic() + 6  # the hung push times out (3 s) and is counted
        while time.monotonic() < deadline and not failures(exp, "timeout"):
            time.sleep(0.05)
        text = client.get("/metrics").text
        assert re.search(r'^vllm_audit_loki_push_failures_total\{reason="timeout"\} [1-9]', text, re.M)
        stop.set()
        t.join(10)
        assert not t.is_alive()
        exp.url = None
        exp.restart(graceful=True)
        exp.settle()
        assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)
    finally:
        if stop is not None:
            stop.set()
            t.join(10)
        hang.close()


def test_30_backlog_gauge_shows_the_stall(make_exporter, loki, ref_dir):
    hang = HangingServer()
    stop = t = None
    try:
        exp, w, b, stop, t = _blocked_exporter(make_exporter, hang, batch_wait=0.0)
        feed(exp, w, b)
        exp.clock.now += 15
        exp.pump()
        exp.commit()
        deadline = time.monotonic() + 8  # two hung attempts
        while time.monotonic() < deadline and failures(exp, "timeout") < 2:
            time.sleep(0.05)
        assert failures(exp, "timeout") >= 2
        assert sample(exp.rt.registry, "vllm_audit_loki_backlog_records") == len(archive_ids(exp.archive))
    finally:
        if stop is not None:
            stop.set()
            t.join(10)
        hang.close()
