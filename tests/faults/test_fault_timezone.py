"""Case 32 (issue #18, item 6): vLLM logs in another zone than
``--server-timezone``. Its text format has no zone, so every header time is
read hours off: on New York time with the default UTC every request was
recorded incomplete (its output dropped), on Shanghai time nothing was
recorded for 8 hours — silently. Now the offset is detected (against the
middleware's UTC times for the same request, and against the exporter's
clock for lines read as they are written) and reported: a log warning,
``vllm_audit_log_time_offset_seconds{source}``, and /health 503 naming the
zone to set. Detection never changes a record: the archive is byte-identical
with the check disabled."""

from __future__ import annotations

import logging

import pytest

from exporter import logtime as logtime_mod
from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

from .harness import (
    FIXTURES, START, YEAR, Exporter, FakeClock, Writer, capture_lines, copies, header_epoch, sample,
    shift_times, split_at_requests,
)

LINES = capture_lines()
NEW_YORK = -5 * 3600  # November: EST
SHANGHAI = 8 * 3600


def _archive_bytes(archive) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(archive.glob("audit-*.jsonl")))


def _parts(offset):
    """Three copies of the capture (90 s of traffic), each in two parts with
    requests in both, header times in a zone ``offset`` s from UTC."""
    out = []
    for copy in copies(3):
        out += split_at_requests(shift_times(copy, offset), 0.5)
    return out


def _run_live(exp, parts, offset):
    """vLLM writes ``parts`` one after another; the exporter's clock is the
    true UTC time just after each."""
    w = Writer(exp.log)
    exp.start()
    for part in parts:
        data = w.write(part)
        times = [t for t in (header_epoch(ln, YEAR) for ln in data.splitlines()) if t is not None]
        exp.clock.now = max(exp.clock.now, max(times) - offset + 1)
        exp.pump()
    exp.settle()


@pytest.mark.parametrize("zone", [None, "America/New_York"])
def test_32_vllm_on_new_york_time_is_detected_against_the_clock(make_exporter, caplog, zone):
    exp = make_exporter(loki=None, extra=["--server-timezone", zone] if zone else [])
    with caplog.at_level(logging.WARNING, logger="exporter.pipeline"):
        _run_live(exp, _parts(NEW_YORK), NEW_YORK)  # vLLM's local wall time
    reg, health = exp.rt.registry, exp.rt.health
    source = str(exp.log)
    if zone is not None:  # configured right: nothing to say
        assert sample(reg, "vllm_audit_log_time_offset_seconds", source=source) == 0
        assert health.report()[0], health.report()[1]["problems"]
        assert not [r for r in caplog.records if "log times" in r.getMessage()]
        return
    assert sample(reg, "vllm_audit_log_time_offset_seconds", source=source) == NEW_YORK
    ok, body = health.report()
    assert not ok
    problem = [p for p in body["problems"] if p.startswith(f"source {source}:")]
    assert problem and "5h00m behind the exporter's clock" in problem[0]
    assert "UTC-05:00" in problem[0] and "--server-timezone" in problem[0]
    assert body["sources"][source]["time_offset_seconds"] == NEW_YORK
    assert [r for r in caplog.records if "5h00m behind" in r.getMessage()]


def test_32_detection_does_not_change_a_record(make_exporter, tmp_path, monkeypatch):
    exp = make_exporter(loki=None)
    _run_live(exp, _parts(NEW_YORK), NEW_YORK)
    assert sample(exp.rt.registry, "vllm_audit_log_time_offset_seconds", source=str(exp.log)) != 0
    with_check = _archive_bytes(exp.archive)
    assert with_check

    monkeypatch.setattr(logtime_mod.ClockCheck, "observe", lambda self, delta, at=0.0: False)
    (tmp_path / "again").mkdir()
    exp2 = Exporter(tmp_path / "again", FakeClock(START))  # the same run, the check disabled
    try:
        _run_live(exp2, _parts(NEW_YORK), NEW_YORK)
        assert sample(exp2.rt.registry, "vllm_audit_log_time_offset_seconds",
                      source=str(exp2.log)) == 0
    finally:
        exp2.crash()
    assert _archive_bytes(exp2.archive) == with_check


def _replay(tmp_path, name, vllm_lines, extra=()):
    log = tmp_path / f"{name}.log"
    log.write_bytes(b"".join(vllm_lines))
    args = make_parser().parse_args(
        ["replay", str(log), str(FIXTURES / "middleware" / "middleware.jsonl"),
         "--archive-dir", str(tmp_path / f"{name}-archive"), "--model", "tiny", "--no-progress",
         *extra])
    rt, _ = replay_into(build_settings("replay", args, {}), quiet=True)
    return rt, log


def test_32_vllm_on_shanghai_time_is_detected_against_the_middleware(tmp_path, monkeypatch):
    vllm = capture_lines(FIXTURES / "middleware" / "vllm.log")
    rt, log = _replay(tmp_path, "shanghai", shift_times(vllm, SHANGHAI))
    source = f"replay:{log.resolve()}"
    assert sample(rt.registry, "vllm_audit_log_time_offset_seconds", source=source) == SHANGHAI
    ok, body = rt.health.report()
    assert not ok
    assert any("8h00m ahead of the middleware's UTC times" in p and "UTC+08:00" in p
               for p in body["problems"]), body["problems"]
    detected = _archive_bytes(tmp_path / "shanghai-archive")

    rt_ok, log_ok = _replay(tmp_path, "right", shift_times(vllm, SHANGHAI),
                            extra=["--server-timezone", "Asia/Shanghai"])
    assert sample(rt_ok.registry, "vllm_audit_log_time_offset_seconds",
                  source=f"replay:{log_ok.resolve()}") == 0
    assert rt_ok.health.report()[0]

    monkeypatch.setattr(logtime_mod.ClockCheck, "observe", lambda self, delta, at=0.0: False)
    _replay(tmp_path, "unchecked", shift_times(vllm, SHANGHAI))
    assert _archive_bytes(tmp_path / "unchecked-archive") == detected  # same bytes, check or not


def test_32_a_jump_of_seven_months_keeps_the_year_across_a_restart(make_exporter, clock):
    """A year-less log idle from January to August (the old month-step rule
    read that as a step back into the previous year), with a restart between."""
    import calendar
    import json
    base = calendar.timegm((2026, 11, 22, 2, 27, 10))
    first, second = split_at_requests(LINES, 0.5)
    january = shift_times(first, calendar.timegm((2027, 1, 10, 9, 0, 0)) - base)
    august = shift_times(second, calendar.timegm((2027, 8, 20, 9, 0, 0)) - base)
    clock.now = calendar.timegm((2027, 1, 10, 8, 0, 0))
    exp = make_exporter(loki=None)
    w = Writer(exp.log)
    exp.start()
    exp.follow(w.write(january))
    exp.settle()
    exp.crash()
    clock.now = calendar.timegm((2027, 8, 20, 8, 0, 0))
    exp.start()
    exp.follow(w.write(august))
    exp.settle()
    days = sorted({json.loads(ln)["ts"][:10] for p in exp.archive.glob("audit-*.jsonl")
                   for ln in p.read_text().splitlines()})
    assert days == ["2027-01-10", "2027-08-20"]
