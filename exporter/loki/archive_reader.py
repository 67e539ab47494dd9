"""Read complete archive lines from a saved position, across daily files.

The archive (``audit-YYYY-MM-DD.jsonl``) is the write-ahead log; file names
sort in time order, so (file name, byte offset) is a total order over all
records. Only lines ending in ``\\n`` are returned: a partial tail is still
being written (or will be cut back by the pipeline's recovery).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from exporter.archive.layout import list_days

_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Position:
    file: str | None  # archive file name (no directory); None = before the first
    offset: int

    def to_json(self) -> dict:
        return {"file": self.file, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class RawLine:
    file: str
    start: int
    end: int  # offset just past the newline: the position once acknowledged
    text: str


def archive_files(directory: Path) -> list[str]:
    """The uncompressed data files, oldest first (retention compresses only
    days Loki has shipped)."""
    return [d.jsonl.name for d in list_days(directory) if d.jsonl is not None]


class ArchiveReader:
    """Stateless about acknowledgement: the caller passes where to read."""

    def __init__(self, directory: Path, committed: Callable[[], dict | None] | None = None):
        """``committed`` returns the archive state of the pipeline's last
        checkpoint (``{"file", "size", ...}``); only those bytes are read.
        Bytes past it may still be cut by crash recovery, so acknowledging
        them could later make Loki receive a record twice (its dedup state
        is not forever). None: read whole files (tests, tools)."""
        self.directory = Path(directory)
        self._committed = committed
        self._lock = threading.Lock()  # backlog caches: pusher and scrape threads
        # file -> (bytes scanned, newlines in them), for an incremental backlog.
        self._counts: dict[str, tuple[int, int]] = {}
        self._prefix: dict[str, tuple[int, int]] = {}  # file -> (acked offset, newlines)

    def size(self, name: str) -> int | None:
        """The readable size: the file's, capped at the committed size."""
        try:
            actual = (self.directory / name).stat().st_size
        except FileNotFoundError:
            return None
        if self._committed is None:
            return actual
        state = self._committed() or {}
        if not state.get("file") or name > state["file"]:
            return 0  # nothing of this file is committed yet
        if name == state["file"]:
            return min(actual, int(state.get("size") or 0))
        return actual

    def normalize(self, pos: Position) -> tuple[Position, str | None]:
        """Make a saved position usable; returns (position, note).

        A file shorter than the offset was cut back by the pipeline's
        recovery: clamp to its size (re-derived records are byte-identical,
        so resending them is deduplicated by Loki). A missing file (retention
        removed it) continues with the next later file.
        """
        files = archive_files(self.directory)
        if pos.file is None:
            return Position(None, 0), None
        size = self.size(pos.file)
        if size is None:
            later = [f for f in files if f > pos.file]
            note = f"archive file {pos.file} missing; continuing after it"
            return Position(later[0] if later else pos.file, 0), note
        if size < pos.offset:
            return Position(pos.file, size), f"{pos.file} shorter than saved offset; clamped"
        return pos, None

    def read(self, pos: Position, max_bytes: int) -> list[RawLine]:
        """Complete lines after ``pos``, about ``max_bytes`` worth (at least one
        line if any is complete, however long), continuing into later files
        only once the current file has no complete line left."""
        out: list[RawLine] = []
        budget = max_bytes
        files = archive_files(self.directory)
        if pos.file is None:
            todo = files
        else:
            todo = [f for f in files if f >= pos.file]
            if pos.file not in todo:
                todo.insert(0, pos.file)
        for name in todo:
            start = pos.offset if name == pos.file else 0
            lines = self._read_file(name, start, budget)
            out.extend(lines)
            budget -= sum(l.end - l.start for l in lines)
            if budget <= 0:
                break
            size = self.size(name)
            end = lines[-1].end if lines else start
            if size is not None and end < size:
                break  # partial tail still pending here; never skip ahead of it
        return out

    def _read_file(self, name: str, start: int, budget: int) -> list[RawLine]:
        out: list[RawLine] = []
        try:
            f = open(self.directory / name, "rb")
        except FileNotFoundError:
            return out
        end = self.size(name) or 0
        with f:
            f.seek(start)
            buf = b""
            offset = start
            while budget > 0:
                unread = end - offset - len(buf)  # readable bytes not yet taken from f
                want = min(max(_CHUNK, min(budget, 4 * _CHUNK)), unread)
                chunk = f.read(want) if want > 0 else b""
                if not chunk:
                    break
                buf += chunk
                while budget > 0:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    raw, buf = buf[: nl + 1], buf[nl + 1 :]
                    text = raw[:-1].decode("utf-8", "replace").rstrip("\r")
                    out.append(RawLine(name, offset, offset + len(raw), text))
                    offset += len(raw)
                    budget -= len(raw)
        return out

    def backlog(self, pos: Position) -> int:
        """Complete lines after ``pos`` (records not yet acknowledged); safe
        to call from the scrape thread while the pusher thread reads.

        Incremental: each file's newline count is extended by the bytes added
        since the last call, so a long outage does not rescan the backlog.
        """
        with self._lock:
            return self._backlog(pos)

    def _backlog(self, pos: Position) -> int:
        total = 0
        for name in archive_files(self.directory):
            if pos.file is not None and name < pos.file:
                self._counts.pop(name, None)
                self._prefix.pop(name, None)
                continue
            n = self._count(name)
            if name == pos.file and pos.offset:
                n -= self._count_prefix(name, pos.offset)
            total += max(0, n)
        return total

    def _count(self, name: str) -> int:
        size = self.size(name) or 0
        scanned, newlines = self._counts.get(name, (0, 0))
        if size < scanned:  # cut back by recovery: rescan
            scanned, newlines = 0, 0
        if size > scanned:
            newlines += self._newlines(name, scanned, size)
            scanned = size
        self._counts[name] = (scanned, newlines)
        return newlines

    def _count_prefix(self, name: str, offset: int) -> int:
        # The acknowledged offset only moves forward; count the gap only.
        prev_off, prev_n = self._prefix.get(name, (0, 0))
        if offset < prev_off:
            prev_off, prev_n = 0, 0
        if offset > prev_off:
            prev_n += self._newlines(name, prev_off, offset)
            prev_off = offset
        self._prefix[name] = (prev_off, prev_n)
        return prev_n

    def _newlines(self, name: str, start: int, end: int) -> int:
        count = 0
        try:
            with open(self.directory / name, "rb") as f:
                f.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = f.read(min(4 * _CHUNK, remaining))
                    if not chunk:
                        break
                    count += chunk.count(b"\n")
                    remaining -= len(chunk)
        except FileNotFoundError:
            pass
        return count
