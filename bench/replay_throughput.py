"""Replay throughput of the real path, against a bare line loop over the same file.

Usage::

    .venv/bin/python bench/replay_throughput.py --size 1GiB            # published figure
    .venv/bin/python bench/replay_throughput.py --size 1MiB            # smoke
    .venv/bin/python bench/replay_throughput.py --log FILE             # an existing log
    .venv/bin/python bench/replay_throughput.py --size 32MiB --profile 30   # cProfile top 30 (stderr)
    .venv/bin/python bench/replay_throughput.py --size 32MiB --compare      # C parser vs pure Python
    .venv/bin/python bench/replay_throughput.py --log FILE --repeat 3      # least CPU of 3 replays

``--compare`` replays the same log twice in this process, with the C parser
accelerator (``exporter/parse/_scan.c``) and with the pure-Python parser
(what ``VLLM_AUDIT_PURE_PYTHON=1`` selects), into two archives, and adds
``pure_python`` (its figures), ``speedup_cpu`` and ``archives_identical``
(every archive file byte for byte) to the JSON line.

The log is made by ``bench/make_big_log.py`` from a real vLLM 0.32 capture
(``--capture debug``, the richest, ``info``, ``jsondebug`` for vLLM's JSON
formatter, or ``deltas``: long streams logged one line per token with
``--enable-log-deltas``, ~300 lines per request). The exporter runs in this
process through ``exporter.replay.replay_into``: FileTailer → parse_line →
Correlator → build_record → detectors → RequestMetrics → ArchiveWriter
(hash chain, fsync) → checkpoint, exactly what ``vllm-audit-exporter replay``
does (the summary hook included).

Baselines, same file, same process, measured right before the replay (the
file is read once first so both see a warm page cache):

* ``bare_read``: ``for line in f: pass`` on the file opened ``rb``;
* ``bare_decode``: the same loop plus ``line.decode("utf-8", "replace")``.

All figures are CPU seconds of this process (``time.process_time``: user +
system, so fsync's syscall work counts, waiting for the disk does not);
wall time is reported beside them. The ratio that the targets are stated in
is ``exporter_cpu / bare_decode_cpu``.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import make_big_log  # noqa: E402

# Issue #16's Done-when for a ~400 MB real-format DEBUG log: ahead of Fluent
# Bit's regex parsing (20.5 MiB/s, vector-test-harness). These are absolute
# figures, so they depend on the machine; the ratio to the bare decode loop
# measured in the same run does not, which is why it is printed beside them.
TARGET_MIB_S = 25.0
TARGET_REQ_S = 10_000.0
# An older, machine-independent stretch goal (the first benchmark issue):
# within 4x of a bare line loop. Far off; kept so the figure stays visible.
TARGET_RATIO = 4.0


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model or platform.processor(),
            "python": platform.python_version(), "interpreter": sys.executable,
            "libpython_shared": libpython_shared()}


def libpython_shared() -> bool | None:
    """Whether this interpreter runs from a shared libpython (pyenv's
    --enable-shared build without PGO/LTO: position-independent code with
    every call between its functions through the PLT), or from a static,
    optimised one like Debian's /usr/bin/python3.11 and the official python
    images the Dockerfile builds on. The same code measures ~14 % slower on
    the first (README, "Replay throughput"); None where it cannot be told."""
    try:
        with open("/proc/self/maps") as maps:
            return any("/libpython3" in line for line in maps)
    except OSError:
        return None


def bare_loops(path: Path) -> dict:
    with open(path, "rb") as f:  # warm the page cache for both contenders
        while f.read(1 << 24):
            pass
    t = time.process_time()
    n = 0
    with open(path, "rb") as f:
        for _line in f:
            n += 1
    read = time.process_time() - t
    t = time.process_time()
    with open(path, "rb") as f:
        for line in f:
            line.decode("utf-8", "replace")
    decode = time.process_time() - t
    return {"lines": n, "bare_read_cpu_s": read, "bare_decode_cpu_s": decode}


def replay(path: Path, workdir: Path, *, profile: int = 0, extra: list[str] | None = None,
           archive_name: str = "archive") -> dict:
    # Import everything the replay touches before the clock starts.
    from exporter import runtime, summary  # noqa: F401
    from exporter.cli import make_parser
    from exporter.replay import replay_into
    from exporter.compliance import detect  # noqa: F401
    from exporter.settings import build

    archive = workdir / archive_name
    shutil.rmtree(archive, ignore_errors=True)
    argv = ["replay", str(path), "--archive-dir", str(archive), "--no-progress", *(extra or [])]
    settings = build("replay", make_parser().parse_args(argv), {})
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
    w, t = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    rt, summ = replay_into(settings, quiet=True)
    if prof is not None:
        prof.disable()
    cpu, wall = time.process_time() - t, time.perf_counter() - w
    if prof is not None:
        import pstats
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(profile)
    rt.archive.close()
    archive_bytes = sum(p.stat().st_size for p in archive.glob("audit-*.jsonl"))
    return {"records": rt.pipeline.records_emitted, "exporter_cpu_s": cpu, "exporter_wall_s": wall,
            "archive_bytes": archive_bytes, "statuses": dict(summ.by_status),
            "users_seen": len(summ.users)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=make_big_log.parse_size, default=make_big_log.parse_size("1GiB"))
    p.add_argument("--capture", default="debug")
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--log", type=Path, default=None, help="use this log instead of generating one")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="cProfile the replay, print the top N functions to stderr (slows it down)")
    p.add_argument("--compare", action="store_true",
                   help="replay with the C parser accelerator and with pure Python, same run")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="replay N times (a fresh archive each) and report the least CPU, as timeit "
                        "does: this VM's speed drifts by up to x1.5 within minutes, and interference "
                        "only ever adds time; every run's figure is printed beside it")
    p.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                   help="extra replay flag (repeatable), e.g. --exporter-arg=--merge-grace=0")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")

    with make_big_log.workdir(a.workdir, "replay-bench-") as workdir:
        gen = None
        log = a.log
        if log is None:
            log = workdir / "big.log"
            gen = make_big_log.make(log, capture=a.capture, size=a.size, users=a.users)
        size = log.stat().st_size
        base = bare_loops(log)
        runs = [replay(log, workdir, profile=a.profile, extra=a.exporter_arg) for _ in range(a.repeat)]
        res = min(runs, key=lambda r: r["exporter_cpu_s"])
        if len({(r["records"], r["archive_bytes"]) for r in runs}) != 1:
            raise SystemExit(f"runs disagree: {[(r['records'], r['archive_bytes']) for r in runs]}")
        mib = size / 2**20
        cpu = res["exporter_cpu_s"]
        out = {
            "bench": "replay_throughput", **machine(),
            "log": str(log) if a.log else None, "capture": None if a.log else a.capture,
            "bytes": size, "mib": round(mib, 2), "lines": base["lines"], "records": res["records"],
            "exporter_cpu_s": round(cpu, 3), "exporter_wall_s": round(res["exporter_wall_s"], 3),
            "runs": len(runs), "runs_cpu_s": [round(r["exporter_cpu_s"], 3) for r in runs],
            "runs_requests_per_cpu_s": [round(r["records"] / r["exporter_cpu_s"], 1) for r in runs],
            "mib_per_cpu_s": round(mib / cpu, 2),
            "requests_per_cpu_s": round(res["records"] / cpu, 1),
            "lines_per_cpu_s": round(base["lines"] / cpu, 1),
            "bare_read_cpu_s": round(base["bare_read_cpu_s"], 4),
            "bare_decode_cpu_s": round(base["bare_decode_cpu_s"], 4),
            "bare_decode_mib_per_cpu_s": round(mib / max(base["bare_decode_cpu_s"], 1e-9), 1),
            "ratio_vs_bare_decode": round(cpu / max(base["bare_decode_cpu_s"], 1e-9), 2),
            "ratio_vs_bare_read": round(cpu / max(base["bare_read_cpu_s"], 1e-9), 2),
            "archive_bytes": res["archive_bytes"], "statuses": res["statuses"],
            "users_seen": res["users_seen"],
            "targets": {"mib_per_cpu_s": TARGET_MIB_S, "requests_per_cpu_s": TARGET_REQ_S,
                        "ratio_vs_bare_decode": TARGET_RATIO},
            "generator": gen,
        }
        out["meets"] = {"mib_per_cpu_s": out["mib_per_cpu_s"] >= TARGET_MIB_S,
                        "requests_per_cpu_s": out["requests_per_cpu_s"] >= TARGET_REQ_S,
                        "ratio_vs_bare_decode": out["ratio_vs_bare_decode"] <= TARGET_RATIO}
        out["parser"] = _parser()
        if a.compare:
            out.update(compare(log, workdir, mib, res, a.exporter_arg))
        print(json.dumps(out))
    return 0


def _parser() -> str:
    from exporter.parse import fast
    return fast.IMPLEMENTATION


def compare(log: Path, workdir: Path, mib: float, res: dict, extra: list[str]) -> dict:
    """The same replay with the pure-Python parser; the two archives compared."""
    from exporter.parse import fast
    if fast.scan is None:
        return {"pure_python": None, "compare_error": "the C parser accelerator is not active"}
    fast.set_enabled(False)
    try:
        pure = replay(log, workdir, extra=extra, archive_name="archive-python")
    finally:
        fast.set_enabled(True)
    a, b = workdir / "archive", workdir / "archive-python"
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    same = names == sorted(p.name for p in b.iterdir() if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)
    cpu = pure["exporter_cpu_s"]
    return {"pure_python": {"exporter_cpu_s": round(cpu, 3), "mib_per_cpu_s": round(mib / cpu, 2),
                            "requests_per_cpu_s": round(pure["records"] / cpu, 1), "records": pure["records"]},
            "speedup_cpu": round(cpu / res["exporter_cpu_s"], 2), "archives_identical": same,
            "archive_files": names}


if __name__ == "__main__":
    sys.exit(main())
