"""Retention: gzip, then delete, archive days older than N days.

Only closed days are touched (they have a manifest and are not the newest
file): the manifest is what keeps the chain verifiable across a deleted day,
so a day without one is never deleted. Manifests themselves are never
deleted (a few hundred bytes per day).

Before a data file is deleted, its manifest gets the record of that deletion
(:func:`exporter.archive.manifest.record_deletion`), sealed with the
archive key: verify accepts a missing data file only with it. In a keyed
archive this needs the key (:class:`RetentionError` without it), and a
manifest whose seal does not verify under the key is never re-sealed: that
day is refused, not deleted (it is evidence). The record is written first,
so a crash in between leaves a recorded day whose data is still there (the
next run deletes it).
"""

from __future__ import annotations

import gzip
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from exporter.archive import manifest as mf
from exporter.archive.layout import list_days
from exporter.durable import atomic_file, fsync_dir
from exporter.record import format_ts


class RetentionError(Exception):
    """Retention cannot do what was asked (a keyed archive without its key)."""


@dataclass(frozen=True)
class Action:
    day: str
    action: str  # "compressed" | "deleted" | "cleaned" (stale .jsonl beside its .gz) | "refused"
    path: str
    detail: str = ""  # why a day was refused


def _cutoff(now: float, days: int) -> str:
    """Days strictly before this ``YYYY-MM-DD`` are older than ``days`` days."""
    return (datetime.fromtimestamp(now, tz=timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%d")


def _gzip(src: Path, mode: int) -> Path:
    dst = src.with_name(src.name + ".gz")
    with open(src, "rb") as fin, atomic_file(dst, mode) as raw:
        # mtime=0: the .gz bytes depend only on the content (reproducible).
        with gzip.GzipFile(filename=src.name, mode="wb", fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(fin, gz, 1 << 20)
    src.unlink()
    fsync_dir(src.parent)
    return dst


def _delete(root: Path, day, *, now: float, delete_after_days: int, key: bytes | None,
            file_mode: int) -> Action:
    path = day.data
    try:
        m = mf.read_manifest(day.manifest)
    except (OSError, ValueError) as exc:
        return Action(day.day, "refused", str(path), f"unreadable manifest: {exc}")
    keyed = key is not None or m.get("chain") == "hmac-sha256" or m.get("hmac") is not None
    if keyed and key is None:
        raise RetentionError(f"{day.manifest.name}: the archive is HMAC-chained; deleting a day needs "
                             "its key to record the deletion (--hmac-key-file or VLLM_AUDIT_HMAC_KEY)")
    if keyed and not mf.hmac_ok(m, key):
        return Action(day.day, "refused", str(path), "its manifest's hmac does not verify with this key "
                      "(edited, or another key): not deleted")
    sealed = mf.record_deletion(m, deleted=path.name, at=format_ts(now),
                                delete_after_days=delete_after_days, key=key if keyed else None)
    mf.write_manifest(day.manifest, sealed, file_mode)
    path.unlink()
    fsync_dir(root)
    return Action(day.day, "deleted", str(path))


def apply_retention(root: Path, *, now: float, compress_after_days: int | None = None,
                    delete_after_days: int | None = None, keep_from_day: str | None = None,
                    file_mode: int = 0o640, key: bytes | None = None) -> list[Action]:
    """Compress/delete closed days older than the thresholds; returns what was done.

    ``keep_from_day`` (``YYYY-MM-DD``): never touch this day or later, e.g.
    the oldest day the Loki pusher has not fully shipped yet. ``key``: the
    archive's HMAC key, needed to record deletions in a keyed archive.
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
            actions.append(_delete(root, d, now=now, delete_after_days=delete_after_days, key=key,
                                   file_mode=file_mode))
        elif compress_before is not None and d.day < compress_before and d.jsonl is not None:
            actions.append(Action(d.day, "compressed", str(_gzip(d.jsonl, file_mode))))
    return actions


def retention_main(archive_dir: str, *, compress_after_days: int | None, delete_after_days: int | None,
                   keep_from_day: str | None = None, clock=time.time, out=None, err=None,
                   key: bytes | None = None) -> int:
    """Entry point for the ``retention`` subcommand: 0 done, 1 some day was
    refused (printed), 2 cannot run (one line on ``err``)."""
    err = err or sys.stderr
    try:
        actions = apply_retention(Path(archive_dir), now=clock(), compress_after_days=compress_after_days,
                                  delete_after_days=delete_after_days, keep_from_day=keep_from_day,
                                  key=key)
    except RetentionError as exc:
        print(f"retention: {exc}", file=err)
        return 2
    for a in actions:
        if a.action == "refused":
            print(f"refused {a.path}: {a.detail}", file=err)
        elif out is not None:
            print(f"{a.action} {a.path}", file=out)
    return 1 if any(a.action == "refused" for a in actions) else 0
