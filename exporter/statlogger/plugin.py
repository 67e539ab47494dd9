"""``AuditStatLogger``: the vLLM stat-logger plugin (stdlib + vLLM only).

vLLM builds one instance per engine (``StatLoggerBase(vllm_config,
engine_index)``) in the API-server process and calls ``record()`` on its
event loop after every batch of engine outputs, with the scheduler's
statistics and the iteration's ``finished_requests``
(``FinishedRequestStats``; vLLM calls these classes unstable).

Rules:
- Fail open: ``record()`` never raises (an exception there would stop
  vLLM's output handler) and never blocks: per finished request it reads a
  dozen attributes into a tuple and hands it to the bounded writer thread
  (:mod:`exporter.middleware.writer`); JSON is built there. vLLM's own stat
  loggers are untouched (this is one more logger beside them).
- Configuration: ``VLLM_AUDIT_ENGINE_FILE`` (``{pid}`` → the process id);
  unset, the plugin writes nothing and logs one warning.
  ``VLLM_AUDIT_ENGINE_QUEUE``, ``VLLM_AUDIT_ENGINE_MAX_BYTES`` (rotation, as
  the middleware's file), ``VLLM_AUDIT_ENGINE_FSYNC_MS``.
- What the running vLLM does not provide is counted by reason and reported
  in a status line (``exporter.statlogger.line``), never guessed:
  ``no_request_id`` (a ``FinishedRequestStats`` without the external id:
  vLLM builds whose class has no ``request_id``), ``stats_changed`` (no ``finished_requests`` /
  a field missing or of another type), ``record_error`` (anything else).
- A request's engine share (``share_seconds``) comes from a per-engine
  :class:`~exporter.statlogger.share.ShareClock`: the batch served in a step
  is the scheduler's running count after the step plus the requests that
  finished in it.
"""

from __future__ import annotations

import logging
import os
import time

from vllm.v1.metrics.loggers import StatLoggerBase

from exporter.middleware import _int
from exporter.middleware.writer import FileSink, LineWriter
from exporter.statlogger.line import dropped, fallback, render
from exporter.statlogger.share import ShareClock

log = logging.getLogger("vllm_audit.statlogger")
REPORT_SECONDS = 1.0  # problem counts are reported at most this often
_TIMES = ("queued_time", "prefill_time", "decode_time", "inference_time")


def _version() -> str | None:
    try:
        import vllm
        return str(getattr(vllm, "__version__", None))
    except Exception:  # noqa: BLE001
        return None


def _devices(vllm_config) -> int | None:
    try:
        par = vllm_config.parallel_config
        n = int(par.tensor_parallel_size) * int(par.pipeline_parallel_size)
        return n if n > 0 else None
    except Exception:  # noqa: BLE001 - unknown is null
        return None


class AuditStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0, *, env=None, writer=None,
                 clock=time.monotonic, wall=time.time) -> None:
        self.writer = None  # record() does nothing until set up
        self.errors = 0
        self.problems: dict[str, int] = {}
        try:
            self._setup(vllm_config, engine_index, os.environ if env is None else env, writer,
                        clock, wall)
        except Exception:  # noqa: BLE001 - fail open: an exception here would stop vLLM starting
            log.exception("vllm-audit stat logger disabled: set-up failed")
            self.writer = None

    def _setup(self, vllm_config, engine_index: int, env, writer, clock, wall) -> None:
        self.engine_index = engine_index
        self.devices = _devices(vllm_config)
        self.clock, self.wall = clock, wall
        self.share = ShareClock()
        self.share.step(clock(), 0)  # idle at start: the first request's interval has a left end
        self._reported = clock()
        path = env.get("VLLM_AUDIT_ENGINE_FILE") or None
        if path and "{pid}" in path:
            path = path.replace("{pid}", str(os.getpid()))
        if writer is None and path is None:
            log.warning("VLLM_AUDIT_ENGINE_FILE is unset: the vllm-audit stat logger writes nothing")
            return
        if writer is None:
            sink = FileSink(path, _int(env, "VLLM_AUDIT_ENGINE_MAX_BYTES", 100 << 20))
            writer = LineWriter(
                sink, render, fallback, max_items=_int(env, "VLLM_AUDIT_ENGINE_QUEUE", 10000),
                fsync_seconds=_int(env, "VLLM_AUDIT_ENGINE_FSYNC_MS", 1000, 0) / 1000.0,
                dropped=dropped, name="vllm-audit-engine-writer")
        writer.submit(("status", (wall(), {}, {"vllm_version": _version(), "engine_index": engine_index,
                                               "devices": self.devices})), 256)
        self.writer = writer

    # -- StatLoggerBase --------------------------------------------------
    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if self.writer is None:
            return
        try:
            self._record(scheduler_stats, iteration_stats)
        except Exception:  # noqa: BLE001 - never break vLLM's output handler
            self.errors += 1
            self._count("record_error")

    def log_engine_initialized(self) -> None:
        pass

    # -- work ------------------------------------------------------------
    def _record(self, scheduler_stats, iteration_stats) -> None:
        now, wall = self.clock(), self.wall()
        finished = ()
        if iteration_stats is not None:
            finished = getattr(iteration_stats, "finished_requests", None)
            if finished is None:
                self._count("stats_changed")
                finished = ()
        running = getattr(scheduler_stats, "num_running_reqs", None) if scheduler_stats is not None else None
        batch = running + len(finished) if isinstance(running, int) else None
        self.share.step(now, batch)
        for req in finished:
            self._finished(req, now, wall)
        if self.problems and now - self._reported >= REPORT_SECONDS:
            self._reported = now
            problems, self.problems = self.problems, {}
            self.writer.submit(("status", (wall, problems)), 256)

    def _finished(self, req, now: float, wall: float) -> None:
        # On vLLM's event loop for every finished request: one pass of plain
        # attribute reads and class checks (bool is not a number here).
        rid = getattr(req, "request_id", None)
        if rid.__class__ is not str or not rid:
            self._count("no_request_id")
            return
        times = []
        changed = False
        for name in _TIMES:
            x = getattr(req, name, None)
            if x.__class__ is float or x.__class__ is int:
                # A phase never reached reads as a negative interval in vLLM
                # (an abort before scheduling: scheduled_ts stays 0): unknown.
                times.append(float(x) if x >= 0 else None)
            else:
                times.append(None)
                changed = True
        if changed:
            self._count("stats_changed")
        inference = times[3]
        share = self.share.share(now - inference, now) if inference is not None else None
        reason = getattr(req, "finish_reason", None)
        reason = str(reason).lower().rsplit(".", 1)[-1] if reason is not None else None
        e2e = getattr(req, "e2e_latency", None)
        item = (rid, wall, float(e2e) if e2e.__class__ is float or e2e.__class__ is int else None, reason,
                _count_of(req, "num_prompt_tokens"), _count_of(req, "num_generation_tokens"),
                _count_of(req, "num_cached_tokens"), _count_of(req, "num_preemptions"),
                *times, share, self.devices, self.engine_index)
        self.writer.submit(("engine", item), 512 + len(rid))

    def _count(self, reason: str) -> None:
        self.problems[reason] = self.problems.get(reason, 0) + 1


def _count_of(req, name: str):
    value = getattr(req, name, None)
    return value if value.__class__ is int else None
