"""What the stat-logger plugin adds to vLLM's output handler, per record() call.

Usage (vLLM's python: the plugin subclasses vLLM's StatLoggerBase):

    PYTHONPATH=. ~/.cache/vllm-audit/vllm-venv/bin/python bench/statlogger_overhead.py [--calls 20000]

``record()`` runs on vLLM's event loop once per batch of engine outputs, with
vLLM's real ``IterationStats``/``SchedulerStats``/``FinishedRequestStats``.
Reported: µs per call on the loop with no finished request (most steps) and
with 1 and 8 finished requests, and the writer thread's render + write cost
per line (measured apart: the writer is drained after the loop, so its GIL
time does not land in the loop's figure). The batch size changes every call,
the worst case for the share clock (one sample per call).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import types
from pathlib import Path

from vllm.v1.engine import FinishReason
from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats, SchedulerStats

from exporter.middleware.writer import FileSink, LineWriter
from exporter.statlogger.line import dropped, fallback, render
from exporter.statlogger.plugin import AuditStatLogger


def finished(i: int) -> FinishedRequestStats:
    return FinishedRequestStats(finish_reason=FinishReason.STOP, request_id=f"chatcmpl-{i:032x}",
                                e2e_latency=0.5, num_prompt_tokens=100, num_generation_tokens=50,
                                queued_time=0.01, prefill_time=0.05, decode_time=0.4, inference_time=0.45)


def measure(calls: int, per_call: int, tmp: Path) -> tuple[float, float | None]:
    config = types.SimpleNamespace(parallel_config=types.SimpleNamespace(
        tensor_parallel_size=1, pipeline_parallel_size=1))
    writer = LineWriter(FileSink(str(tmp / f"e{per_call}.jsonl"), 1 << 40), render, fallback,
                        max_items=10_000_000, max_bytes=1 << 40, dropped=dropped, start=False)
    log = AuditStatLogger(config, 0, env={}, writer=writer)
    batches = []
    for c in range(calls):
        it = IterationStats()
        it.finished_requests.extend(finished(c * 10 + k) for k in range(per_call))
        batches.append((SchedulerStats(num_running_reqs=c % 7), it))
    t0 = time.perf_counter()
    for sched, it in batches:
        log.record(sched, it)
    elapsed = time.perf_counter() - t0
    lines = len(writer.queue)
    t1 = time.perf_counter()
    writer.drain()
    drained = time.perf_counter() - t1
    writer.close()
    assert log.errors == 0 and writer.dropped == 0 and writer.written == lines
    return elapsed / calls * 1e6, (drained / (lines - 1) * 1e6 if calls * per_call else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = {}
        for n in (0, 1, 8):
            loop, line = measure(args.calls, n, Path(d))
            out[f"loop_us_per_call_{n}_finished"] = round(loop, 2)
            if line is not None:
                out[f"writer_us_per_line_{n}_finished"] = round(line, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
