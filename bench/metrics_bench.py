"""Cost of ``RequestMetrics.observe`` per record, against prometheus_client.

Run: ``.venv/bin/python bench/metrics_bench.py [N]`` (default 200000 records).

Three timings over the same pre-built records, in one process:

- ``observe``: our plain-Python store, one call per record (updates up to ~10
  series and 4 histograms);
- ``baseline_1``: one ``Counter.labels(...).inc()`` with the same 5 labels as
  ``vllm_audit_requests_total`` (the floor the brief asks us to compare to);
- ``baseline_full``: the same metric updates as ``observe`` done with
  prometheus_client Counters/Gauges/Histograms (what a direct-instrumentation
  implementation would cost).

Then, on the filled store (50 users x 2 models x 2 endpoints x ...):
``snapshot_ms`` (``snapshot()`` + ``json.dumps``, paid per checkpoint) and
``exposition_ms`` (``generate_latest``, paid per Prometheus scrape).

Prints one JSON line with microseconds per record and the ratios.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: E402

from exporter.labels import UserLabels  # noqa: E402
from exporter.metrics import LATENCY_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS, RequestMetrics  # noqa: E402


def make_records(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    users = [f"user{i}" for i in range(50)] + [None]
    out = []
    for _ in range(n):
        empty = rnd.random() < 0.02
        out.append({
            "model": rnd.choice(("tiny", "llama-3-8b")), "user": rnd.choice(users),
            "endpoint": rnd.choice(("chat", "chat", "completion")),
            "status": rnd.choice(("completed",) * 18 + ("aborted", "rejected")),
            "finish_reason": rnd.choice(("stop", "length")),
            "prompt_tokens": rnd.randint(1, 4000), "completion_tokens": rnd.randint(0, 500),
            "latency_seconds": rnd.random() * 20, "ttft_seconds": rnd.random() if rnd.random() < 0.5 else None,
            "empty_response": empty, "flags": ["oversized_input"] if rnd.random() < 0.05 else [],
        })
    return out


def time_per_record(fn, records: list[dict]) -> float:
    start = time.perf_counter()
    for rec in records:
        fn(rec)
    return (time.perf_counter() - start) / len(records) * 1e6


def baseline_full(registry: CollectorRegistry):
    req = Counter("b_requests", "", ["model", "user", "endpoint", "status", "finish_reason"], registry=registry)
    pt = Counter("b_prompt_tokens", "", ["model", "user"], registry=registry)
    ct = Counter("b_completion_tokens", "", ["model", "user"], registry=registry)
    dur_u = Counter("b_user_duration_seconds", "", ["model", "user"], registry=registry)
    empty = Counter("b_empty", "", ["model", "user"], registry=registry)
    over = Counter("b_oversized", "", ["model", "user", "status"], registry=registry)
    flags = Counter("b_flags", "", ["model", "flag"], registry=registry)
    consec = Gauge("b_consecutive", "", ["model"], registry=registry)
    hp = Histogram("b_pt", "", ["model"], buckets=TOKEN_BUCKETS, registry=registry)
    hc = Histogram("b_ct", "", ["model"], buckets=TOKEN_BUCKETS, registry=registry)
    hd = Histogram("b_dur", "", ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
    ht = Histogram("b_ttft", "", ["model"], buckets=TTFT_BUCKETS, registry=registry)

    def observe(r: dict) -> None:
        m, u, e, s = r["model"] or "unknown", r["user"] or "unknown", r["endpoint"], r["status"]
        req.labels(m, u, e, s, r["finish_reason"]).inc()
        if s != "rejected":
            pt.labels(m, u).inc(r["prompt_tokens"])
            hp.labels(m).observe(r["prompt_tokens"])
            ct.labels(m, u).inc(r["completion_tokens"])
            hc.labels(m).observe(r["completion_tokens"])
        if r["prompt_tokens"] > 2048:
            over.labels(m, u, "rejected" if s == "rejected" else "accepted").inc()
        dur_u.labels(m, u).inc(r["latency_seconds"])
        hd.labels(m, e).observe(r["latency_seconds"])
        if r["ttft_seconds"] is not None:
            ht.labels(m).observe(r["ttft_seconds"])
        if r["empty_response"]:
            empty.labels(m, u).inc()
            consec.labels(m).inc()
        elif s == "completed":
            consec.labels(m).set(0)
        for f in r["flags"]:
            flags.labels(m, f).inc()
    return observe


def main(n: int) -> dict:
    records = make_records(n)
    store_registry = CollectorRegistry()
    store = RequestMetrics(store_registry, users=UserLabels())
    one = Counter("b_one", "", ["model", "user", "endpoint", "status", "finish_reason"],
                  registry=CollectorRegistry())

    def baseline_1(r: dict) -> None:
        one.labels(r["model"], r["user"] or "unknown", r["endpoint"], r["status"], r["finish_reason"]).inc()

    full = baseline_full(CollectorRegistry())
    # Warm up every path once so first-series creation is not timed.
    for fn in (store.observe, baseline_1, full):
        time_per_record(fn, records[:2000])
    result = {"records": n, "python": sys.version.split()[0]}
    result["observe_us"] = round(time_per_record(store.observe, records), 3)
    result["baseline_1_us"] = round(time_per_record(baseline_1, records), 3)
    result["baseline_full_us"] = round(time_per_record(full, records), 3)
    result["ratio_vs_baseline_1"] = round(result["observe_us"] / result["baseline_1_us"], 2)
    result["ratio_vs_baseline_full"] = round(result["observe_us"] / result["baseline_full_us"], 2)
    result["series"] = sum(len(v["series"]) for kind in ("counters", "gauges", "histograms")
                           for v in store.snapshot()[kind].values())
    result["snapshot_ms"] = round(time_once(lambda: json.dumps(store.snapshot())) * 1e3, 2)
    result["exposition_ms"] = round(time_once(lambda: generate_latest(store_registry)) * 1e3, 2)
    return result


def time_once(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)))
