"""``Request ID JSON body: RAW``: the client's request body that vLLM logs at
DEBUG (pure; type checks in :mod:`exporter.parse.untrusted`). RAW runs to the
end of the line; a body cut by ``--max-log-len`` keeps the event with
``body`` None."""

from __future__ import annotations

import json

from exporter import events as ev
from exporter.events import Event, Ignored, LogTime
from exporter.parse.untrusted import check_body, findings

_BAD_BODY = Ignored("malformed_body")


def body_event(s: str, start: int, rid: str, when: LogTime | None,
               projected: dict | None = None) -> Event | Ignored:
    """The body event of the JSON text ``s[start:]`` (the C accelerator calls this too).

    ``projected``: from the C accelerator (``_scan_body.h``), the members of
    the body that :func:`check_body` reads, exactly as ``json.loads`` gives
    them, the rest of the JSON validated but never built; None: json.loads
    here (the reference, and the only reader of a body the accelerator
    declines, such as one cut by ``--max-log-len``)."""
    raw = s[start:]
    if not raw.startswith("{"):
        return _BAD_BODY  # not even the start of the client's JSON object
    closed = None
    try:
        body = json.loads(raw) if projected is None else projected
    except (ValueError, RecursionError):
        body = None  # --max-log-len cut it (or 0.31's [:-1] slice): keep the event
        try:
            # 0.31 drops the closing "}" when --max-log-len is unset: the
            # body as it would be with it. Only the correlator, knowing
            # the start-up line's version and max_log_len, may use it.
            closed = json.loads(raw + "}")
        except (ValueError, RecursionError):
            closed = None
    problems: list[str] = []
    if isinstance(body, dict):
        body, bad, escaped = check_body(body)
        problems, flags = findings("body_invalid_field", bad, escaped)
        if flags:
            body["input_flags"] = flags
    else:
        body = None
    data = {"body": body, "raw_len": len(raw), "truncated_body": body is None}
    if isinstance(closed, dict):
        closed, bad, escaped = check_body(closed)
        more, flags = findings("body_invalid_field", bad, escaped)
        if flags:
            closed["input_flags"] = flags
        data["body_closed"] = closed
        problems = more
    if problems:
        data["problems"] = problems
    return Event(ev.BODY, rid, when, data)
