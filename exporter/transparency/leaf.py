"""The Merkle leaf of one archived record, designed so its content can be erased.

A leaf does not commit to a record's personal content directly but to a
*salted hash* of each content field, so that a prompt can later be removed
from the archive (GDPR erasure) while the tree, every checkpoint signed over
it and every other record's proof stay valid:

    leaf bytes = "vllm-audit-leaf/v1\\n" || compact JSON of the record with
                 ``hash`` and ``prev_hash`` left out and every content field
                 that is not null replaced by its commitment
    commitment = "sha256:" + hex SHA-256("vllm-audit-content/v1\\n" || salt ||
                 field name || 0x00 || compact JSON of the value)

"Compact JSON" is the archive line's own encoding (separators ``,`` ``:``,
UTF-8, keys in the record's order, which parsing the line keeps), so the
verifier re-encodes exactly the bytes the writer hashed.

The salt is 16 random bytes per record, kept beside the leaf hash in the
tree file (``ARCHIVE/tlog/tree.bin``), never in the record: without it a
commitment cannot be confirmed by guessing likely prompts. ``hash`` and
``prev_hash`` (the HMAC chain) stay out of the leaf because they need the
host's key to recompute and an erasure re-chains them; ``seq`` stays in, so
leaf ``i`` must be the record ``seq = i + 1``.

An erased record keeps every other field and has each erased content field
replaced by ``{"erased": "<its commitment>"}``: :func:`leaf_bytes` uses that
commitment as is, so the leaf (and everything above it) is unchanged.
"""

from __future__ import annotations

import hashlib
import json

from exporter.transparency.merkle import leaf_hash

# Every record field that can hold personal content (what a person typed or
# was answered, who they are, where they came from).
CONTENT_FIELDS: tuple[str, ...] = ("prompt", "output", "choices", "error", "user", "identity", "client")
SALT_BYTES = 16
LEAF_PREFIX = b"vllm-audit-leaf/v1\n"
_CONTENT_PREFIX = b"vllm-audit-content/v1\n"
# As the archive line is written: compact, UTF-8, keys in the record's own
# order (json.loads keeps it, so the verifier re-encodes the same bytes), NaN
# allowed there too.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_NULL = b"null"
_NAMES = {k: k.encode() + b"\x00" for k in CONTENT_FIELDS}


def _value_bytes(value: object) -> bytes:
    if value is None:
        return _NULL
    return _ENCODE(value).encode()


def commitment(salt: bytes, name: str, value: object) -> str:
    h = hashlib.sha256(_CONTENT_PREFIX + salt)
    h.update(name.encode() + b"\x00")
    h.update(_value_bytes(value))
    return "sha256:" + h.hexdigest()


def erased_value(salt: bytes, name: str, value: object) -> dict:
    """What an erasure writes in place of a content field's value."""
    return {"erased": commitment(salt, name, value)}


def _is_erased(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("erased"), str) \
        and value["erased"].startswith("sha256:")


def leaf_view(record: dict, salt: bytes) -> dict:
    view = dict(record)  # same key order; only the content values change
    view.pop("hash", None)
    view.pop("prev_hash", None)
    seeded = None
    for k in CONTENT_FIELDS:
        v = view.get(k)
        if v is None:  # a null holds nothing to erase: kept as is
            continue
        if v.__class__ is dict and _is_erased(v):
            view[k] = v["erased"]
            continue
        # commitment(salt, k, v), with the salted prefix hashed once per record
        if seeded is None:
            seeded = hashlib.sha256(_CONTENT_PREFIX + salt)
        h = seeded.copy()
        h.update(_NAMES[k])
        h.update(_value_bytes(v))
        view[k] = "sha256:" + h.hexdigest()
    return view


def leaf_bytes(record: dict, salt: bytes) -> bytes:
    return LEAF_PREFIX + _ENCODE(leaf_view(record, salt)).encode()


def record_leaf(record: dict, salt: bytes) -> bytes:
    """The RFC 9162 leaf hash ``SHA-256(0x00 || leaf bytes)`` of a sealed record."""
    return leaf_hash(leaf_bytes(record, salt))


def unavailable_leaf(seq: int) -> bytes:
    """The placeholder leaf of a record retention had deleted before the
    tree existed (an archive upgraded to the transparency log): it commits
    to the seq only, and verify skips it with its retention-deleted day."""
    return leaf_hash(b"vllm-audit-unavailable/v1\n" + str(seq).encode())
