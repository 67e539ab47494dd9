"""Year and zone resolution for header times; all clocks are injected."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from exporter.events import LogTime
from exporter.logtime import ClockCheck, TimeResolver, offset_note


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
    assert (r.state()["year"], r.state()["month"]) == (2027, 6)


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


def test_a_jump_of_six_months_or_more_keeps_the_right_year():
    """Issue #18: the old month-step rule read a forward jump of six months or
    more as a step back into the previous year."""
    r = TimeResolver(timezone.utc, clock_at(2026, 1, 10))
    assert r.resolve(at(1, 10, 9)) == utc(2026, 1, 10, 9)
    assert r.resolve(at(8, 20, 9)) == utc(2026, 8, 20, 9)  # idle from January to August
    assert r.resolve(at(3, 2, 9)) == utc(2027, 3, 2, 9)  # ... then to March
    assert r.resolve(at(3, 1, 23)) == utc(2027, 3, 1, 23)  # a late line (less than a day back)
    assert r.resolve(at(12, 31, 23, 59)) == utc(2027, 12, 31, 23, 59)  # almost a whole year on


def test_sources_are_followed_one_by_one():
    """A backlog read in one source never moves another source's year."""
    r = TimeResolver(timezone.utc, clock_at(2026, 9, 1, 12))
    assert r.resolve(at(9, 1, 11), "live") == utc(2026, 9, 1, 11)
    assert r.resolve(at(2, 1, 8), "old") == utc(2026, 2, 1, 8)  # its own first line: the clock
    assert r.resolve(at(2, 2, 8), "old") == utc(2026, 2, 2, 8)  # not 2027: "live" is its own
    assert r.resolve(at(9, 1, 11, 1), "live") == utc(2026, 9, 1, 11, 1)
    b = TimeResolver(timezone.utc, clock_at(2040, 1, 1))
    b.restore(r.state())
    assert b.resolve(at(2, 3, 8), "old") == utc(2026, 2, 3, 8)
    assert b.resolve(at(9, 2), "live") == utc(2026, 9, 2)


def test_state_written_before_per_source_following_still_restores():
    r = TimeResolver(timezone.utc, clock_at(2040, 6, 1))
    r.restore({"year": 2026, "month": 12})
    assert r.resolve(at(12, 31, 23, 59), "vllm") == utc(2026, 12, 31, 23, 59)
    assert r.resolve(at(1, 1, 0, 1), "vllm") == utc(2027, 1, 1, 0, 1)
    assert r.resolve(at(12, 20), "other") == utc(2026, 12, 20)  # from the restored month on


def test_clock_check_needs_agreeing_samples_and_ignores_odd_ones():
    c = ClockCheck(confirm=3)
    new_york = -5 * 3600
    assert not c.observe(new_york - 0.6)
    assert not c.observe(new_york + 1.2)
    assert not c.observe(1234.0)  # not near a quarter hour: ignored, no reset either
    assert c.observe(new_york - 0.2) and c.offset == new_york
    assert not c.observe(new_york)  # no change
    assert not c.observe(-0.5) and not c.observe(0.3) and c.offset == new_york
    assert c.observe(-1.0) and c.offset == 0  # fixed: three samples agree on 0
    assert not c.observe(20 * 3600)  # no zone is 20 h off: ignored
    india = 5 * 3600 + 1800
    for _ in range(2):
        c.observe(india + 30)
    assert c.observe(india - 30) and c.offset == india


def test_offset_note_names_the_zone_vllm_logs_in():
    note = offset_note(-5 * 3600, timezone.utc, utc(2026, 12, 1), "the middleware's UTC times")
    assert "5h00m behind the middleware's UTC times" in note
    assert "UTC-05:00" in note and "--server-timezone" in note and "incomplete" in note
    note = offset_note(8 * 3600, ZoneInfo("UTC"), utc(2026, 12, 1), "the exporter's clock")
    assert "8h00m ahead of the exporter's clock" in note and "UTC+08:00" in note
    assert "--server-timezone=UTC" in note and "held back" in note


def test_clock_check_ignores_a_backlog_streaming_past():
    """``docker logs -f`` replays its history into stdin first: lines hours old
    read as fast as the pipe goes. Their offsets drift within seconds of clock
    time, a zone error stays put while the clock moves on."""
    c = ClockCheck(confirm=3, min_span=10.0)
    now = 1_800_000_000.0
    for i in range(50):  # history two hours old, 30 s of it per 10 ms of clock
        c.observe(-7200 + 30 * i, at=now + 0.01 * i)
    assert not c.decided and c.offset == 0
    for i in range(3):  # a real 2 h zone error, seconds apart
        changed = c.observe(-7200 - 0.5, at=now + 4 * i)
    assert not changed  # 3 votes over 8 s: not yet
    assert c.observe(-7200.2, at=now + 11) and c.offset == -7200
