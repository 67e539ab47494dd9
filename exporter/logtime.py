"""Turn a header :class:`~exporter.events.LogTime` into epoch seconds, and
notice when a log's clock is not the zone it is read in.

vLLM's text formatter writes ``MM-DD HH:MM:SS``: no year, no zone, the
container's local time. Rules:

- Zone: ``utc_offset`` from the line when it has one (middleware lines),
  otherwise the configured server zone (``tz``, default UTC at the CLI).
- Year: the line's own year when it has one (JSON formatter ``asctime``,
  middleware). Otherwise, for the first line of a source, the year of the
  injected clock, minus one when that would put the line more than a day in
  the future (the clock says January, the line says December: last year).
  After that the year follows the source's own previous line, because a log
  only moves forward: the line gets the earliest year that puts it no more
  than a day *before* the previous line. So ``12-31`` → ``01-01`` is a new
  year, a late ``12-31`` line just after ``01-01`` stays in the old year, and
  a jump of six months or more forward (vLLM idle from March to November,
  or from August to March) keeps the right year; only a gap of a whole year
  or more cannot be seen in a year-less log. Each source is followed on its
  own: two inputs read with a backlog between them never confuse each other.
- DST: an ambiguous wall time (the repeated hour) resolves with ``fold=0``,
  the first occurrence; a wall time in the spring gap is read with the offset
  in force before the gap (``zoneinfo``'s behaviour for ``fold=0``).
- An impossible date for the chosen year (29 February) is clamped to the last
  day of the month rather than dropped: the correlator needs *a* time.

State is, per source, the last (year, month, time), plus the last (year,
month) overall; :meth:`TimeResolver.state` and :meth:`TimeResolver.restore`
make it checkpointable (a state written before per-source following, just
``{"year", "month"}``, still restores), so a restart re-derives identical
timestamps.

:class:`ClockCheck` is the zone check: fed differences between a log's
resolved times and a UTC reference for the same moment (the middleware's
``received_at`` for the same request, or the exporter's clock for a line
read as soon as it was written), it reports an offset of a whole number of
quarter hours once several samples agree: the zone vLLM logs in is not
``--server-timezone``. It only reports; the times (and so the records) are
never corrected, so a replay and a live run of the same input write the
same bytes.
"""

from __future__ import annotations

import calendar
import time
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Callable

from exporter.events import LogTime

_FUTURE_SLACK = timedelta(days=1)
_BACK_SLACK = 86400.0  # s: how far a source's line may go back behind its previous one


class TimeResolver:
    """Resolve year-less, zone-less header times; deterministic given the clock."""

    def __init__(self, tz: tzinfo = timezone.utc, clock: Callable[[], float] | None = None) -> None:
        self._tz = tz
        self._clock = clock or time.time
        self._year: int | None = None
        self._month: int | None = None
        self._last: dict[str, tuple[int, int, float]] = {}  # source -> (year, month, epoch)
        self._legacy: tuple[int, int] | None = None  # restored {"year", "month"} state

    @property
    def tz(self) -> tzinfo:
        return self._tz

    def resolve(self, when: LogTime, source: str = "") -> float:
        """Epoch seconds of ``when`` (a line of ``source``); updates the year state."""
        year = when.year if when.year is not None else self._guess_year(when, source)
        zone = self._tz if when.utc_offset is None else timezone(timedelta(seconds=when.utc_offset))
        t = _local(year, when, zone).timestamp()
        self._year, self._month = year, when.month
        self._last[source] = (year, when.month, t)
        return t

    def _guess_year(self, when: LogTime, source: str) -> int:
        prev = self._last.get(source)
        if prev is None and self._legacy is not None:
            year, month = self._legacy  # from the start of that month
            prev = (year, month, _local(year, LogTime(year, month, 1, 0, 0, 0), self._tz).timestamp())
        if prev is None:
            now = datetime.fromtimestamp(self._clock(), self._tz)
            year = now.year
            if _local(year, when, self._tz) > now + _FUTURE_SLACK:
                year -= 1
            return year
        year, _, t = prev
        floor = t - _BACK_SLACK
        for candidate in (year - 1, year):
            if _local(candidate, when, self._tz).timestamp() >= floor:
                return candidate
        return year + 1

    def state(self) -> dict | None:
        """JSON-able year state, or None before the first line."""
        if self._year is None:
            return None
        return {"year": self._year, "month": self._month,
                "sources": {name: list(v) for name, v in self._last.items()}}

    def restore(self, state: dict | None) -> None:
        """Load what :meth:`state` returned."""
        self._last, self._legacy = {}, None
        if not state:
            self._year = self._month = None
            return
        self._year, self._month = int(state["year"]), int(state["month"])
        sources = state.get("sources")
        if sources is None:  # written before sources were followed one by one
            self._legacy = (self._year, self._month)
            return
        for name, (year, month, t) in sources.items():
            self._last[name] = (int(year), int(month), float(t))


QUARTER_HOUR = 900


class ClockCheck:
    """Is a log's clock off UTC by a whole number of quarter hours?

    Pure: :meth:`observe` takes ``log time - UTC`` for one moment (seconds)
    and returns True when the verdict (:attr:`offset`) changed. A sample
    within ``tolerance`` of a multiple of 15 minutes (and within the zones
    that exist, ±``max_offset``) votes for that multiple; others (a line read
    from a backlog, a request that took long to log) are ignored. The verdict
    moves to a value once ``confirm`` consecutive votes agree on it, so a
    single odd sample never raises (or clears) the alarm, and — with
    ``min_span`` — only once those votes span that many seconds of ``at``
    (the sample's clock time): a real zone error stays put while the clock
    moves on, a backlog streaming past (``docker logs -f`` replaying its
    history into stdin) does not.
    """

    def __init__(self, *, confirm: int = 3, tolerance: float = 120.0,
                 max_offset: float = 15 * 3600, min_span: float = 0.0) -> None:
        self.confirm = confirm
        self.tolerance = tolerance
        self.max_offset = max_offset
        self.min_span = min_span
        self.offset = 0  # seconds; 0: consistent (or not enough samples yet)
        self.decided = False  # a verdict has been reached at least once
        self._vote: int | None = None
        self._votes = 0
        self._since = 0.0

    def observe(self, delta: float, at: float = 0.0) -> bool:
        q = int(round(delta / QUARTER_HOUR)) * QUARTER_HOUR
        if abs(delta - q) > self.tolerance or abs(q) > self.max_offset:
            return False
        if q == self._vote:
            self._votes += 1
        else:
            self._vote, self._votes, self._since = q, 1, at
        if self._votes < self.confirm or at - self._since < self.min_span:
            return False
        changed = q != self.offset or not self.decided
        self.offset, self.decided = q, True
        return changed


def offset_note(offset: int, tz: tzinfo, at: float, against: str) -> str:
    """The operator-facing sentence for a non-zero :attr:`ClockCheck.offset`."""
    zone_name = getattr(tz, "key", None) or str(tz)
    configured = datetime.fromtimestamp(at, tz).utcoffset() or timedelta(0)
    actual = int(configured.total_seconds()) + offset
    side = "behind" if offset < 0 else "ahead of"
    effect = ("requests are recorded incomplete before their output is read" if offset < 0 else
              "finished requests are held back until the clock catches up")
    return (f"log times read in --server-timezone={zone_name} are {_hm(abs(offset))} {side} "
            f"{against}: vLLM seems to log in a zone at {_utc(actual)} at that time; set "
            f"--server-timezone to vLLM's zone (its TZ). Until then {effect}")


def _hm(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _utc(offset: int) -> str:
    sign = "-" if offset < 0 else "+"
    return f"UTC{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"


def _local(year: int, when: LogTime, zone: tzinfo) -> datetime:
    day = min(when.day, calendar.monthrange(year, when.month)[1])
    return datetime(
        year, when.month, day, when.hour, when.minute, when.second, when.microsecond, tzinfo=zone, fold=0
    )
