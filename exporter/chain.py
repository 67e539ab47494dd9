"""Hash chain over archive records.

Every archived record carries ``seq`` (1, 2, ...), ``prev_hash`` (the ``hash``
of record ``seq - 1``, or :data:`GENESIS` for seq 1) and ``hash``, computed over
:func:`exporter.record.canonical_bytes` of the record *including* ``seq`` and
``prev_hash``. Editing, deleting, inserting or reordering a record therefore
breaks either its own hash or the next record's link.

The hash is labelled with its algorithm so a reader never has to guess:
``hmac-sha256:<64 hex>`` when a key is configured (an attacker without the key
cannot recompute the chain), ``sha256:<64 hex>`` otherwise (detects accidents
and naive edits, not a determined attacker who rewrites the whole tail).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from exporter import record as _record
from exporter.record import canonical_bytes, line_bytes
from exporter.secrets import SecretError, read_secret

# A readable sentinel rather than 64 zeros: it cannot be confused with a real
# digest and it says what it is in a hexdump.
GENESIS = "genesis"
HMAC_PREFIX = "hmac-sha256:"
SHA_PREFIX = "sha256:"
CHAIN_KEYS = ("seq", "prev_hash", "hash")


class KeyLoadError(ValueError):
    """The HMAC key is configured but unusable (message never includes the key)."""


def load_key(key_file: str | os.PathLike | None, env_value: str | None,
             what: str = "HMAC key file") -> bytes | None:
    """The HMAC key from ``--hmac-key-file`` (preferred; read by
    :func:`exporter.secrets.read_secret`, like every secret) or
    ``VLLM_AUDIT_HMAC_KEY``. An empty environment variable counts as unset
    (compose files often define empty variables). The one place that
    decides which key a command uses: the settings of ``run``/``replay``
    and the compliance commands all come here. ``what`` names the file in
    errors."""
    if key_file:
        try:
            return read_secret(key_file, what)
        except SecretError as exc:
            raise KeyLoadError(str(exc)) from None
    if env_value:
        return env_value.encode()
    return None


def keyed_digest(key: bytes | None, data: bytes) -> str:
    """Labelled digest of ``data``: HMAC-SHA256 with a key, SHA-256 without."""
    if key is None:
        return SHA_PREFIX + hashlib.sha256(data).hexdigest()
    return HMAC_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


def digest_kind(value: object) -> str | None:
    """``"hmac-sha256"``, ``"sha256"`` or None for an unlabelled/invalid value."""
    if not isinstance(value, str):
        return None
    for prefix in (HMAC_PREFIX, SHA_PREFIX):
        if value.startswith(prefix):
            return prefix[:-1]
    return None


class Chain:
    """Seals and verifies records; holds the key, never prints it."""

    __slots__ = ("_key", "_label")

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self._label = (SHA_PREFIX if key is None else HMAC_PREFIX).encode()  # for the C seal

    def __repr__(self) -> str:  # the key must never end up in a log line
        return f"Chain(kind={self.kind!r})"

    @property
    def kind(self) -> str:
        return "hmac-sha256" if self._key is not None else "sha256"

    @property
    def key(self) -> bytes | None:
        return self._key

    def digest(self, data: bytes) -> str:
        return keyed_digest(self._key, data)

    def seal(self, record: dict, seq: int, prev_hash: str) -> dict:
        """A new dict: ``record`` + ``seq``, ``prev_hash``, ``hash`` (in that order)."""
        if "seq" in record or "prev_hash" in record or "hash" in record:
            sealed = {k: v for k, v in record.items() if k not in CHAIN_KEYS}
        else:
            sealed = dict(record)  # the usual case: one C-level copy, same key order
        sealed["seq"] = seq
        sealed["prev_hash"] = prev_hash
        sealed["hash"] = self.digest(canonical_bytes(sealed))
        return sealed

    def seal_line(self, record: dict, seq: int, prev_hash: str) -> tuple[dict, bytes]:
        """:meth:`seal`, and the sealed record's archive line (:func:`line_bytes`).

        With the C accelerators the record is encoded once and its digest
        and sealed line come from that line in one call
        (:func:`exporter.record.sealed_line`)."""
        if "seq" in record or "prev_hash" in record or "hash" in record:
            sealed = {k: v for k, v in record.items() if k not in CHAIN_KEYS}
        else:
            sealed = dict(record)
        sealed["seq"] = seq
        sealed["prev_hash"] = prev_hash
        done = _record.sealed_line(sealed, self._label, self._key)
        if done is None:
            sealed["hash"] = self.digest(canonical_bytes(sealed))
            return sealed, line_bytes(sealed)
        sealed["hash"] = done[0]
        return sealed, done[1]

    def verify_record(self, record: dict) -> bool:
        """True when ``record['hash']`` matches its content under this chain's key.

        A record labelled ``sha256:`` fails under a keyed chain: accepting it
        would let an attacker downgrade the chain to one they can recompute.
        """
        stored = record.get("hash")
        if digest_kind(stored) != self.kind:
            return False
        return hmac.compare_digest(stored, self.digest(canonical_bytes(record)))
