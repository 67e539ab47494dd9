"""Cost of the transparency log per record, as a share of the replay's CPU time, in one run.

Usage::

    .venv/bin/python bench/tlog_cost.py --size 64MiB      # published figure
    .venv/bin/python bench/tlog_cost.py --size 1MiB       # smoke

One ``replay`` of a log made by ``bench/make_big_log.py`` from the real vLLM
0.32 DEBUG capture, with ``--signing-key-file`` (a fresh ``keygen`` key) and
the default ``--sign-interval``, through ``exporter.replay.replay_into`` —
exactly what ``vllm-audit-exporter replay`` does. The log's own work is
measured inside that run by wrapping its entry points with CPU counters
(``time.process_time``): ``TreeFile.append`` / ``TreeFile.extend`` (salts,
leaf commitments, leaf hash, frontier; the archive writer hands the tree a
batch of sealed records with their encoded lines at each flush),
``TreeFile.flush`` (write + fsync of the tree file) and
``TransparencyLog.sign`` (checkpoint, Ed25519 signature, append + fsync,
epoch work). Nested calls (``append`` calls ``extend``) are counted once. Then ``verify --public-key`` (the outsider's
check: every leaf recomputed, every checkpoint verified) runs over the same
archive, timed the same way.

``sign_ratio`` = log CPU in the replay / replay CPU; ``verify_ratio`` =
verify CPU / replay CPU; the target (issue 15) is under 5 % for
signing + verification. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import make_big_log  # noqa: E402

TARGET = 0.05


class Meter:
    depth = 0  # metered calls in progress: an inner one (append -> extend) is not counted again

    def __init__(self) -> None:
        self.cpu = 0.0
        self.calls = 0

    def wrap(self, cls, name: str) -> None:
        fn = getattr(cls, name)
        meter = self

        def timed(*args, **kwargs):
            if Meter.depth:
                return fn(*args, **kwargs)
            Meter.depth += 1
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                meter.cpu += time.process_time() - t
                meter.calls += 1
                Meter.depth -= 1
        setattr(cls, name, timed)


def run(log: Path, work: Path) -> dict:
    from exporter.replay import replay_into
    from exporter.settings import load
    from exporter.transparency import leaf_line
    from exporter.transparency.audit import audit, load_verifier
    from exporter.transparency.keys import keygen
    from exporter.transparency.log import TransparencyLog
    from exporter.transparency.tree import TreeFile

    key, pub = keygen(work / "keys", "bench-log")
    archive = work / "archive"
    settings = load("replay", [str(log), "--archive-dir", str(archive), "--model", "tiny", "--no-progress",
                               "--signing-key-file", str(key), "--log-origin", "bench.example/audit"], {})
    meters = {"append": Meter(), "extend": Meter(), "flush": Meter(), "sign": Meter()}
    meters["append"].wrap(TreeFile, "append")
    meters["extend"].wrap(TreeFile, "extend")
    meters["flush"].wrap(TreeFile, "flush")
    meters["sign"].wrap(TransparencyLog, "sign")
    t0, w0 = time.process_time(), time.perf_counter()
    rt, _ = replay_into(settings, quiet=True)
    replay_cpu, replay_wall = time.process_time() - t0, time.perf_counter() - w0
    records = rt.pipeline.records_emitted
    t1 = time.process_time()
    report = audit(archive, load_verifier(str(pub), "--public-key"))
    verify_cpu = time.process_time() - t1
    if not report.ok or report.records != records:
        raise SystemExit(f"verify failed on the bench archive: {report.problems[:1]}")
    tlog_cpu = sum(m.cpu for m in meters.values())
    return {
        "bench": "tlog_cost",
        "records": records,
        "log_bytes": log.stat().st_size,
        "replay_cpu_s": round(replay_cpu, 3),
        "replay_wall_s": round(replay_wall, 3),
        "replay_us_per_record": round(replay_cpu / records * 1e6, 1),
        "leaf_us_per_record": round((meters["append"].cpu + meters["extend"].cpu) / records * 1e6, 2),
        "tree_flush_us_per_record": round(meters["flush"].cpu / records * 1e6, 2),
        "checkpoints_signed": meters["sign"].calls,
        "sign_ms_per_checkpoint": round(meters["sign"].cpu / max(meters["sign"].calls, 1) * 1e3, 3),
        "sign_us_per_record": round(tlog_cpu / records * 1e6, 2),
        "sign_ratio": round(tlog_cpu / replay_cpu, 4),
        "verify_cpu_s": round(verify_cpu, 3),
        "verify_us_per_record": round(verify_cpu / records * 1e6, 2),
        "verify_ratio": round(verify_cpu / replay_cpu, 4),
        "total_ratio": round((tlog_cpu + verify_cpu) / replay_cpu, 4),
        "target_ratio": TARGET,
        "met": (tlog_cpu + verify_cpu) / replay_cpu < TARGET,
        "leaf_implementation": leaf_line.IMPLEMENTATION,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=make_big_log.parse_size, default=make_big_log.parse_size("16MiB"))
    p.add_argument("--log", type=Path, default=None, help="an existing log instead of a generated one")
    p.add_argument("--keep", type=Path, default=None, help="keep the archive here (for profiling)")
    p.add_argument("--pure-python-leaf", action="store_true",
                   help="the leaf from the archive line without the C accelerator (exporter/transparency/_leaf.c)")
    args = p.parse_args(argv)
    from exporter.transparency import leaf_line
    leaf_line.set_enabled(not args.pure_python_leaf)
    work = Path(tempfile.mkdtemp(prefix="tlog-bench-"))
    try:
        log = args.log
        if log is None:
            log = work / "big.log"
            make_big_log.make(log, capture="debug", size=args.size, users=1000, seed=1)
        print(json.dumps(run(log, work)))
        if args.keep:
            shutil.copytree(work / "archive", args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
