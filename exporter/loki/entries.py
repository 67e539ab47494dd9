"""Archive record -> Loki entry (labels, timestamp, line, structured metadata).

Everything here is a pure function of the archive line, so a resend after a
crash or timeout is byte-identical and Loki's dedup (same stream, same
nanosecond timestamp, same line, same structured metadata) absorbs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from exporter.labels import OTHER, personal
from exporter.record import CHAIN_FIELDS, dumps_line

from .config import LokiSettings, valid_label_name

MAX_LABEL_VALUE_BYTES = 1024  # Loki allows 2048; half keeps room for proxies
MAX_SM_VALUE_BYTES = 1024  # structured metadata limit is 64 KB per entry
TRUNCATED_FLAG = "loki_truncated"
# Text fields that may be shortened to fit max_line_bytes, most bulky first.
_TRUNCATABLE = ("prompt", "output", "error")
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class EntryError(ValueError):
    """The archive line cannot become a Loki entry; ``reason`` names why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Entry:
    labels: tuple[tuple[str, str], ...]  # sorted; the stream key
    ts_ns: int
    line: str
    metadata: tuple[tuple[str, str], ...]  # empty unless structured_metadata
    size: int  # UTF-8 bytes of the line, what Loki's max_line_size checks
    truncated: bool
    request_id: str | None


def timestamp_ns(ts: str, seq: int | None) -> int:
    """RFC 3339 -> integer nanoseconds, without floats.

    The record keeps milliseconds; the sub-millisecond part is a stable
    tiebreak from the chain ``seq`` so two records of one stream in the same
    millisecond are distinct entries yet identical on every resend.
    """
    m = _TS.match(ts or "")
    if not m:
        raise EntryError("invalid_timestamp", f"unparseable ts {ts!r}")
    whole = datetime.fromisoformat(ts[:19] + (m.group(2).replace("Z", "+00:00")))
    seconds = (whole - _EPOCH) // timedelta(seconds=1)
    ms = int((m.group(1) or "0").ljust(3, "0")[:3])
    tiebreak = (seq or 0) % 1_000_000
    return seconds * 1_000_000_000 + ms * 1_000_000 + tiebreak


def sanitize_value(value: str, limit: int = MAX_LABEL_VALUE_BYTES) -> str:
    """Valid UTF-8 (lone surrogates replaced), at most ``limit`` bytes, cut on
    a character boundary; empty becomes ``unknown`` (Loki drops empty labels)."""
    raw = value.encode("utf-8", "replace")[:limit]
    text = raw.decode("utf-8", "ignore")
    return text or "unknown"


def build_labels(record: dict, settings: LokiSettings,
                 label_user: Callable[[str | None], str | None],
                 fold_model: Callable | None = None) -> tuple[tuple[str, str], ...]:
    # Only bounded values become labels: never request ids or text (cardinality).
    labels = {"service_name": settings.service_name}
    if settings.job:
        labels["job"] = settings.job
    raw = record.get("model") if isinstance(record.get("model"), str) else "unknown"
    if fold_model is not None and raw != "unknown":
        raw = fold_model(raw)  # a name vLLM does not serve: __other__, as the metric label
    model = sanitize_value(raw)
    labels["model"] = OTHER if personal(model) else model  # as the metric label: never raw PII
    instance = record.get("instance")
    if isinstance(instance, str) and instance:
        # Bounded (one per replica) and named like the Prometheus label, so one
        # dashboard variable filters metrics and logs of a replica alike.
        labels["vllm_instance"] = instance
    user = label_user(record.get("user") if isinstance(record.get("user"), str) else None)
    if user is not None:
        labels["user"] = sanitize_value(user)
    for name in labels:
        if not valid_label_name(name):
            raise EntryError("invalid_labels", f"bad label name {name!r}")
    return tuple(sorted((k, sanitize_value(v)) for k, v in labels.items()))


def _json_len(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"))


def _cut(text: str, max_json_bytes: int) -> str:
    """Longest prefix of ``text`` whose JSON string form fits the budget."""
    budget = max_json_bytes - 2  # the quotes
    used = 0
    for i, ch in enumerate(text):
        used += _json_len(ch) - 2
        if used > budget:
            return text[:i]
    return text


def _encode(record: dict) -> str:
    return dumps_line(record).encode("utf-8", "replace").decode("utf-8")


def fit_line(record: dict, limit: int) -> tuple[str, bool]:
    """Serialise; if over ``limit`` bytes shorten the text fields (largest
    first) and flag ``loki_truncated`` so the line stays valid JSON.

    Deterministic: the same record always yields the same cut.
    """
    line = _encode(record)
    if len(line.encode()) <= limit:
        return line, False
    rec = dict(record)
    rec["flags"] = list(rec.get("flags") or []) + [TRUNCATED_FLAG]
    if isinstance(rec.get("choices"), list):
        # Choice texts duplicate `output` for choice 0; drop them before cutting.
        rec["choices"] = [
            {k: v for k, v in c.items() if k != "text"} if isinstance(c, dict) else c
            for c in rec["choices"]
        ]
    fields = [f for f in _TRUNCATABLE if isinstance(rec.get(f), str) and rec[f]]
    base = len(_encode({**rec, **dict.fromkeys(fields, "")}).encode())
    budget = limit - base  # bytes left for the text of the truncatable fields
    if budget < 0:
        raise EntryError("line_too_long", f"line needs {base} bytes without its text fields")
    # Water-filling: short fields stay whole, long ones share what is left
    # equally, so a huge prompt does not wipe out a moderate output.
    need = {f: _json_len(rec[f]) - 2 for f in fields}
    alloc: dict[str, int] = {}
    while need:
        share = budget // len(need)
        small = {f: n for f, n in need.items() if n <= share}
        if not small:
            alloc.update(dict.fromkeys(need, share))
            break
        for f, n in small.items():
            alloc[f] = n
            budget -= n
            del need[f]
    for f in fields:
        rec[f] = _cut(rec[f], alloc[f] + 2)
    line = _encode(rec)
    if len(line.encode()) <= limit:
        return line, True
    raise EntryError("line_too_long", f"line is {len(line.encode())} bytes after truncation")


def build_entry(archive_line: str, settings: LokiSettings,
                label_user: Callable[[str | None], str | None],
                policy: Callable[[dict], dict], fold_model: Callable | None = None) -> Entry:
    try:
        stored = json.loads(archive_line)
    except ValueError as exc:
        raise EntryError("invalid_record", f"archive line is not JSON: {exc}") from None
    if not isinstance(stored, dict):
        raise EntryError("invalid_record", "archive line is not a JSON object")
    seq = stored.get("seq") if isinstance(stored.get("seq"), int) else None
    record = {k: v for k, v in stored.items() if k not in CHAIN_FIELDS}
    ts_ns = timestamp_ns(record.get("ts"), seq)
    labels = build_labels(record, settings, label_user, fold_model)
    # Metadata and line come from the policy output, so redaction covers both.
    record = policy(record)
    line, truncated = fit_line(record, settings.max_line_bytes)
    rid = record.get("request_id") if isinstance(record.get("request_id"), str) else None
    metadata: tuple[tuple[str, str], ...] = ()
    if settings.structured_metadata:
        sm = {}
        if rid:
            sm["request_id"] = sanitize_value(rid, MAX_SM_VALUE_BYTES)
        user = record.get("user")
        if isinstance(user, str) and user:
            sm["user"] = sanitize_value(user, MAX_SM_VALUE_BYTES)
        metadata = tuple(sorted(sm.items()))
    return Entry(labels, ts_ns, line, metadata, len(line.encode()), truncated, rid)


def encode_push(entries: list[Entry]) -> bytes:
    """The JSON push body; streams and values keep archive order."""
    streams: dict[tuple, list] = {}
    for e in entries:
        value = [str(e.ts_ns), e.line]
        if e.metadata:
            value.append(dict(e.metadata))
        streams.setdefault(e.labels, []).append(value)
    body = {"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
