"""Peak RSS of ``vllm-audit-exporter replay`` after N requests from U users.

Usage::

    .venv/bin/python bench/rss.py --requests 1000000 --users 10000   # published figure
    .venv/bin/python bench/rss.py --requests 2000 --users 50         # smoke
    .venv/bin/python bench/rss.py --log FILE                         # an existing log

The log is made by ``bench/make_big_log.py`` from the real DEBUG capture
(JSON body lines carry the users). The exporter runs as a subprocess,
``python -m exporter replay LOG --archive-dir D --no-progress`` plus any
``--exporter-arg``, i.e. the real CLI with default settings (``--max-users
500``: later users share the ``__other__`` metric label; the replay summary
still counts every user). Its peak RSS is the child's ``ru_maxrss`` from
``os.wait4`` (Linux: KiB), so nothing else in this process counts.

A reference child replays the capture itself once (22 requests): the
difference is what the requests cost, the reference is imports and runtime.
The child's user+system CPU is reported too (MiB and requests per CPU-second
for the big replay; it is the same path as bench/replay_throughput.py).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import make_big_log  # noqa: E402
from replay_throughput import machine  # noqa: E402

TARGET_MIB = 150.0


def run_child(log: Path, archive: Path, extra: list[str]) -> dict:
    shutil.rmtree(archive, ignore_errors=True)
    cmd = [sys.executable, "-m", "exporter", "replay", str(log), "--archive-dir", str(archive),
           "--no-progress", *extra]
    w = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - w
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"exporter replay failed ({proc.returncode}): {stderr[-2000:]}")
    first = stdout.splitlines()[0] if stdout else ""
    return {"max_rss_mib": round(ru.ru_maxrss / 1024, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "wall_s": round(wall, 3), "summary": first}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--capture", default="debug")
    p.add_argument("--log", type=Path, default=None, help="use this log instead of generating one")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed")
    p.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                   help="extra replay flag (repeatable), e.g. --exporter-arg=--max-users=10000")
    a = p.parse_args(argv)

    with make_big_log.workdir(a.workdir, "rss-bench-") as workdir:
        gen = None
        log = a.log
        if log is None:
            log = workdir / "rss.log"
            gen = make_big_log.make(log, capture=a.capture, requests=a.requests, users=a.users)
        capture = make_big_log.CAPTURES / a.capture / "vllm.log"
        ref = run_child(capture, workdir / "archive-ref", a.exporter_arg)
        big = run_child(log, workdir / "archive", a.exporter_arg)
        size = log.stat().st_size
        requests = int(big["summary"].split()[1]) if big["summary"].startswith("requests:") else None
        out = {
            "bench": "rss", **machine(), "log": str(log) if a.log else None,
            "bytes": size, "mib": round(size / 2**20, 1), "requests": requests,
            "users": gen["users"] if gen else None, "exporter_args": a.exporter_arg,
            "max_rss_mib": big["max_rss_mib"], "reference_max_rss_mib": ref["max_rss_mib"],
            "growth_mib": round(big["max_rss_mib"] - ref["max_rss_mib"], 1),
            "cpu_s": big["cpu_s"], "wall_s": big["wall_s"],
            "mib_per_cpu_s": round(size / 2**20 / max(big["cpu_s"], 1e-9), 2),
            "requests_per_cpu_s": round((requests or 0) / max(big["cpu_s"], 1e-9), 1),
            "target_max_rss_mib": TARGET_MIB, "meets": big["max_rss_mib"] < TARGET_MIB,
            "summary_first_line": big["summary"], "generator": gen,
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
