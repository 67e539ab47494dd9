"""What the parser hands to the correlator (see docs/design.md, "Events")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

RECEIVED = "received"
DETAILS = "details"
BODY = "body"
OUTPUT = "output"
OUTPUT_DETAILS = "output_details"
ADDED = "added"
ABORTED = "aborted"
FAILED = "failed"
FINISHED = "finished"
ACCESS = "access"
MIDDLEWARE = "middleware"
MIDDLEWARE_DROPPED = "middleware_dropped"
STARTUP = "startup"  # a start-up line: vLLM's settings (exporter.parse.startup)
SUMMARY = "summary"  # the Rust frontend's one line per finished request (exporter.parse.rust)
ENGINE = "engine"  # the stat-logger plugin's per-request line
ENGINE_STATUS = "engine_status"  # its start and problem reports


class LogTime(NamedTuple):
    """A header time as written. Text-format vLLM lines carry no year and no
    zone (``year``/``utc_offset`` are None); resolving them is
    :mod:`exporter.logtime`'s job, not the parser's."""

    year: int | None
    month: int
    day: int
    hour: int
    minute: int
    second: int
    microsecond: int = 0
    utc_offset: int | None = None  # seconds east of UTC, when the line says


@dataclass(slots=True)
class Event:
    kind: str
    request_id: str | None
    when: LogTime | None
    data: dict = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Ignored:
    """A line that produced no event; ``reason`` is a metric label value."""

    reason: str


def id_count(ids: list[int] | int | None) -> int | None:
    """Length of a logged token-id list (the parser may already hand a count)."""
    if ids is None:
        return None
    return ids if isinstance(ids, int) else len(ids)
