"""Is a log's time zone the one ``--server-timezone`` says? Reported, never
applied (pure bookkeeping over the pipeline's events; clock injected).

Each source has two :class:`~exporter.logtime.ClockCheck` instances fed with
``resolved - UTC`` samples: a vLLM ``Received`` line against the middleware
line of the same request (authoritative once decided: it measures vLLM's
log alone, whatever the exporter's own clock says), and, live, a batch read
right after the source was caught up against the clock. The verdict goes to
a warning, ``vllm_audit_log_time_offset_seconds`` and ``/health``; times and
records are never corrected.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

from . import events as ev
from .correlate import base_id
from .logtime import ClockCheck, offset_note

PAIR_MEMORY = 1024  # unpaired receive times kept per side
CLOCK_CHECK_SPAN = 10.0  # s of clock time the clock check's agreeing samples must span

log = logging.getLogger("exporter.pipeline")


def _remember(table: OrderedDict, key, value) -> None:
    table[key] = value
    if len(table) > PAIR_MEMORY:
        table.popitem(last=False)


class ZoneCheck:
    """The zone check of every source of one pipeline."""

    def __init__(self, sources, *, tz, clock: Callable[[], float]):
        self.tz, self.clock = tz, clock
        # base id -> (source, resolved time) of recent vLLM "Received" lines,
        # and base id -> time of recent middleware lines; bounded.
        self._recent_received: OrderedDict = OrderedDict()
        self._recent_mw: OrderedDict = OrderedDict()
        for src in sources:
            src.pair_check = ClockCheck()
            src.clock_check = ClockCheck(min_span=CLOCK_CHECK_SPAN)

    def clock_sample(self, src) -> None:
        """A batch read right after ``src`` was caught up: its newest zone-less
        header time against the clock."""
        if src.zoneless_t is not None:
            now = self.clock()
            if src.clock_check.observe(src.zoneless_t - now, now):
                self.verdict(src)

    def pair(self, src, event, t: float | None) -> None:
        """Pair a vLLM ``Received`` line with the middleware line of the same
        request: the difference of their receive times is the vLLM log's
        zone error (plus the second or so vLLM takes to log the request)."""
        when = event.when
        if t is None or when is None:
            return
        if event.kind == ev.MIDDLEWARE:
            if when.utc_offset is None:
                return
            line = event.data.get("line") or {}
            key = line.get("request_id")
            if not isinstance(key, str) or not key:
                return
            other = self._recent_received.pop(key, None)
            if other is not None:
                if other[0].pair_check.observe(other[1] - t):
                    self.verdict(other[0])
            else:
                _remember(self._recent_mw, key, t)
            return
        if when.utc_offset is not None or not event.request_id:
            return
        key = base_id(event.request_id)[0]
        mw_t = self._recent_mw.pop(key, None)
        if mw_t is not None:
            if src.pair_check.observe(t - mw_t):
                self.verdict(src)
        else:
            _remember(self._recent_received, key, (src, t))

    def verdict(self, src) -> None:
        """Report the source's zone offset: the middleware comparison wins once
        it has decided (it measures vLLM's log alone, whatever the exporter's
        own clock says), else the clock comparison."""
        if src.pair_check.decided:
            offset, against = src.pair_check.offset, "the middleware's UTC times"
        else:
            offset, against = src.clock_check.offset, "the exporter's clock"
        if offset == src.time_offset:
            return
        src.time_offset = offset
        src.metrics.time_offset.set(offset)
        note = offset_note(offset, self.tz, self.clock(), against) if offset else None
        if src.health is not None:
            src.health.time_offset_seconds = offset
            src.health.time_offset_note = note
        if offset:
            log.warning("source %s: %s", src.name, note)
        else:
            log.warning("source %s: log times agree with UTC again", src.name)
