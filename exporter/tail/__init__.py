"""Sources: follow log files like ``tail -F`` (``file``: rotation and
truncation rules; ``position``: checkpointable positions; ``lines``: line
cutting and counters) or read a pipe (``stdin``). Every source is a
:class:`LineSource`."""

from __future__ import annotations

from typing import Protocol

from exporter.tail.file import FileTailer
from exporter.tail.lines import Line, TailStats
from exporter.tail.stdin import StdinTailer


class LineSource(Protocol):
    """What the pipeline reads: lines, a checkpointable position, health."""

    path: str
    at_eof: bool
    stats: TailStats

    def poll(self, max_lines: int | None = None) -> list[Line]: ...

    def position(self) -> dict | None: ...


__all__ = ["FileTailer", "Line", "LineSource", "StdinTailer", "TailStats"]
