"""The signing side of the transparency log: signed checkpoints of the tree.

:meth:`TransparencyLog.tick` (called by the pipeline after every step) signs
a C2SP tlog-checkpoint of the *committed* tree (the size and frontier in the
pipeline's checkpoint, so a crash can never cut a signed record) every
``--sign-interval`` seconds, also when nothing arrived: each checkpoint
carries its signing time in an extension line, so a silence longer than the
interval shows as a gap between two checkpoints. It also signs at start and
at shutdown. Body::

    <origin>
    <tree size>
    <base64 root>
    vllm-audit-time <unix seconds>
    vllm-audit-epoch <day> <verifier key>        (first checkpoint of a day)
    vllm-audit-seal <previous day> <sha256 hex>  (ditto: the old day's file)

The first checkpoint of a UTC day starts a new key epoch
(:mod:`exporter.transparency.keys`): it is signed by the old key and by a new
one it names, and seals the previous day's checkpoint file; then the old
private key is erased. A verifier walks the epochs from the key it was given
(``signing.pub``) and checks each checkpoint against its own epoch's key.

It never signs a tree that is smaller than, or inconsistent with, the newest
checkpoint it signed (C2SP: a log MUST NOT sign inconsistent checkpoints):
after a recovery that fell back to an older pipeline checkpoint it waits
until the re-derived records reach the signed size again and match it.

Hooks for the witness side (docs: helpers' transparency interface):
:meth:`add_listener`, :meth:`consistency_proof`, :meth:`add_cosignatures`,
:meth:`add_timestamp`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

from exporter.archive.layout import checkpoints_path, tree_path
from exporter.transparency import keys
from exporter.transparency.note import Checkpoint, NoteError, parse_checkpoint, parse_signer, sign_note, split_note, verify_note
from exporter.transparency.store import CheckpointStore, cosignature_entry, file_sha256, timestamp_entry
from exporter.transparency.tree import TreeReader, state_root

EXT_TIME = "vllm-audit-time"
EXT_EPOCH = "vllm-audit-epoch"
EXT_SEAL = "vllm-audit-seal"


class LogError(ValueError):
    """The signing key or origin does not continue this log (one line)."""


def extensions(cp: Checkpoint) -> dict[str, list[str]]:
    """Our extension lines by name: ``{"vllm-audit-time": ["1795329600"], ...}``."""
    out: dict[str, list[str]] = {}
    for line in cp.extensions:
        name, _, value = line.partition(" ")
        out.setdefault(name, []).append(value)
    return out


class TransparencyLog:
    def __init__(self, root: Path, key_path: Path, origin: str, interval: float,
                 clock: Callable[[], float], err=None) -> None:
        self.root = Path(root)
        self.key_path = Path(key_path)
        self.origin = origin
        self.interval = interval
        self.clock = clock
        self.err = err or sys.stderr
        self.store = CheckpointStore(self.root, clock)
        self.reader = TreeReader(tree_path(self.root))
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._last_t: float | None = None
        self._last: tuple[int, bytes] | None = None
        self._epoch_day: str | None = None
        self._checked = False
        self._warned: str | None = None
        self.signed = 0  # checkpoints signed by this process
        # Checkpoints not signed when due, by reason (metrics: logmetrics.py):
        # io (disk), behind / forked (the tree does not extend the signed one).
        self.failures = {"io": 0, "behind": 0, "forked": 0}
        self.last_signed_unix: float | None = None
        last = self.store.last_checkpoint()
        self._finish_interrupted_rotation(last)
        self.signer = keys.load_signer(self.key_path)
        if last is not None:
            day, note = last
            cp = parse_checkpoint(split_note(note)[0])
            if cp.origin != origin:
                raise LogError(f"--log-origin {origin!r} differs from the log's origin {cp.origin!r} "
                               f"(in {checkpoints_path(self.root, day).name})")
            try:
                verify_note(note, self.signer.verifier)
            except NoteError:
                raise LogError(f"--signing-key-file {self.key_path}: not the key of this log's current "
                               f"epoch (it did not sign the newest checkpoint, {day})") from None
            self._last, self._epoch_day = (cp.size, cp.root), day

    def _finish_interrupted_rotation(self, last) -> None:
        nxt = keys.next_path(self.key_path)
        if not nxt.exists():
            return
        try:
            new = parse_signer(nxt.read_text())
        except (OSError, NoteError):
            keys.abort_rotation(self.key_path)
            return
        named = False
        if last is not None:
            cp = parse_checkpoint(split_note(last[1])[0])
            named = any(v.split(" ", 1)[-1] == new.verifier.text() for v in extensions(cp).get(EXT_EPOCH, []))
        if named:  # the certificate is durable: complete the erasure of the old key
            keys.finish_rotation(self.key_path)
        else:
            keys.abort_rotation(self.key_path)

    # -- signing --------------------------------------------------------------
    def tick(self, archive_state: dict | None) -> str | None:
        """Sign if ``--sign-interval`` has passed since the last checkpoint."""
        now = self.clock()
        if self._last_t is not None and now - self._last_t < self.interval:
            return None
        return self.sign(archive_state)

    def sign(self, archive_state: dict | None) -> str | None:
        """Sign the committed tree in ``archive_state`` now; the note, or None."""
        with self._lock:
            now = self.clock()
            self._last_t = now
            size, root = state_root((archive_state or {}).get("tree"))
            if not self._consistent(size, root):
                return None
            day = self.store.day_for(now)
            ext = [f"{EXT_TIME} {int(now)}"]
            signers = [self.signer]
            new = None
            try:
                if self._epoch_day is not None and day > self._epoch_day:
                    new = keys.begin_rotation(self.key_path, self.signer.name)
                    self.store.append({"kind": "epoch", "day": day}, day)  # from now on entries go to the new day
                    prev = checkpoints_path(self.root, self._epoch_day)
                    ext += [f"{EXT_EPOCH} {day} {new.verifier.text()}",
                            f"{EXT_SEAL} {self._epoch_day} {file_sha256(prev)}"]
                    signers.append(new)
                note = sign_note(Checkpoint(self.origin, size, root, tuple(ext)).text(), *signers)
                self.store.append({"kind": "checkpoint", "note": note}, day)
                if new is not None:
                    keys.finish_rotation(self.key_path)
                    self.signer = new
            except OSError as exc:
                if new is not None:
                    try:
                        keys.abort_rotation(self.key_path)
                    except OSError:
                        pass
                self.failures["io"] += 1
                self._warn(f"signing a checkpoint failed: {exc.strerror or exc} (retried in "
                           f"{self.interval:g} s)")
                return None
            self._last, self._epoch_day = (size, root), day
            self.signed += 1
            self.last_signed_unix = now
            self._warned = None
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(note)  # must only enqueue (the witness client)
            except Exception as exc:  # a listener never stops signing
                self._warn(f"checkpoint listener failed: {exc!r}")
        return note

    def _consistent(self, size: int, root: bytes) -> bool:
        if self._last is None:
            return True
        last_size, last_root = self._last
        if size < last_size:
            self.failures["behind"] += 1
            self._warn(f"the tree ({size} records) is behind the newest signed checkpoint ({last_size}): "
                       "not signing until the re-derived records reach it")
            return False
        if size == last_size:
            ok = root == last_root
        elif not self._checked:
            ok = self.reader.root(last_size) == last_root
        else:
            ok = True
        if not ok:
            self.failures["forked"] += 1
            self._warn(f"the tree differs from the signed checkpoint of size {last_size}: refusing to "
                       "sign a forked history (verify the archive)")
            return False
        self._checked = True
        return True

    @property
    def signed_size(self) -> int | None:
        return self._last[0] if self._last is not None else None

    def recheck(self) -> None:
        """The tree was cut back and re-derived (a pipeline rebuild): check it
        against the signed checkpoint again before signing."""
        with self._lock:
            self._checked = False
            self.reader.reset()

    def _warn(self, message: str) -> None:
        if message != self._warned:
            print(f"vllm-audit-exporter: transparency log: {message}", file=self.err, flush=True)
            self._warned = message

    # -- hooks for witnesses and timestamps -------------------------------------
    def add_listener(self, fn: Callable[[str], None]) -> None:
        """``fn(note)`` for each newly signed checkpoint, in the signing thread."""
        self._listeners.append(fn)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not between 0 and {new_size}")
        return self.reader.consistency_proof(old_size, new_size)

    def add_cosignatures(self, checkpoint_text: str, signature_lines: list[str]) -> None:
        for line in signature_lines:
            if not line.startswith("\u2014 ") or not line.endswith("\n") or line.count("\n") != 1:
                raise ValueError(f"not a signature line: {line[:60]!r}")
        self.store.append(cosignature_entry(checkpoint_text, signature_lines))

    def add_timestamp(self, checkpoint_text: str, token: bytes) -> None:
        self.store.append(timestamp_entry(checkpoint_text, token))
