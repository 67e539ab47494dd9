"""Our middleware's JSON line → Event (pure). The line's contract is in
docs/design.md ("Middleware line"); every field is type-checked
(:mod:`exporter.parse.untrusted`), so a client's body cannot reach the
pipeline with a type it does not expect."""

from __future__ import annotations

from exporter import events as ev
from exporter.events import Event, Ignored
from exporter.parse.header import parse_iso_utc
from exporter.parse.untrusted import check_middleware_line, findings
from exporter.wire import DROPPED_TYPE, LINE_TYPE

MIDDLEWARE_TYPES = (LINE_TYPE, DROPPED_TYPE)
MALFORMED = Ignored("malformed_middleware")


def middleware_event(obj: dict) -> Event | Ignored:
    """A decoded line whose ``type`` is one of :data:`MIDDLEWARE_TYPES`."""
    if obj.get("type") == DROPPED_TYPE:
        n = obj.get("dropped")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return MALFORMED
        return Event(ev.MIDDLEWARE_DROPPED, None, parse_iso_utc(obj.get("at")), {"dropped": n})
    rid = obj.get("request_id")
    if not isinstance(rid, str) or not rid:
        return MALFORMED
    line, bad, escaped = check_middleware_line(obj)
    problems, flags = findings("middleware_invalid_field", bad, escaped)
    if flags:
        line["input_flags"] = flags
    # A line without a usable receive time is still a finished request: its
    # finish time (or, failing both, the time it was read) stands in.
    when = parse_iso_utc(line.get("received_at")) or parse_iso_utc(line.get("finished_at"))
    data = {"line": line, "problems": problems} if problems else {"line": line}
    return Event(ev.MIDDLEWARE, rid, when, data)
