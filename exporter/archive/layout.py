"""The archive's layout on disk: the only place that knows its file names
(the archive writer, manifests, recovery, verify, export, retention and the
Loki reader all ask here).

Layout: ``audit-YYYY-MM-DD.jsonl`` (maybe ``.jsonl.gz`` after retention) and
``audit-YYYY-MM-DD.manifest.json`` per UTC day; the transparency log in
``tlog/``: ``tree.bin`` (one salt + leaf hash per record) and
``checkpoints-YYYY-MM-DD.jsonl`` (signed checkpoints, cosignatures and
timestamps, per UTC day).
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TLOG_DIR = "tlog"
_CHECKPOINTS = re.compile(r"^checkpoints-(\d{4}-\d{2}-\d{2})\.jsonl$")
_NAME = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.(jsonl|jsonl\.gz|manifest\.json)$")


def day_of(epoch_seconds: float) -> str:
    """UTC calendar day ``YYYY-MM-DD`` of an epoch time."""
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def data_name(day: str) -> str:
    return f"audit-{day}.jsonl"


def manifest_name(day: str) -> str:
    return f"audit-{day}.manifest.json"


def tree_path(root: Path) -> Path:
    return Path(root) / TLOG_DIR / "tree.bin"


def checkpoints_path(root: Path, day: str) -> Path:
    return Path(root) / TLOG_DIR / f"checkpoints-{day}.jsonl"


def list_checkpoint_files(root: Path) -> list[tuple[str, Path]]:
    """``(day, path)`` of the checkpoint files, oldest first."""
    try:
        names = os.listdir(Path(root) / TLOG_DIR)
    except FileNotFoundError:
        return []
    found = [(m.group(1), Path(root) / TLOG_DIR / n) for n in names if (m := _CHECKPOINTS.match(n))]
    return sorted(found)


def parse_name(name: str) -> tuple[str, str] | None:
    """``(day, kind)`` with kind ``jsonl``/``jsonl.gz``/``manifest.json``, or None."""
    m = _NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


@dataclass
class DayFiles:
    day: str
    jsonl: Path | None = None
    gz: Path | None = None
    manifest: Path | None = None

    @property
    def data(self) -> Path | None:
        # A crash between retention's rename and unlink leaves both; the
        # plain file is the original, the .gz an identical copy.
        return self.jsonl or self.gz


def list_days(root: Path) -> list[DayFiles]:
    """Archive files grouped by day, oldest first; other files are ignored."""
    days: dict[str, DayFiles] = {}
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    for name in names:
        parsed = parse_name(name)
        if parsed is None:
            continue
        day, kind = parsed
        entry = days.setdefault(day, DayFiles(day))
        attr = {"jsonl": "jsonl", "jsonl.gz": "gz", "manifest.json": "manifest"}[kind]
        setattr(entry, attr, root / name)
    return [days[d] for d in sorted(days)]


def open_binary(path: Path):
    """Open an archive data file for reading, transparently gunzipping."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path: Path) -> Iterator[bytes]:
    """Raw lines including their ``\\n`` (the last one may lack it: torn)."""
    with open_binary(path) as fh:
        yield from fh


def loki_keep_from(name: str | None) -> str:
    """The first day retention must keep while Loki is shipping the data file
    ``name`` (its position): that file's day; "" (keep every day) before Loki
    has a file, or for a name that is not an archive data file."""
    parsed = parse_name(name) if name else None
    return parsed[0] if parsed else ""
