"""What the pipeline reports about its sources and its archive: the self
metrics and ``/health`` fields read from the tailers' and the archive
writer's own counters (one bridge, so the commit loop does not carry it)."""

from __future__ import annotations


class StatusBridge:
    def __init__(self, selfm, health=None, *, live: bool = True):
        self.selfm, self.health, self.live = selfm, health, live
        self._archive_failures_seen = 0

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
