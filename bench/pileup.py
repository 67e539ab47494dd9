"""Pile-up cost: replay of a log whose time stands still vs the same-size log
whose time advances, in one run (issue: the exporter must stay linear).

Usage::

    .venv/bin/python bench/pileup.py --size 64MiB
    .venv/bin/python bench/pileup.py --size 400MiB          # the issue's figure

Both logs come from the real vLLM 0.32 DEBUG capture (bench/make_big_log.py);
in the pile-up one every repetition has the same header times, so requests
that vLLM never logs as finished (an empty non-streaming answer, completions
outputs) stay in flight until ``--max-inflight`` evicts them, and every
checkpoint holds the full in-flight set. The figure is
``pileup_cpu / advancing_cpu`` (target <= 1.5); records and statuses of both
runs are printed so the work done is visibly the same.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import make_big_log  # noqa: E402
from replay_throughput import machine, replay  # noqa: E402

TARGET_RATIO = 1.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=make_big_log.parse_size, default=make_big_log.parse_size("64MiB"))
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--exporter-arg", action="append", default=[], metavar="ARG")
    a = p.parse_args(argv)
    out = {"bench": "pileup", **machine()}
    with make_big_log.workdir(a.workdir, "pileup-bench-") as workdir:
        for name, pileup in (("advancing", False), ("pileup", True)):
            log = workdir / f"{name}.log"
            gen = make_big_log.make(log, size=a.size, pileup=pileup)
            res = replay(log, workdir, extra=a.exporter_arg)
            log.unlink()
            out[name] = {"mib": gen["mib"], "lines": gen["lines"], "records": res["records"],
                         "cpu_s": round(res["exporter_cpu_s"], 3), "wall_s": round(res["exporter_wall_s"], 3),
                         "statuses": res["statuses"],
                         "mib_per_cpu_s": round(gen["mib"] / res["exporter_cpu_s"], 2)}
    out["ratio_pileup_vs_advancing"] = round(out["pileup"]["cpu_s"] / out["advancing"]["cpu_s"], 3)
    out["target_ratio"] = TARGET_RATIO
    out["meets"] = out["ratio_pileup_vs_advancing"] <= TARGET_RATIO
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
