"""Turn a header :class:`~exporter.events.LogTime` into epoch seconds.

vLLM's text formatter writes ``MM-DD HH:MM:SS``: no year, no zone, the
container's local time. Rules:

- Zone: ``utc_offset`` from the line when it has one (middleware lines),
  otherwise the configured server zone (``tz``, default UTC at the CLI).
- Year: the line's own year when it has one (JSON formatter ``asctime``,
  middleware). Otherwise, for the first line, the year of the injected clock,
  minus one when that would put the line more than a day in the future (the
  clock says January, the line says December: last year). After that the year
  follows the last resolved time: a month jump of six or more backwards
  (12 → 1) is a new year, six or more forwards (1 → 12, an out-of-order line
  across New Year) is the previous year.
- DST: an ambiguous wall time (the repeated hour) resolves with ``fold=0``,
  the first occurrence; a wall time in the spring gap is read with the offset
  in force before the gap (``zoneinfo``'s behaviour for ``fold=0``).
- An impossible date for the chosen year (29 February) is clamped to the last
  day of the month rather than dropped: the correlator needs *a* time.

State is the last (year, month); :meth:`TimeResolver.state` and
:meth:`TimeResolver.restore` make it checkpointable, so a restart re-derives
identical timestamps.
"""

from __future__ import annotations

import calendar
import time
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Callable

from exporter.events import LogTime

_FUTURE_SLACK = timedelta(days=1)


class TimeResolver:
    """Resolve year-less, zone-less header times; deterministic given the clock."""

    def __init__(self, tz: tzinfo = timezone.utc, clock: Callable[[], float] | None = None) -> None:
        self._tz = tz
        self._clock = clock or time.time
        self._year: int | None = None
        self._month: int | None = None

    def resolve(self, when: LogTime) -> float:
        """Epoch seconds of ``when``; updates the year state."""
        year = when.year if when.year is not None else self._guess_year(when)
        self._year, self._month = year, when.month
        zone = self._tz if when.utc_offset is None else timezone(timedelta(seconds=when.utc_offset))
        return _local(year, when, zone).timestamp()

    def _guess_year(self, when: LogTime) -> int:
        if self._year is None or self._month is None:
            now = datetime.fromtimestamp(self._clock(), self._tz)
            year = now.year
            if _local(year, when, self._tz) > now + _FUTURE_SLACK:
                year -= 1
            return year
        step = when.month - self._month
        if step <= -6:
            return self._year + 1
        if step >= 6:
            return self._year - 1
        return self._year

    def state(self) -> dict | None:
        """JSON-able year state, or None before the first line."""
        if self._year is None:
            return None
        return {"year": self._year, "month": self._month}

    def restore(self, state: dict | None) -> None:
        """Load what :meth:`state` returned."""
        if not state:
            self._year = self._month = None
            return
        self._year, self._month = int(state["year"]), int(state["month"])


def _local(year: int, when: LogTime, zone: tzinfo) -> datetime:
    day = min(when.day, calendar.monthrange(year, when.month)[1])
    return datetime(
        year, when.month, day, when.hour, when.minute, when.second, when.microsecond, tzinfo=zone, fold=0
    )
