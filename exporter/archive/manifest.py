"""Per-day manifest: the seal written when a day's archive file is closed.

``audit-YYYY-MM-DD.manifest.json``::

    {"file": "audit-2026-11-22.jsonl", "count": 3,
     "first_seq": 10, "last_seq": 12,
     "first_prev_hash": "<hash of seq 9>", "first_hash": "...", "last_hash": "...",
     "ts_min": "...", "ts_max": "...", "sha256": "<hex of the file bytes>",
     "chain": "hmac-sha256", "hmac": "hmac-sha256:<hex>" | null}

``first_prev_hash`` lets verify link across a day whose data file retention
deleted; ``ts_min``/``ts_max`` let export skip days. ``sha256`` is over the
uncompressed bytes, so it still holds after retention gzips the file.
``hmac`` covers the canonical JSON of all other fields.

Before retention deletes a day's data file it adds the record of that
deletion, ``"retention": {"deleted": "<file name>", "at": "<RFC 3339>",
"delete_after_days": N}``, and seals the manifest again (:func:`record_deletion`):
verify accepts a missing data file only with that record, which someone
without the key cannot write into a keyed manifest.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import json
from pathlib import Path

from exporter.chain import HMAC_PREFIX, keyed_digest
from exporter.archive.layout import iter_lines
from exporter.durable import write_atomic

MANIFEST_FIELDS = (
    "file", "count", "first_seq", "last_seq", "first_prev_hash", "first_hash",
    "last_hash", "ts_min", "ts_max", "sha256", "chain",
)
# Written by an archive with a transparency log: the Merkle tree's size and
# root (base64) when the day was sealed; checked by verify --public-key.
TREE_FIELDS = ("tree_size", "tree_root")
RETENTION_FIELD = "retention"


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def summarize(path: Path, name: str, chain_kind: str) -> dict:
    """Read a data file (.jsonl or .gz) and describe it; no hmac yet.

    Lines that do not parse are hashed and counted but contribute no seq:
    verify reports them, the manifest only has to describe the bytes.
    """
    digest = hashlib.sha256()
    count = 0
    first = last = None
    ts_min = ts_max = None
    for raw in iter_lines(path):
        digest.update(raw)
        count += 1
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if first is None:
            first = rec
        last = rec
        ts = rec.get("ts")
        if isinstance(ts, str):
            # RFC 3339 UTC with fixed width: string order is time order.
            ts_min = ts if ts_min is None or ts < ts_min else ts_min
            ts_max = ts if ts_max is None or ts > ts_max else ts_max
    first = first or {}
    last = last or {}
    return {
        "file": name,
        "count": count,
        "first_seq": first.get("seq"),
        "last_seq": last.get("seq"),
        "first_prev_hash": first.get("prev_hash"),
        "first_hash": first.get("hash"),
        "last_hash": last.get("hash"),
        "ts_min": ts_min,
        "ts_max": ts_max,
        "sha256": digest.hexdigest(),
        "chain": chain_kind,
    }


def seal(manifest: dict, key: bytes | None) -> dict:
    out = {k: manifest.get(k) for k in MANIFEST_FIELDS}
    out.update({k: manifest[k] for k in TREE_FIELDS if k in manifest})
    out["hmac"] = keyed_digest(key, _canonical(out)) if key is not None else None
    return out


def record_deletion(manifest: dict, *, deleted: str, at: str, delete_after_days: int,
                    key: bytes | None) -> dict:
    """``manifest`` plus the record of retention deleting ``deleted``, sealed
    again (with ``key`` for a keyed archive; the caller has checked the old
    seal, so a tampered manifest is never re-signed)."""
    out = {k: v for k, v in manifest.items() if k != "hmac"}
    out[RETENTION_FIELD] = {"deleted": deleted, "at": at, "delete_after_days": delete_after_days}
    out["hmac"] = keyed_digest(key, _canonical(out)) if key is not None else None
    return out


def hmac_ok(manifest: dict, key: bytes | None) -> bool:
    """True when the manifest's hmac is valid (or, without a key, absent)."""
    stored = manifest.get("hmac")
    if key is None:
        # Without the key an hmac cannot be checked; its presence is fine,
        # verify refuses to run unkeyed on a keyed archive anyway.
        return True
    if not isinstance(stored, str) or not stored.startswith(HMAC_PREFIX):
        return False
    return _hmac.compare_digest(stored, keyed_digest(key, _canonical(manifest)))


def write_manifest(path: Path, manifest: dict, mode: int = 0o640) -> None:
    data = json.dumps(manifest, ensure_ascii=False, indent=1).encode() + b"\n"
    write_atomic(path, data, mode)


def read_manifest(path: Path) -> dict:
    with open(path, "rb") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("manifest is not a JSON object")
    return data
