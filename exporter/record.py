"""The audit record: one JSON object per request.

The field names and their order are a public contract (README, "Record").
Unknown values are ``None`` (JSON ``null``), never a guess.
"""

from __future__ import annotations

import json
from datetime import datetime

from exporter.wire import utc_text

RECORD_FIELDS: tuple[str, ...] = (
    "ts",
    "request_id",
    "model",
    "user",
    "endpoint",
    "stream",
    "prompt",
    "output",
    "prompt_tokens",
    "completion_tokens",
    "tokens_source",
    "finish_reason",
    "status",
    "empty_response",
    "latency_seconds",
    "params",
    "flags",
    "ttft_seconds",
    "http_status",
    "error",
    "client",
    "identity",
    "choices",
    "sources",
    "identity_source",
    "instance",
    "engine",
)

# The record's ``engine`` object (null without an engine line; README,
# "Engine time and cost").
ENGINE_FIELDS: tuple[str, ...] = ("queue_seconds", "prefill_seconds", "decode_seconds",
                                  "inference_seconds", "cached_tokens", "preemptions",
                                  "share_seconds", "devices")

# The largest count or duration a metric adds up: every integer to 2**53 is
# exact as a float. A record's number beyond it (an int of 400 digits in a
# forged or damaged line) is no measurement: the metrics skip it, as their
# float sums would raise OverflowError or reach inf, which no checkpoint holds.
MAX_MEASURE = 2 ** 53

PARAM_FIELDS: tuple[str, ...] = ("max_tokens", "temperature", "n", "json_mode")

STATUSES: tuple[str, ...] = ("completed", "aborted", "rejected", "incomplete", "error")
# How far to trust ``user``, strongest first (README, "Identity"): a verified
# Open WebUI JWT, headers behind the shared identity secret, bare headers,
# the client's own ``user`` field, the API key's hash.
IDENTITY_SOURCES: tuple[str, ...] = ("jwt", "header_secret", "header", "user_field", "api_key")
# Why a configured Open WebUI JWT gave no user (flag ``identity_invalid``);
# the same closed set as exporter.middleware.openwebui.INVALID_REASONS.
IDENTITY_INVALID_REASONS: tuple[str, ...] = (
    "missing", "malformed", "algorithm", "signature", "issuer", "expired", "not_yet_valid",
    "claim_missing", "secret_unavailable")
TOKENS_SOURCES: tuple[str, ...] = ("logged_ids", "usage", "tokenizer")
CHAIN_FIELDS: tuple[str, ...] = ("seq", "prev_hash", "hash")


def new_record() -> dict:
    """An all-unknown record with every contract field present."""
    rec = dict.fromkeys(RECORD_FIELDS)
    rec["params"] = dict.fromkeys(PARAM_FIELDS)
    rec["flags"] = []
    rec["sources"] = []
    rec["status"] = "incomplete"
    return rec


_TS_MEMO: dict[float, str] = {}


def format_ts(epoch_seconds: float) -> str:
    """RFC 3339, UTC, milliseconds: :func:`exporter.wire.utc_text`, the one
    writer for records and the middleware line, remembered per value (a text
    log's times are whole seconds, shared by every request of that second;
    the memo is bounded)."""
    text = _TS_MEMO.get(epoch_seconds)
    if text is None:
        text = utc_text(epoch_seconds)
        if len(_TS_MEMO) >= 4096:
            _TS_MEMO.clear()
        _TS_MEMO[epoch_seconds] = text
    return text


def parse_ts(text: str) -> float:
    """Inverse of :func:`format_ts` (accepts any ISO 8601 with a zone)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_ts_or_none(text: str | None) -> float | None:
    """:func:`parse_ts`, with None for a missing or malformed time (upstream
    data: never an exception)."""
    if not text or not isinstance(text, str):
        return None
    try:
        return parse_ts(text)
    except ValueError:
        return None


# Built once: json.dumps with keyword arguments constructs a new encoder on
# every call, a visible share of the per-record cost. Same output.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_CANONICAL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


# The C accelerator's encoder (exporter/parse/_scan_json.h), set by
# exporter.parse.fast when it is built and enabled: the same bytes as the two
# encoders above for what a record holds, None (then they run) for anything
# else. None here: pure Python.
_c_json = None


def set_c_encoder(fn) -> None:
    """``json_line(obj, sort_keys, text)`` of the C accelerator, or None."""
    global _c_json
    _c_json = fn


# The transparency accelerator's ``canonical(line)`` (exporter/transparency/
# _leaf.c), set by exporter.transparency.leaf_line when it is built: a
# compact line with every object's keys sorted, the canonical bytes without
# a second encoding; None for what it declines. ``seal(line, label, key)``,
# set with it: canonical(line)'s labelled digest and the line closed by it.
_c_canon = None
_c_seal = None


def set_c_canonical(canon, seal) -> None:
    global _c_canon, _c_seal
    _c_canon, _c_seal = canon, seal


def canonical_and_line(record: dict) -> tuple[bytes, bytes] | None:
    """``(canonical_bytes(record), line)`` from one encoding, ``line`` being
    :func:`line_bytes` without its ``"\\n"``; None (then use those two) when
    either C piece is missing or declines. ``record`` holds no ``hash``.

    The C encoder accepts only exact dicts with str keys, finite floats and
    the other plain JSON types, for which sort_keys=True differs from the
    line only in the order of each object's members; ``canonical`` sorts
    them by their UTF-8 bytes (code point order, as Python sorts str) and
    declines a key holding an escape. tests/test_archivefast_canonical.py
    holds the two paths equal."""
    enc, canon = _c_json, _c_canon
    if enc is None or canon is None:
        return None
    line = enc(record, False, False)
    if line is None:
        return None
    data = canon(line)
    return None if data is None else (data, line)


def sealed_line(record: dict, label: bytes, key: bytes | None) -> tuple[str, bytes] | None:
    """``(hash, line)`` of ``record`` (it holds ``seq`` and ``prev_hash``, no
    ``hash``) from one encoding and one C call: ``hash`` is ``label`` + the
    hex SHA-256 (HMAC-SHA256 under ``key``) of :func:`canonical_and_line`'s
    canonical bytes, ``line`` that line closed by ``,"hash":"…"}`` and
    ``"\n"``, which is :func:`line_bytes` of the record with its hash (the
    last key, plain ASCII). None (then seal in Python) when either C piece
    is missing or declines; the seal is canonical's digest, so both are
    switched off together (tests turn ``_c_canon`` off for the Python path).
    tests/test_chain_seal.py holds the two paths equal."""
    enc, seal = _c_json, _c_seal
    if enc is None or seal is None or _c_canon is None:
        return None
    line = enc(record, False, False)
    return None if line is None else seal(line, label, key)


def dumps_line(record: dict) -> str:
    """The archive/Loki line: contract key order, compact, UTF-8 kept.

    Deterministic for equal input, which is what makes a Loki resend
    byte-identical (and so deduplicated by Loki).
    """
    if _c_json is not None:
        line = _c_json(record, False, True)
        if line is not None:
            return line
    return _LINE_ENCODER(record)


def line_bytes(record: dict) -> bytes:
    """:func:`dumps_line` + ``"\\n"``, UTF-8: the archive's line as written.
    The C encoder gives the bytes directly, saving the str round trip per
    record."""
    if _c_json is not None:
        line = _c_json(record, False, False)
        if line is not None:
            return line + b"\n"
    return (_LINE_ENCODER(record) + "\n").encode()


def canonical_bytes(record: dict) -> bytes:
    """Canonical form for hashing: sorted keys, compact, UTF-8, no chain hash."""
    body = {k: v for k, v in record.items() if k != "hash"} if "hash" in record else record
    if _c_json is not None:
        data = _c_json(body, True, False)
        if data is not None:
            return data
    return _CANONICAL_ENCODER(body).encode()
