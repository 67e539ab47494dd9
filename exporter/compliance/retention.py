"""Retention: gzip, then delete, archive days older than N days.

Only closed days are touched (they have a manifest and are not the newest
file): the manifest is what keeps the chain verifiable across a deleted day,
so a day without one is never deleted. Manifests themselves are never
deleted (a few hundred bytes per day).
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from exporter.compliance.files import fsync_dir, list_days


@dataclass(frozen=True)
class Action:
    day: str
    action: str  # "compressed" | "deleted" | "cleaned" (stale .jsonl beside its .gz)
    path: str


def _cutoff(now: float, days: int) -> str:
    """Days strictly before this ``YYYY-MM-DD`` are older than ``days`` days."""
    return (datetime.fromtimestamp(now, tz=timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%d")


def _gzip(src: Path, mode: int) -> Path:
    dst = src.with_name(src.name + ".gz")
    tmp = src.with_name(f".{dst.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as raw:
        # mtime=0: the .gz bytes depend only on the content (reproducible).
        with gzip.GzipFile(filename=src.name, mode="wb", fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(fin, gz, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, dst)
    fsync_dir(src.parent)
    src.unlink()
    fsync_dir(src.parent)
    return dst


def apply_retention(root: Path, *, now: float, compress_after_days: int | None = None,
                    delete_after_days: int | None = None, keep_from_day: str | None = None,
                    file_mode: int = 0o640) -> list[Action]:
    """Compress/delete closed days older than the thresholds; returns what was done.

    ``keep_from_day`` (``YYYY-MM-DD``): never touch this day or later, e.g.
    the oldest day the Loki pusher has not fully shipped yet.
    """
    root = Path(root)
    days = list_days(root)
    newest_data = max((d.day for d in days if d.data is not None), default=None)
    actions: list[Action] = []
    compress_before = _cutoff(now, compress_after_days) if compress_after_days is not None else None
    delete_before = _cutoff(now, delete_after_days) if delete_after_days is not None else None
    for d in days:
        if d.data is None or d.manifest is None or d.day == newest_data:
            continue
        if keep_from_day is not None and d.day >= keep_from_day:
            continue
        if d.jsonl is not None and d.gz is not None:
            # Crash between rename and unlink last time: the .gz is complete.
            d.jsonl.unlink()
            fsync_dir(root)
            actions.append(Action(d.day, "cleaned", str(d.jsonl)))
            d.jsonl = None
        if delete_before is not None and d.day < delete_before:
            path = d.data
            path.unlink()
            fsync_dir(root)
            actions.append(Action(d.day, "deleted", str(path)))
        elif compress_before is not None and d.day < compress_before and d.jsonl is not None:
            actions.append(Action(d.day, "compressed", str(_gzip(d.jsonl, file_mode))))
    return actions


def retention_main(archive_dir: str, *, compress_after_days: int | None, delete_after_days: int | None,
                   keep_from_day: str | None = None, clock=time.time, out=None) -> int:
    """Entry point for a ``retention`` subcommand or a periodic pipeline task."""
    for a in apply_retention(Path(archive_dir), now=clock(), compress_after_days=compress_after_days,
                             delete_after_days=delete_after_days, keep_from_day=keep_from_day):
        if out is not None:
            print(f"{a.action} {a.path}", file=out)
    return 0
