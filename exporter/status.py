"""What the pipeline reports about its sources and its archive: the self
metrics and ``/health`` fields read from the tailers' and the archive
writer's own counters, and what vLLM's start-up lines said (learned
settings, flag conflicts, the capture mode) -- one bridge, so the commit
loop does not carry it."""

from __future__ import annotations

import logging

log = logging.getLogger("exporter.pipeline")

_RUST_NOTE = ("vLLM runs its Rust frontend (VLLM_USE_RUST_FRONTEND=1): no Python middleware "
              "runs, so middleware capture is off; records come from its log only")


class StatusBridge:
    def __init__(self, selfm, health=None, *, live: bool = True):
        self.selfm, self.health, self.live = selfm, health, live
        self._archive_failures_seen = 0
        self._capture_state: tuple[str, str] | None = None

    def source(self, src) -> None:
        """A source's tailer state → its gauges, counters and /health entry."""
        t = src.tailer
        m = src.metrics
        up = bool(getattr(t, "up", True))
        m.up.set(1 if up else 0)
        stats = getattr(t, "stats", None)
        if stats is not None:  # the tailer counts; export what is new since last time
            for attr, counter in (("rotations", m.rotations), ("truncations", m.truncations)):
                value = getattr(stats, attr, 0)
                if value > src.seen.get(attr, 0):
                    counter.inc(value - src.seen.get(attr, 0))
                src.seen[attr] = value
        h = src.health
        if h is not None:
            h.up = up
            h.error = None if up else getattr(stats, "error", None)
            h.waiting = not up and bool(getattr(stats, "waiting", False))
            h.last_line_unix = src.last_line_unix
            h.at_eof = bool(t.at_eof)
            pos = t.position() or {}
            h.position = int(pos.get("offset", 0) or 0)
            size = getattr(t, "size", None)
            h.size = size
            h.lag_bytes = max(0, (size or 0) - h.position) if size is not None else 0
            m.checkpoint_lag_bytes.set(h.lag_bytes)

    def archive(self, archive) -> None:
        """Export the archive writer's state: pending records, write failures,
        whether ingestion is paused (gauges, counter, /health)."""
        paused = self.live and bool(getattr(archive, "full", False))
        pending = int(getattr(archive, "pending", 0) or 0)
        failures = int(getattr(archive, "write_failures", 0) or 0)
        selfm = self.selfm
        if failures > self._archive_failures_seen:
            selfm.archive_write_failures.inc(failures - self._archive_failures_seen)
        self._archive_failures_seen = failures
        selfm.archive_pending.set(pending)
        selfm.ingestion_paused.set(1 if paused else 0)
        if self.health is not None:
            h = self.health.archive
            h.write_error = getattr(archive, "write_error", None)
            h.failing_since_unix = getattr(archive, "failing_since", None)
            h.pending_records = pending
            h.ingestion_paused = paused

    # -- what vLLM's start-up lines said (exporter.learned) --------------------

    def learned(self, src) -> None:
        """A source's learned settings → its gauge and /health entry."""
        self.selfm.vllm_settings_learned.labels(src.name).set(1 if src.cfg is not None else 0)
        if src.health is not None:
            src.health.vllm = src.learned

    def conflict(self, source: str, found: tuple[str, str, str], *, warn: bool) -> None:
        """A flag that contradicts the start-up line: counted (per process), warned once."""
        setting, flag, logged = found
        self.selfm.settings_conflicts.labels(setting).inc()
        if warn:
            log.warning("source %s: --%s is %s but vLLM's start-up line says %s; the flag wins",
                        source, setting.replace("_", "-"), flag, logged)

    @property
    def capture_is_middleware(self) -> bool:
        return self._capture_state is not None and self._capture_state[0] == "middleware"

    def capture(self, sources, middleware_seen: bool) -> None:
        """vllm_audit_capture_mode_info and /health's ``capture``: middleware
        capture is on once middleware lines are read, unless vLLM runs its
        Rust frontend (no Python middleware runs there)."""
        learned = [s.learned for s in sources if s.learned is not None]
        frontend = "rust" if any(x.get("frontend") == "rust" for x in learned) else \
            "python" if any(x.get("known") for x in learned) else "unknown"
        mw = middleware_seen and frontend != "rust"
        state = ("middleware" if mw else "log_only", frontend)
        if state == self._capture_state:
            return
        self._capture_state = state
        self.selfm.set_capture_mode(*state)
        if self.health is not None:
            self.health.capture = {"mode": state[0], "frontend": frontend, "middleware": "on" if mw else "off",
                                   "note": _RUST_NOTE if frontend == "rust" else None}
