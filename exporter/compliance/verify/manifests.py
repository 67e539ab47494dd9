"""A day against its manifest: the manifest read and its HMAC checked, a
closed day's data file compared to it, and a deleted data file accounted for
by the retention record its manifest holds."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from exporter.archive import manifest as mf
from exporter.archive.layout import data_name
from exporter.record import parse_ts_or_none

from .problems import MANIFEST_MISMATCH, TRUNCATED, Problem


def checked_manifest(path: Path, key: bytes | None, *, first: bool) -> tuple[dict | None, Problem | None]:
    """The manifest at ``path``, or the problem that it is unreadable or its
    HMAC is wrong (``first``: no record checked yet, so the key may be)."""
    try:
        manifest = mf.read_manifest(path)
    except (OSError, ValueError) as exc:
        return None, Problem(MANIFEST_MISMATCH, path.name, None, None, f"unreadable manifest: {exc}")
    if not mf.hmac_ok(manifest, key):
        hint = " (edited, or wrong HMAC key)" if first else " (edited)"
        return None, Problem(MANIFEST_MISMATCH, path.name, None, None, "manifest hmac invalid" + hint)
    return manifest, None


def against_manifest(name: str, m: dict, count: int, first: dict | None, last: dict | None,
                     sha: str) -> Problem | None:
    """A closed day's data file (its line count, first and last record, sha256)
    against what its manifest says."""
    last_seq = last["seq"] if last else None
    if isinstance(m.get("last_seq"), int) and (last_seq or 0) < m["last_seq"]:
        return Problem(TRUNCATED, name, count or None, last_seq, f"file ends at seq {last_seq}, "
                       f"its manifest says {m['last_seq']} ({m.get('count')} lines)")
    actual = {"file": name.removesuffix(".gz"), "count": count,
              "first_seq": first and first["seq"], "last_seq": last_seq,
              "first_prev_hash": first and first.get("prev_hash"), "first_hash": first and first["hash"],
              "last_hash": last and last["hash"], "sha256": sha}
    for key, value in actual.items():
        if m.get(key) != value:
            return Problem(MANIFEST_MISMATCH, name, None, None, f"manifest {key}={m.get(key)!r}, "
                           f"file has {value!r}")
    return None


def unexplained_deletion(day: str, m: dict) -> str | None:
    """Why the manifest does not account for its day's missing data file
    (None: a retention run recorded deleting it, consistently)."""
    rec = m.get(mf.RETENTION_FIELD)
    if not isinstance(rec, dict):
        return ("data file is gone but its manifest holds no retention record (deleted by hand "
                "or by an attacker, or by an exporter that did not yet record its deletions)")
    at, days = rec.get("at"), rec.get("delete_after_days")
    when = parse_ts_or_none(at)  # the archive's one time reader (retention writes format_ts)
    if rec.get("deleted") not in (data_name(day), data_name(day) + ".gz") or when is None \
            or not isinstance(days, int) or days < 1:
        return f"data file is gone and its manifest's retention record is malformed: {rec!r}"
    if day >= datetime.fromtimestamp(when - days * 86400, tz=timezone.utc).strftime("%Y-%m-%d"):
        return (f"data file is gone, but retention at {at} with delete_after_days={days} would not "
                "have deleted this day")
    return None
