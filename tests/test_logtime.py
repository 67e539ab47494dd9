"""Year and zone resolution for header times; all clocks are injected."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from exporter.events import LogTime
from exporter.logtime import TimeResolver


def clock_at(*args, tz=timezone.utc):
    stamp = datetime(*args, tzinfo=tz).timestamp()
    return lambda: stamp


def at(month, day, hour=0, minute=0, second=0):
    return LogTime(None, month, day, hour, minute, second, 0, None)


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def test_first_line_takes_the_clock_year():
    r = TimeResolver(timezone.utc, clock_at(2026, 11, 22, 10))
    assert r.resolve(at(11, 22, 9, 59, 59)) == utc(2026, 11, 22, 9, 59, 59)


def test_clock_in_january_line_in_december_is_last_year():
    r = TimeResolver(timezone.utc, clock_at(2027, 1, 1, 0, 5))
    assert r.resolve(at(12, 31, 23, 59)) == utc(2026, 12, 31, 23, 59)


def test_new_year_rollover_and_out_of_order_line():
    r = TimeResolver(timezone.utc, clock_at(2026, 12, 31, 23))
    assert r.resolve(at(12, 31, 23, 59, 59)) == utc(2026, 12, 31, 23, 59, 59)
    assert r.resolve(at(1, 1, 0, 0, 1)) == utc(2027, 1, 1, 0, 0, 1)
    assert r.resolve(at(12, 31, 23, 59, 58)) == utc(2026, 12, 31, 23, 59, 58)  # late line from before midnight
    assert r.resolve(at(1, 1, 0, 0, 2)) == utc(2027, 1, 1, 0, 0, 2)


def test_year_keeps_following_the_log_not_the_clock():
    r = TimeResolver(timezone.utc, clock_at(2026, 3, 1))
    r.resolve(at(3, 1))
    for month in (5, 8, 11, 2, 6):
        r.resolve(at(month, 1))
    assert r.state() == {"year": 2027, "month": 6}


def test_server_zone_applies_and_line_offset_wins():
    tz = ZoneInfo("Europe/Berlin")
    r = TimeResolver(tz, clock_at(2026, 7, 1))
    assert r.resolve(at(7, 1, 12)) == utc(2026, 7, 1, 10)
    assert r.resolve(LogTime(2026, 7, 1, 12, 0, 0, 500000, 0)) == utc(2026, 7, 1, 12) + 0.5


def test_dst_ambiguous_hour_picks_first_occurrence():
    tz = ZoneInfo("Europe/Berlin")
    r = TimeResolver(tz, clock_at(2026, 10, 25, 12))
    # 02:30 happens twice on 2026-10-25; fold=0 is the CEST one (UTC+2).
    assert r.resolve(at(10, 25, 2, 30)) == utc(2026, 10, 25, 0, 30)


def test_json_year_is_used_and_sets_state():
    r = TimeResolver(timezone.utc, clock_at(2030, 1, 1))
    assert r.resolve(LogTime(2026, 11, 22, 10, 0, 0, 123000, None)) == utc(2026, 11, 22, 10) + 0.123
    assert r.resolve(at(11, 22, 10, 0, 1)) == utc(2026, 11, 22, 10, 0, 1)


def test_feb_29_in_a_common_year_is_clamped():
    r = TimeResolver(timezone.utc, clock_at(2027, 3, 1))
    assert r.resolve(at(2, 29, 12)) == utc(2027, 2, 28, 12)


def test_state_round_trip_is_deterministic():
    lines = [at(12, 30), at(12, 31), at(1, 1), at(1, 2)]
    a = TimeResolver(timezone.utc, clock_at(2026, 12, 30))
    first = [a.resolve(w) for w in lines[:2]]
    b = TimeResolver(timezone.utc, clock_at(2040, 6, 1))  # a different clock must not matter
    b.restore(a.state())
    assert first + [b.resolve(w) for w in lines[2:]] == [
        utc(2026, 12, 30), utc(2026, 12, 31), utc(2027, 1, 1), utc(2027, 1, 2)
    ]
    b.restore(None)
    assert b.state() is None
