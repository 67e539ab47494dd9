"""The append-only checkpoint store: ``ARCHIVE/tlog/checkpoints-YYYY-MM-DD.jsonl``.

One JSON object per line, appended and fsynced, never rewritten:

* ``{"kind": "checkpoint", "note": "<signed note>"}``: a signed checkpoint;
* ``{"kind": "cosignatures", "checkpoint": "<checkpoint text>", "lines": ["— name b64\\n", ...]}``:
  witness cosignatures over that checkpoint text (as they arrived);
* ``{"kind": "timestamp", "checkpoint": "<checkpoint text>", "token": "<base64 RFC 3161 token>"}``.

An entry goes to the file of its UTC day (never an earlier file than the
newest one, whatever the clock does). A day's file is sealed by the first
checkpoint of the next day: that checkpoint, signed by the old day's key,
carries the SHA-256 of the whole old file (:mod:`exporter.transparency.log`),
so a later edit of a closed day is caught without trusting the host. A torn
last line (a crash mid-append) is cut off when the store opens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from exporter.archive.layout import TLOG_DIR, checkpoints_path, day_of, list_checkpoint_files
from exporter.durable import append_durable, make_dir

FILE_MODE = 0o640


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_entries(path: Path) -> Iterator[tuple[int, dict | None, bytes]]:
    """``(line number, entry or None if unparsable, raw line)`` of one file."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = None
            yield n, entry if isinstance(entry, dict) else None, raw


class CheckpointStore:
    def __init__(self, root: Path, clock: Callable[[], float]) -> None:
        self.root = Path(root)
        self.clock = clock
        self._lock = threading.Lock()
        make_dir(self.root / TLOG_DIR)
        self._repair()

    def _repair(self) -> None:
        files = list_checkpoint_files(self.root)
        if not files:
            return
        path = files[-1][1]
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.truncate(path, end)  # torn last append: never acknowledged

    def days(self) -> list[tuple[str, Path]]:
        return list_checkpoint_files(self.root)

    def newest_day(self) -> str | None:
        files = self.days()
        return files[-1][0] if files else None

    def day_for(self, now: float) -> str:
        newest = self.newest_day()
        today = day_of(now)
        return max(today, newest) if newest else today

    def append(self, entry: dict, day: str | None = None) -> str:
        """Append ``entry`` durably; returns the day file it went to."""
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            day = day or self.day_for(self.clock())
            append_durable(checkpoints_path(self.root, day), line, FILE_MODE)
        return day

    def entries(self) -> Iterator[tuple[str, int, dict | None]]:
        for day, path in self.days():
            for n, entry, _ in read_entries(path):
                yield day, n, entry

    def last_checkpoint(self) -> tuple[str, str] | None:
        """``(day, note)`` of the newest signed checkpoint."""
        for day, path in reversed(self.days()):
            last = None
            for _, entry, _ in read_entries(path):
                if entry and entry.get("kind") == "checkpoint" and isinstance(entry.get("note"), str):
                    last = entry["note"]
            if last is not None:
                return day, last
        return None


def cosignature_entry(checkpoint_text: str, lines: list[str]) -> dict:
    return {"kind": "cosignatures", "checkpoint": checkpoint_text, "lines": list(lines)}


def timestamp_entry(checkpoint_text: str, token: bytes) -> dict:
    return {"kind": "timestamp", "checkpoint": checkpoint_text, "token": base64.b64encode(token).decode()}
