"""The pusher's durable state: acknowledged position and dead letters.

``loki.json`` holds the (file, offset) just past the last record Loki
acknowledged, written atomically (temp + fsync + rename + directory fsync), so
a crash leaves either the old or the new position, never a torn file.
Dead letters are appended and fsync'd *before* the position moves past them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from exporter.durable import FILE_MODE, fsync_dir, make_dir
from exporter.durable import write_atomic as write_bytes_atomic
from .archive_reader import Position



def write_atomic(path: Path, obj: object) -> None:
    make_dir(path.parent)
    write_bytes_atomic(path, json.dumps(obj, separators=(",", ":")).encode(), FILE_MODE)


def load_position(path: Path) -> tuple[Position, str | None]:
    """Saved position, or the archive start; the note explains a fallback.

    A missing file means a first start. A corrupt one (should not happen with
    atomic writes) restarts from the beginning: resending is harmless (Loki
    dedup), losing records is not.
    """
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        file, offset = obj["file"], obj["offset"]
        if (file is not None and not isinstance(file, str)) or not isinstance(offset, int) \
                or offset < 0 or (file and ("/" in file or file.startswith("."))):
            raise ValueError("bad field types")
        return Position(file, offset), None
    except FileNotFoundError:
        return Position(None, 0), None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Position(None, 0), f"unreadable {path.name} ({exc}); restarting from the archive start"


def save_position(path: Path, pos: Position) -> None:
    write_atomic(path, pos.to_json())


class DeadLetters:
    """``DIR/dead-letter/loki-YYYY-MM-DD.jsonl`` (UTC day of dead-lettering)."""

    def __init__(self, directory: Path, clock):
        self.directory = Path(directory)
        self._clock = clock

    def path_for(self, when: float) -> Path:
        day = datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%d")
        return self.directory / f"loki-{day}.jsonl"

    def write(self, items: list[dict]) -> None:
        if not items:
            return
        now = self._clock()
        make_dir(self.directory)
        path = self.path_for(now)
        stamp = datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="milliseconds")
        data = b"".join(
            json.dumps({"dead_lettered_at": stamp.replace("+00:00", "Z"), **item},
                       ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n"
            for item in items
        )
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)
