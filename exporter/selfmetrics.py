"""The exporter's own metrics: input, parsing, correlation, checkpoints.

Plain prometheus_client instruments on the registry passed in (direct
instrumentation of the exporter itself is what the Prometheus exporter guide
recommends). They are per process and start at 0 on every start; only the
request metrics (``metrics.RequestMetrics``) are carried in the checkpoint.

Use the attributes directly (``sm.records.inc()``,
``sm.lines_ignored.labels(reason).inc()``); ``source(name)`` returns the
per-source children already bound, for the tailer's per-line path.
Label sets for the known reasons are created at 0 so that ``rate()`` and
``increase()`` see the first event (Prometheus "avoid missing metrics").

Sample exposition::

    # HELP vllm_audit_log_lines_total Lines read from a log source.
    # TYPE vllm_audit_log_lines_total counter
    vllm_audit_log_lines_total{source="vllm"} 1042.0
    # HELP vllm_audit_log_lines_ignored_total Lines that are not request-log lines, by reason.
    # TYPE vllm_audit_log_lines_ignored_total counter
    vllm_audit_log_lines_ignored_total{reason="stats"} 17.0
    # HELP vllm_audit_build_info Exporter version; always 1.
    # TYPE vllm_audit_build_info gauge
    vllm_audit_build_info{version="0.1.0"} 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter import assemble
from exporter import metrics as request_metrics
from exporter.parse import fast as parse_fast
from exporter.tail import lines as tail_lines
from exporter.transparency import leaf_line
from exporter.wire import ENGINE_PROBLEMS

# parse.Ignored reasons that are not errors (docs/design.md, "Events"), plus
# "access": uvicorn access-log lines the pipeline reads but does not use.
IGNORED_REASONS = ("empty", "not_vllm", "other_logger", "stats", "continuation",
                   "traceback", "not_request_log", "access", "startup")
# Lines that look like request logging but do not parse.
PARSE_ERROR_REASONS = ("malformed_received", "malformed_output", "malformed_body",
                       "malformed_details", "malformed_middleware", "malformed_engine",
                       # a field of a used line dropped for its type, a lone surrogate escaped
                       "middleware_invalid_field", "body_invalid_field", "engine_invalid_field",
                       "unencodable_text")
# Why the stat-logger plugin wrote no engine line for a finished request (as
# it reported; exporter/statlogger/plugin.py): the running vLLM's stats lack
# the external id or changed shape, record() failed, the queue was full.
ENGINE_MISSING_REASONS = (*ENGINE_PROBLEMS, "other")
# Why an in-flight request was given up on: the correlator's timeout passed,
# its table was full, or the pipeline found nothing to match it with. Other
# reasons can still be used; these exist at 0.
EVICTION_REASONS = ("timeout", "capacity", "unmatched", "late_event", "already_archived")


def accelerators() -> dict[str, str]:
    """Stage -> ``c`` or ``python``: the parser (``exporter/parse/_scan.c``),
    the tailer's line cut (``exporter/tail/_cut.c``), the archive's leaf
    and canonical encoding (``exporter/transparency/_leaf.c``), the record's
    assembly without the middleware (``exporter/_assemble.c``) and the
    request metrics' observe (``exporter/_observe.c``)."""
    return {"parse": parse_fast.IMPLEMENTATION, "tail": tail_lines.IMPLEMENTATION,
            "archive_encoding": leaf_line.IMPLEMENTATION, "assemble": assemble.IMPLEMENTATION,
            "metrics": request_metrics.IMPLEMENTATION}


@dataclass(frozen=True)
class SourceMetrics:
    """The per-source children of one log source, bound once."""

    lines: Counter
    bytes: Counter
    rotations: Counter
    truncations: Counter
    up: Gauge
    checkpoint_lag_bytes: Gauge
    time_offset: Gauge


class SelfMetrics:
    """Self metrics on ``registry``; ``sources`` are pre-initialised."""

    def __init__(self, registry: CollectorRegistry, *, sources: tuple[str, ...] = (),
                 eviction_reasons: tuple[str, ...] = EVICTION_REASONS,
                 version: str = __version__):
        r = registry
        self.log_lines = Counter("vllm_audit_log_lines", "Lines read from a log source.",
                                 ["source"], registry=r)
        self.log_bytes = Counter("vllm_audit_log_bytes", "Bytes read from a log source.",
                                 ["source"], registry=r)
        self.lines_ignored = Counter(
            "vllm_audit_log_lines_ignored", "Lines that are not request-log lines, by reason.",
            ["reason"], registry=r)
        self.parse_errors = Counter(
            "vllm_audit_parse_errors", "Request-log lines that failed to parse, by reason.",
            ["reason"], registry=r)
        self.rotations = Counter("vllm_audit_rotations", "Log file rotations followed.",
                                 ["source"], registry=r)
        self.truncations = Counter(
            "vllm_audit_truncations", "Log files found shorter than the read position (re-read from 0).",
            ["source"], registry=r)
        self.rotated_deleted = Counter(
            "vllm_audit_rotated_files_deleted",
            "Rotated log files deleted after a checkpoint showed them read (--prune-rotated).",
            ["source"], registry=r)
        self.rotated_delete_failures = Counter(
            "vllm_audit_rotated_file_delete_failures",
            "Read rotated log files not deleted (--prune-rotated), by reason: permission, "
            "changed (not the bytes read), no_lock (no <log>.lock of the writer), error.",
            ["source", "reason"], registry=r)
        self.log_file_up = Gauge("vllm_audit_log_file_up",
                                 "1 when the log source is open and readable, else 0.",
                                 ["source"], registry=r)
        self.records = Counter("vllm_audit_records", "Audit records emitted.", registry=r)
        self.inflight = Gauge("vllm_audit_inflight_requests",
                              "Requests seen but not yet complete.", registry=r)
        self.evictions = Counter(
            "vllm_audit_evictions", "In-flight requests given up on (emitted incomplete), by reason.",
            ["reason"], registry=r)
        self.checkpoint_lag_bytes = Gauge(
            "vllm_audit_checkpoint_lag_bytes",
            "Bytes of a log source read past the last checkpointed position.",
            ["source"], registry=r)
        self.checkpoint_writes = Counter("vllm_audit_checkpoint_writes",
                                         "Checkpoint files written.", registry=r)
        self.checkpoint_write_failures = Counter(
            "vllm_audit_checkpoint_write_failures", "Checkpoint writes that failed.", registry=r)
        self.last_checkpoint = Gauge(
            "vllm_audit_last_checkpoint_timestamp_seconds",
            "Unix time of the last successful checkpoint write.", registry=r)
        self.middleware_dropped = Counter(
            "vllm_audit_middleware_dropped",
            "Middleware lines the in-vLLM middleware dropped on queue overflow (as it reported).",
            registry=r)
        self.archive_write_failures = Counter(
            "vllm_audit_archive_write_failures",
            "Archive batch writes (write + fsync) that failed (disk full, read-only...).", registry=r)
        self.archive_pending = Gauge(
            "vllm_audit_archive_pending_records",
            "Records sealed but not yet written to the archive file.", registry=r)
        self.ingestion_paused = Gauge(
            "vllm_audit_ingestion_paused",
            "1 while no input is read because the archive cannot be written (resumes by itself).",
            registry=r)
        self.thread_up = Gauge(
            "vllm_audit_thread_up",
            "1 while a worker thread (pipeline, loki) runs normally; 0 after an unexpected "
            "failure until it has made progress again, and when it gave up.", ["thread"], registry=r)
        self.thread_restarts = Counter(
            "vllm_audit_thread_restarts",
            "Worker threads restarted after an unexpected exception (the pipeline from its last "
            "checkpoint).", ["thread"], registry=r)
        self.log_time_offset = Gauge(
            "vllm_audit_log_time_offset_seconds",
            "Whole-quarter-hour offset found between a log's header times and UTC (the "
            "middleware's times, the exporter's clock); 0 when they agree. Not 0: "
            "--server-timezone is not vLLM's zone.", ["source"], registry=r)
        self.settings_conflicts = Counter(
            "vllm_audit_settings_conflicts",
            "Flags that contradict what vLLM's start-up line says (the flag wins), by setting; "
            "counted once per flag value and log value.", ["setting"], registry=r)
        self.vllm_settings_learned = Gauge(
            "vllm_audit_vllm_settings_learned",
            "1 when vLLM's settings were read from its start-up line for this source, else 0.",
            ["source"], registry=r)
        self.capture_mode = Gauge(
            "vllm_audit_capture_mode_info",
            "How requests are captured; always 1 on the current mode. mode=log_only with "
            "frontend=rust: vLLM runs its Rust frontend, which runs no Python middleware.",
            ["mode", "frontend"], registry=r)
        self._capture: tuple[str, str] | None = None
        self.engine_missing = Counter(
            "vllm_audit_engine_stats_missing",
            "Finished requests the vLLM stat-logger plugin wrote no engine line for, by reason "
            "(as it reported).", ["reason"], registry=r)
        self.engine_plugin_starts = Counter(
            "vllm_audit_engine_plugin_starts",
            "Start reports of the vLLM stat-logger plugin (one per engine per vLLM start).", registry=r)
        self.build_info = Gauge("vllm_audit_build_info", "Exporter version; always 1.",
                                ["version"], registry=r)
        self.build_info.labels(version).set(1)
        # Which parser runs (README, "Parser fast path"): "c" (the optional
        # accelerator was built) or "python" (not built, or VLLM_AUDIT_PURE_PYTHON=1).
        self.parser_info = Gauge("vllm_audit_parser_info", "Parser implementation in use; always 1.",
                                 ["implementation"], registry=r)
        self.parser_info.labels(parse_fast.IMPLEMENTATION).set(1)
        # Every optional C accelerator, by what it speeds up: one missing (no
        # compiler at install, a stale build, VLLM_AUDIT_PURE_PYTHON=1) gives
        # the same records, only slower -- which an operator sees here rather
        # than as an unexplained CPU figure.
        self.accelerator_info = Gauge(
            "vllm_audit_accelerator_info",
            "Optional C accelerators: implementation in use per stage (c or python); always 1.",
            ["stage", "implementation"], registry=r)
        for stage, implementation in accelerators().items():
            self.accelerator_info.labels(stage, implementation).set(1)

        for setting in ("max_log_len", "model"):
            self.settings_conflicts.labels(setting)
        for reason in IGNORED_REASONS:
            self.lines_ignored.labels(reason)
        for reason in PARSE_ERROR_REASONS:
            self.parse_errors.labels(reason)
        for reason in eviction_reasons:
            self.evictions.labels(reason)
        for reason in ENGINE_MISSING_REASONS:
            self.engine_missing.labels(reason)
        self._sources: dict[str, SourceMetrics] = {}
        for name in sources:
            self.source(name)

    def source(self, name: str) -> SourceMetrics:
        """Bound children for one log source (created at 0 on first use)."""
        found = self._sources.get(name)
        if found is None:
            found = self._sources[name] = SourceMetrics(
                lines=self.log_lines.labels(name), bytes=self.log_bytes.labels(name),
                rotations=self.rotations.labels(name), truncations=self.truncations.labels(name),
                up=self.log_file_up.labels(name),
                checkpoint_lag_bytes=self.checkpoint_lag_bytes.labels(name),
                time_offset=self.log_time_offset.labels(name))
        return found

    def set_capture_mode(self, mode: str, frontend: str) -> None:
        """Exactly one (mode, frontend) series at 1: the old one is removed."""
        if self._capture == (mode, frontend):
            return
        if self._capture is not None:
            self.capture_mode.remove(*self._capture)
        self._capture = (mode, frontend)
        self.capture_mode.labels(mode, frontend).set(1)

    def thread(self, name: str) -> tuple[Gauge, Counter]:
        """(up gauge, restarts counter) of one supervised worker thread, created
        at 0 when ``run`` starts supervising it (replay has no such threads)."""
        return self.thread_up.labels(name), self.thread_restarts.labels(name)

    def checkpoint_written(self, unix_time: float) -> None:
        self.checkpoint_writes.inc()
        self.last_checkpoint.set(unix_time)

    def engine_status(self, data: dict) -> None:
        """A status line of the stat-logger plugin: start, problem counts."""
        if data.get("started"):
            self.engine_plugin_starts.inc()
        for reason, n in data.get("problems", {}).items():
            self.engine_missing.labels(reason).inc(n)

    def checkpoint_failed(self) -> None:
        self.checkpoint_write_failures.inc()


# TailStats counters without a metric of their own above, exported by
# TailStatsCollector: (TailStats field, metric name, help).
TAIL_COUNTERS = (
    ("open_errors", "vllm_audit_tail_open_errors",
     "Opens or reads of a log source that failed for another reason than a missing file."),
    ("lost_files", "vllm_audit_tail_lost_files",
     "Saved positions whose file was gone at start (its unread tail is lost; README, tailer rules)."),
    ("position_resets", "vllm_audit_tail_position_resets",
     "Saved positions that could not be used (file gone, rewritten or replaced)."),
    ("invalid_utf8", "vllm_audit_tail_invalid_utf8_lines",
     "Lines with bytes that are not UTF-8 (replaced by U+FFFD before parsing)."),
    ("nul_bytes", "vllm_audit_tail_nul_byte_lines", "Lines that contained NUL bytes."),
    ("long_lines", "vllm_audit_tail_long_lines", "Lines over --max-line-bytes (cut, not parsed)."),
    ("partial_lines", "vllm_audit_tail_partial_lines",
     "Last lines without a newline, emitted when their file ended for us (rotation, stdin end)."),
)


class TailStatsCollector:
    """Every tailer counter, read at scrape time from the sources the
    pipeline holds now (``sources``: a callable, the pipeline may be rebuilt),
    like prometheus_client's ProcessCollector. Tailers count from 0 in each
    process, so these reset with it, as counters do."""

    def __init__(self, sources, registry: CollectorRegistry | None = None):
        self._sources = sources
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [CounterMetricFamily(name, doc, labels=["source"]) for _, name, doc in TAIL_COUNTERS]

    def collect(self):
        families = [(attr, CounterMetricFamily(name, doc, labels=["source"])) for attr, name, doc in TAIL_COUNTERS]
        for src in self._sources() or ():
            stats = getattr(src.tailer, "stats", None)
            for attr, family in families:
                family.add_metric([src.name], float(getattr(stats, attr, 0) if stats is not None else 0))
        return [family for _, family in families]
