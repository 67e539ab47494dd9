"""Checkpoint cost per commit with N requests in flight: the full snapshot
(format 2, what every commit wrote before the journal) against the journal
(format 3), in one run, interleaved commit by commit.

Usage::

    .venv/bin/python bench/checkpoint_cost.py                       # 1k, 10k, 100k (published)
    .venv/bin/python bench/checkpoint_cost.py --inflight 1000 --commits 20   # smoke
    .venv/bin/python bench/checkpoint_cost.py --rss 100000          # peak RSS, two children

The in-flight entries are real ones: the vLLM 0.32 DEBUG capture is parsed
and fed to a Correlator (no request ends), and its entries are copied under
new ids up to N. Between two commits ``--changes`` entries change, as a
stream's deltas do (half updated in place, a quarter added, a quarter
recorded and gone). Each commit is ``checkpoint.write_atomic`` of a
pipeline-shaped state into its own directory: once with a plain dict (the
format-2 snapshot), once with the correlator's InFlight store (the journal,
after its first base). Figures are CPU seconds of this thread
(``time.thread_time``; fsync's syscall work counts, waiting for the disk
does not), the mean over ``--commits`` commits, and the ratio
``snapshot / journal`` at each N; ``growth`` is the 100k figure over the
1k one for each (the contract: the journal's stays near 1). A compaction
(a new base, every time the journal reaches its base's size) is amortised
in ``journal_amortised_ms``: its cost times the commits' share of a base.

``--rss N`` runs two children, one per format, each building N in-flight
entries and committing ``--commits`` times; their peak RSS (``ru_maxrss``,
KiB on Linux, read by each child itself) is reported in MiB.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from exporter import checkpoint as ckpt  # noqa: E402
from exporter.correlate import Correlator  # noqa: E402
from exporter.parse import parse_line  # noqa: E402
from replay_throughput import machine  # noqa: E402

CAPTURE = ROOT / "tests" / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def templates() -> list[dict]:
    """In-flight entries of the real capture (nothing ends: no watermark)."""
    corr = Correlator(max_inflight=10**9)
    for raw in CAPTURE.read_bytes().splitlines():
        result = parse_line(raw.decode("utf-8", "replace"))
        if getattr(result, "kind", None) is not None and not hasattr(result, "reason"):
            corr.feed(result, 1.0)
    return [e for e in corr.inflight.values()]


class Fixture:
    """N entries in an InFlight store and in a plain dict (the same objects)."""

    def __init__(self, n: int, journaled: bool):
        self.corr = Correlator(max_inflight=10**9)
        self.tpl = templates()
        self.plain: dict = {}
        self.journaled = journaled
        for _ in range(n):
            self.add()

    def add(self) -> None:
        order = self.corr._next_order
        e = copy.deepcopy(self.tpl[order % len(self.tpl)])
        slot = f"bench-{order}"
        e.update(key=slot, order=order, log_id=f"chatcmpl-{slot}")
        e.pop("slot", None)
        self.corr.inflight[slot] = e
        self.corr.inflight.dirty.add(slot)
        self.plain[slot] = e
        self.corr._next_order += 1

    def change(self, k: int, i: int) -> None:
        store = self.corr.inflight
        for j in range(k // 2):  # stream deltas: updated in place
            slot = f"bench-{(i * 7919 + j * 104729) % self.corr._next_order}"
            if slot in store:
                store[slot]["deltas"] = store[slot].get("deltas", 0) + 1
                store[slot]["last_t"] = 2.0 + i
                store.dirty.add(slot)
        for _ in range(k // 4):
            self.add()
            slot = next(iter(store))  # the oldest is recorded
            del store[slot]
            del self.plain[slot]
            store.dirty.add(slot)

    def state(self, i: int) -> dict:
        inflight = self.corr.inflight if self.journaled else self.plain
        return {"version": 2, "sources": {"vllm": {"offset": i}},
                "correlator": {"inflight": inflight, "middleware_seen": True,
                               "next_order": self.corr._next_order, "recent": []},
                "metrics": {"requests": i}, "archive": {"size": i, "seq": i}, "written_at": float(i)}


def commit(fx: Fixture, path: str, i: int) -> tuple[float, bool]:
    before = fx.corr.inflight.sync
    state = fx.state(i)
    t = time.thread_time()
    ckpt.write_atomic(path, state, key=None)
    cpu = time.thread_time() - t
    sync = fx.corr.inflight.sync
    base = fx.journaled and (before is None or sync.gen != before.gen)
    return cpu, base


def measure(n: int, commits: int, changes: int, workdir: Path) -> dict:
    snap, jour = Fixture(n, journaled=False), Fixture(n, journaled=True)
    pa, pb = str(workdir / f"snap{n}" / "checkpoint.json"), str(workdir / f"jour{n}" / "checkpoint.json")
    os.makedirs(os.path.dirname(pa))
    os.makedirs(os.path.dirname(pb))
    first_base, _ = commit(jour, pb, 0)  # the first commit of a store is a base
    a, b, bases, appended = [], [], [], []
    for i in range(1, commits + 1):
        snap.change(changes, i)
        jour.change(changes, i)
        cpu_a, _ = commit(snap, pa, i)
        before = jour.corr.inflight.sync
        cpu_b, was_base = commit(jour, pb, i)
        a.append(cpu_a)
        (bases if was_base else b).append(cpu_b)
        if not was_base:
            appended.append(jour.corr.inflight.sync.size - before.size)
    base_bytes = os.path.getsize(pb)
    record = sum(appended) / max(1, len(appended))
    base_cpu = max([first_base, *bases])
    amortised = sum(b) / len(b) + base_cpu * record / max(base_bytes * ckpt.JOURNAL_RATIO, ckpt.JOURNAL_MIN)
    return {"inflight": n, "snapshot_ms": round(1000 * sum(a) / len(a), 3),
            "journal_ms": round(1000 * sum(b) / len(b), 3),
            "journal_amortised_ms": round(1000 * amortised, 3),
            "ratio_snapshot_vs_journal": round(sum(a) / len(a) / (sum(b) / len(b)), 1),
            "snapshot_bytes": os.path.getsize(pa), "base_bytes": base_bytes,
            "record_bytes": round(record), "base_ms": round(1000 * base_cpu, 1),
            "compactions": len(bases)}


def child(fmt: str, n: int, commits: int, changes: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-rss-"))
    try:
        fx = Fixture(n, journaled=fmt == "journal")
        path = str(workdir / "checkpoint.json")
        for i in range(commits + 1):
            fx.change(changes, i)
            commit(fx, path, i)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def rss(n: int, commits: int, changes: int) -> dict:
    out = {}
    for fmt in ("snapshot", "journal"):
        cmd = [sys.executable, __file__, "--child", fmt, "--inflight", str(n), "--commits", str(commits),
               "--changes", str(changes)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"child {fmt} failed: {done.stderr[-2000:]}")
        kib = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_kib"]  # the child's own ru_maxrss
        out[f"{fmt}_peak_rss_mib"] = round(kib / 1024, 1)
    return {"inflight": n, **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inflight", type=int, action="append", default=None)
    p.add_argument("--commits", type=int, default=30)
    p.add_argument("--changes", type=int, default=200, help="entries changed between two commits")
    p.add_argument("--rss", type=int, default=None, metavar="N")
    p.add_argument("--child", choices=("snapshot", "journal"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.inflight[0], a.commits, a.changes)
        return 0
    out = {"bench": "checkpoint_cost", **machine(), "commits": a.commits, "changes": a.changes}
    if a.rss:
        out["rss"] = rss(a.rss, a.commits, a.changes)
    else:
        sizes = a.inflight or [1000, 10000, 100000]
        workdir = Path(tempfile.mkdtemp(prefix="ckpt-cost-", dir=a.workdir))
        try:
            rows = [measure(n, a.commits, a.changes, workdir) for n in sizes]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        out["rows"] = rows
        if len(rows) > 1:
            lo, hi = rows[0], rows[-1]
            out["growth"] = {"snapshot": round(hi["snapshot_ms"] / lo["snapshot_ms"], 2),
                             "journal": round(hi["journal_ms"] / lo["journal_ms"], 2),
                             "of": f"{hi['inflight']} vs {lo['inflight']} in flight"}
    out["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
