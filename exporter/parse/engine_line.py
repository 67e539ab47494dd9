"""The stat-logger plugin's JSON lines → Events (pure). Shape:
:mod:`exporter.statlogger.line` and docs/design.md ("Engine line").

Every field is type-checked (:mod:`exporter.parse.untrusted`'s checker): a
field of another type is read as absent (null in the record) and the line is
counted under ``engine_invalid_field``; a line without a request id is
``malformed_engine``. The status line's problem counts become
``vllm_audit_engine_stats_missing_total{reason}``.
"""

from __future__ import annotations

from exporter import events as ev
from exporter.events import Event, Ignored
from exporter.parse.header import parse_iso_utc
from exporter.parse.untrusted import _Checker, clean_text
from exporter.record import MAX_MEASURE
from exporter.wire import ENGINE_PROBLEMS, ENGINE_STATUS_TYPE, ENGINE_TYPE

ENGINE_TYPES = (ENGINE_TYPE, ENGINE_STATUS_TYPE)
MALFORMED_ENGINE = Ignored("malformed_engine")
_SECONDS = ("queue_seconds", "prefill_seconds", "decode_seconds", "inference_seconds", "e2e_seconds",
            "share_seconds")
_COUNTS = ("prompt_tokens", "generation_tokens", "cached_tokens", "preemptions", "engine_index")


def engine_event(obj: dict) -> Event | Ignored:
    if obj.get("type") == ENGINE_STATUS_TYPE:
        return _status(obj)
    rid = obj.get("request_id")
    if not isinstance(rid, str) or not rid:
        return MALFORMED_ENGINE
    rid, escaped = clean_text(rid)
    c = _Checker()
    line = {"request_id": rid}
    for name in ("arrived_at", "finished_at", "finish_reason"):
        line[name] = c.text(name, obj.get(name))
    for name in _SECONDS:
        line[name] = c.number(name, obj.get(name))
    for name in _COUNTS:
        line[name] = c.integer(name, obj.get(name))
    line["devices"] = c.integer("devices", obj.get("devices"), 1)
    problems = (["engine_invalid_field"] if c.bad else []) + \
        (["unencodable_text"] if escaped or c.escaped else [])
    data = {"engine": line, "problems": problems} if problems else {"engine": line}
    when = parse_iso_utc(line["finished_at"]) or parse_iso_utc(line["arrived_at"])
    return Event(ev.ENGINE, rid, when, data)


def _status(obj: dict) -> Event | Ignored:
    raw = obj.get("problems")
    if not isinstance(raw, dict):
        return MALFORMED_ENGINE
    problems = {}
    for reason, n in raw.items():
        # Beyond MAX_MEASURE (a forged line's int of 400 digits) the counter's
        # inc() raised OverflowError and stopped the pipeline: malformed too.
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_MEASURE:
            return MALFORMED_ENGINE
        reason = reason if reason in ENGINE_PROBLEMS else "other"  # a label value: bounded
        problems[reason] = problems.get(reason, 0) + n
    started = obj.get("started")
    return Event(ev.ENGINE_STATUS, None, parse_iso_utc(obj.get("at")),
                 {"problems": problems, "started": isinstance(started, dict)})
