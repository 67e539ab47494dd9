"""Resident memory and CPU of a live ``exporter run`` sidecar at a steady request rate:
the figures behind the Kubernetes resource requests and limits (deploy/kubernetes/).

Usage::

    .venv/bin/python bench/sidecar_resources.py                       # published figure
    .venv/bin/python bench/sidecar_resources.py --rate 5 --seconds 5  # smoke

The exporter runs as the sidecar runs: ``python -m exporter run --log LOG
--log MIDDLEWARE --archive-dir D --loki-url URL --instance ...`` (the strict
Loki test server, ``tests/loki_server.py``, as the Loki), tailing a fresh log.
The bench appends the real ``chat_system`` request of the DEBUG capture (the
same template as bench/lag.py: fresh id, current time, one of ``--users``
users) ``--rate`` times a second for ``--seconds``, while it samples the
child's ``VmRSS`` (``/proc/PID/status``) and user+system CPU
(``/proc/PID/stat``) every ``--sample`` seconds. It then waits (bounded) until
every request is in ``/metrics`` and Loki, so the figure includes the
Loki pusher's work too.

Prints one JSON line: peak and final RSS (MiB), mean CPU in cores over the
writing window, the requests seen in /metrics and Loki.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import make_big_log  # noqa: E402
from lag import free_port, render, request_template, wait_started  # noqa: E402
from replay_throughput import machine  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def requests_seen(metrics_url: str) -> float:
    body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith("vllm_audit_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(workdir: Path, rate: float, seconds: float, users: int, sample: float) -> dict:
    from loki_server import LokiServer

    shutil.rmtree(workdir / "side", ignore_errors=True)
    d = workdir / "side"
    d.mkdir(parents=True)
    log, mw = d / "vllm.log", d / "middleware.jsonl"
    log.write_text("")
    mw.write_text("")
    port = free_port()
    loki = LokiServer().start()
    cmd = [sys.executable, "-m", "exporter", "run", "--log", str(log), "--log", str(mw),
           "--archive-dir", str(d / "archive"), "--web.listen-address", f"127.0.0.1:{port}",
           "--loki-url", loki.url, "--instance", "bench/vllm-audit-0", "--model", "tiny"]
    err = open(d / "exporter.stderr", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}/metrics"
    samples: list[float] = []
    try:
        wait_started(proc, url, d / "exporter.stderr")
        idle_rss = rss_mib(proc.pid)
        tpl = request_template()
        n = int(rate * seconds)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        next_sample = t0
        with open(log, "a", encoding="utf-8") as f:
            for i in range(n):
                due = t0 + i / rate
                while time.monotonic() < due:
                    time.sleep(min(0.01, max(0.0, due - time.monotonic())))
                when = time.strftime("%m-%d %H:%M:%S", time.gmtime())
                f.write(render(tpl, f"side{i:012x}", f"user{i % users:05d}", when))
                f.flush()
                if time.monotonic() >= next_sample:
                    samples.append(rss_mib(proc.pid) or 0.0)
                    next_sample += sample
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        settle = time.monotonic() + 60
        seen = 0.0
        while time.monotonic() < settle:
            seen = requests_seen(url)
            samples.append(rss_mib(proc.pid) or 0.0)
            if seen >= n and len(loki.lines()) >= n:
                break
            time.sleep(0.2)
        final_rss = rss_mib(proc.pid)
        cpu2 = cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
        loki_lines = len(loki.lines())
        loki.stop()
    return {"requests": n, "rate_per_s": rate, "seconds": seconds, "users": users,
            "idle_rss_mib": round(idle_rss or 0.0, 1), "peak_rss_mib": round(max(samples), 1),
            "final_rss_mib": round(final_rss or 0.0, 1),
            "cpu_cores_while_writing": round((cpu1 - cpu0) / (t1 - t0), 3),
            "cpu_s_total_incl_drain": round(cpu2 - cpu0, 2),
            "seen_in_metrics": int(seen), "seen_in_loki": loki_lines}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--users", type=int, default=500, help="distinct users (the label limit)")
    p.add_argument("--sample", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    with make_big_log.workdir(a.workdir, "sidecar-bench-") as workdir:
        out = {"bench": "sidecar_resources", **machine(),
               **run(workdir, a.rate, a.seconds, a.users, a.sample)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
