"""A C2SP tlog-witness: cosigns a log's checkpoints only if they extend what it saw.

``POST /add-checkpoint`` (https://c2sp.org/tlog-witness), byte for byte: the
body is ``old <size>\\n``, up to 63 base64 consistency-proof lines, a blank
line, then the signed checkpoint note. The answers the spec prescribes:

* 400 malformed body, or old size larger than the checkpoint's;
* 404 unknown origin; 403 no valid signature by a trusted key of that log
  (a trusted key's signature that fails is also 403);
* 409 ``Content-Type: text/x.tlog.size``, body ``<latest size>\\n``: the old
  size is not the size this witness last cosigned (a rolled-back log, or a
  client that must re-sync);
* 422 the consistency proof does not verify, or same size with another root
  (a fork), or a size-0 checkpoint without the empty tree's root;
* 200 one cosignature/v1 line (Ed25519, timestamped) over the checkpoint.

Key epochs (this project's forward-secure logs, ``exporter.transparency.keys``):
a checkpoint signed by a trusted key that names the log's next key in a
``vllm-audit-epoch <day> <verifier key>`` extension line, and is signed by
that key too, makes that key trusted for the origin from then on (beside
the configured keys; the previously learnt epoch key is dropped, its private
half is erased on the log host). Plain C2SP logs never send that line.

State: per origin, the latest cosigned checkpoint (the note with the log's
trusted signatures plus this witness's cosignature) and the learnt epoch key,
in ``STATE_DIR/<sha256(origin) hex>.json``, replaced atomically and fsynced
*before* the answer, under one lock with the check (the race the spec
describes: a slow request must never roll the state back). A state file that
does not parse stops the witness at start-up: starting again from zero would
let the log roll back. Validly signed checkpoints the witness refuses are
kept in ``STATE_DIR/refused.log`` (append-only): two conflicting checkpoints
signed by the same log key are proof of the log's misbehaviour.

The HTTP side (``POST /add-checkpoint``, ``GET /<sha256(origin) hex>/checkpoint``,
the monitoring API the spec recommends) is :mod:`.witness_http`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from exporter.durable import FILE_MODE, fsync_dir, usable_dir, write_atomic

from . import merkle, note

MAX_BODY = 256 * 1024  # 63 hashes and a checkpoint with many (even post-quantum) signatures
MAX_PROOF = 63
SIZE_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]*)")


class WitnessError(Exception):
    """A refused add-checkpoint request: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str, body: str | None = None, content_type: str = "text/plain; charset=utf-8"):
        super().__init__(reason)
        self.status, self.body, self.content_type = status, body if body is not None else reason + "\n", content_type


def origin_hash(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


def cosigning_key(signer: note.Signer) -> note.Signer:
    """``signer`` as a cosignature/v1 key. A plain Ed25519 note key (0x01, as
    Go's ``note.GenerateKey`` writes for witnesses) is the same Ed25519 key
    used for cosignatures, with the key id of type 0x04 (as
    ``transparency-dev/formats`` ``NewSignerForCosignatureV1`` does)."""
    if signer.alg == note.ALG_COSIGNATURE_V1:
        return signer
    return note.Signer(signer.name, note.ALG_COSIGNATURE_V1, signer.seed)


def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """(old size, consistency proof, checkpoint note) of an add-checkpoint body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessError(400, "body is not UTF-8") from None
    head, sep, rest = text.partition("\n")
    m = _OLD.fullmatch(head)
    if not sep or not m:
        raise WitnessError(400, "first line must be 'old <size>'")
    proof: list[bytes] = []
    while True:
        line, sep, rest = rest.partition("\n")
        if not sep:
            raise WitnessError(400, "no blank line before the checkpoint")
        if line == "":
            break
        if len(proof) == MAX_PROOF:
            raise WitnessError(400, f"more than {MAX_PROOF} consistency proof lines")
        try:
            h = base64.b64decode(line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise WitnessError(400, "consistency proof line is not base64") from None
        if len(h) != 32:
            raise WitnessError(400, "consistency proof hash is not 32 bytes")
        proof.append(h)
    return int(m.group(1)), proof, rest


EPOCH_EXT = "vllm-audit-epoch"  # "<day> <verifier key>": the log's next key, certified (keys.py)


@dataclass
class _State:
    checkpoint: note.Checkpoint
    note: str  # the log's trusted signatures and this witness's cosignature
    epoch_key: note.Verifier | None = None  # the log's current key, learnt from its epoch lines


@dataclass
class Witness:
    """The protocol without HTTP: configured logs, durable state, one lock."""

    signer: note.Signer
    logs: dict[str, list[note.Verifier]]  # origin -> the log's trusted keys
    state_dir: Path
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latest: dict[str, _State] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.signer = cosigning_key(self.signer)
        for origin in self.logs:
            path = self._path(origin)
            if path.exists():
                self._latest[origin] = self._load(path, origin)

    def _path(self, origin: str) -> Path:
        return self.state_dir / f"{origin_hash(origin)}.json"

    def _load(self, path: Path, origin: str) -> _State:
        try:
            doc = json.loads(path.read_text("utf-8"))
            signed = doc["checkpoint"]
            cp = note.parse_checkpoint(note.split_note(signed)[0])
            if cp.origin != origin or doc.get("origin") != origin:
                raise note.NoteError(f"holds origin {cp.origin!r}")
            epoch = note.parse_verifier(doc["epoch_key"]) if doc.get("epoch_key") else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never fall back to "nothing seen": that is exactly a rollback.
            raise ValueError(f"witness state {path} is unusable ({exc}); restore it from a backup") from None
        return _State(cp, signed, epoch)

    def latest(self, origin: str) -> str | None:
        """The latest cosigned checkpoint note for ``origin``, or None."""
        with self._lock:
            got = self._latest.get(origin)
        return got.note if got else None

    def _trusted(self, origin: str, got: _State | None) -> list[note.Verifier]:
        """The configured keys of ``origin`` and the epoch key it certified last."""
        keys = list(self.logs.get(origin, ()))
        if got and got.epoch_key and got.epoch_key not in keys:
            keys.append(got.epoch_key)
        return keys

    def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line for a valid request; :class:`WitnessError` otherwise."""
        old, proof, signed = parse_request(body)
        try:
            text, sigs = note.split_note(signed)
            cp = note.parse_checkpoint(text)
        except note.NoteError as exc:
            raise WitnessError(400, f"checkpoint: {exc}") from None
        if cp.origin not in self.logs:
            raise WitnessError(404, f"unknown log origin {cp.origin!r}")
        with self._lock:  # check and persist atomically (tlog-witness, the race of requests A and B)
            prev = self._latest.get(cp.origin)
            keys = self._trusted(cp.origin, prev)
            self._check_signed(text, sigs, keys)
            if old > cp.size:
                raise WitnessError(400, f"old size {old} is larger than the checkpoint size {cp.size}")
            seen = prev.checkpoint.size if prev else 0
            if old != seen:
                if cp.size < seen:  # a signed smaller tree: the log rolled back (a stale client is not evidence)
                    self._refused(cp.origin, 409, f"checkpoint size {cp.size} < latest cosigned {seen}", body)
                raise WitnessError(409, f"old size {old} is not the latest cosigned size {seen}",
                                   f"{seen}\n", SIZE_TYPE)
            try:
                if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
                    raise merkle.ProofError("a size-0 checkpoint must have the empty tree's root")
                if old == 0 and proof:
                    raise merkle.ProofError("a proof from size 0 must be empty")
                if prev is not None:
                    merkle.verify_consistency(old, cp.size, prev.checkpoint.root, cp.root, proof)
            except merkle.ProofError as exc:
                self._refused(cp.origin, 422, str(exc), body)
                raise WitnessError(422, f"inconsistent checkpoint: {exc}") from None
            timestamp = max(1, int(self.clock()))  # the spec forbids a zero timestamp
            line = note.cosign(text, self.signer, timestamp).line()
            known = {(k.name, k.id) for k in keys}
            epoch = _certified_key(cp, text, sigs) or (prev.epoch_key if prev else None)
            if epoch is not None:
                known.add((epoch.name, epoch.id))
            state = _State(cp, text + "\n" + "".join(s.line() for s in sigs if (s.name, s.id) in known) + line,
                           epoch)
            doc = {"origin": cp.origin, "checkpoint": state.note, "epoch_key": epoch.text() if epoch else None}
            write_atomic(self._path(cp.origin), (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
            self._latest[cp.origin] = state
        return line

    def _check_signed(self, text: str, sigs: list[note.Signature], keys: list[note.Verifier]) -> None:
        trusted = {(k.name, k.id): k for k in keys}
        good = False
        for sig in sigs:  # unknown keys are ignored; a known key that fails rejects the note
            key = trusted.get((sig.name, sig.id))
            if key is None:
                continue
            if not key.verify(text.encode("utf-8"), sig.data):
                raise WitnessError(403, f"signature by {key.name} does not verify")
            good = True
        if not good:
            raise WitnessError(403, "no signature by a trusted key of this log")

    def _refused(self, origin: str, status: int, reason: str, body: bytes) -> None:
        """Keep a validly signed checkpoint this witness refused: the evidence of a fork or rollback."""
        entry = {"time": int(self.clock()), "origin": origin, "status": status, "reason": reason,
                 "request": body.decode("utf-8")}
        path = self.state_dir / "refused.log"
        try:
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.write(fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.state_dir)
        except OSError as exc:  # the refusal stands; only the evidence copy is missing
            print(f"witness: cannot append to {path}: {exc}", file=sys.stderr)


def _certified_key(cp: note.Checkpoint, text: str, sigs: list[note.Signature]) -> note.Verifier | None:
    """The next key a (trusted-signed) checkpoint certifies in a ``vllm-audit-epoch``
    line, if that key signed the checkpoint too (it holds the private half)."""
    for line in cp.extensions:
        name, _, rest = line.partition(" ")
        if name != EPOCH_EXT:
            continue
        try:
            key = note.parse_verifier(rest.rpartition(" ")[2])
        except note.NoteError:
            continue
        if key.alg == note.ALG_ED25519 and any(
                (s.name, s.id) == (key.name, key.id) and key.verify(text.encode("utf-8"), s.data) for s in sigs):
            return key
    return None


def init_key(key_file: Path, name: str) -> note.Signer:
    """Write a new cosignature/v1 witness key to ``key_file`` (0600) and its
    one-line verifier key to ``key_file`` with suffix ``.pub``; refuse to
    overwrite an existing key (that would orphan every cosignature made)."""
    signer = note.Signer.generate(name, note.ALG_COSIGNATURE_V1)
    pub = key_file.with_suffix(".pub")
    if key_file.exists() or pub.exists():
        raise FileExistsError(f"{key_file if key_file.exists() else pub} exists; not overwriting a witness key")
    usable_dir(key_file.parent, "--key-file", create=True, write=True)
    write_atomic(key_file, (signer.text() + "\n").encode("ascii"), mode=0o600)
    write_atomic(pub, (signer.verifier.text() + "\n").encode("ascii"), mode=0o644)
    return signer
