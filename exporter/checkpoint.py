"""The atomic JSON state file (pipeline offsets, in-flight state, metrics).

Rules:

* **Write** (:func:`write_atomic`): serialise to ``<path>.tmp`` in the same
  directory, fsync it, keep the current file as ``<path>.prev`` (a hard link,
  so ``<path>`` exists at every instant; a copy-free rename where links are
  not supported), rename the temp file over ``<path>``, fsync the directory.
  A crash at any point leaves ``<path>`` either the old or the new complete
  file (plus a stray temp file, overwritten by the next write, never read).
* **Envelope.** The file is ``{"checkpoint":2,"digest":"<kind>:<hex>","state":
  <body>}`` on one line. ``<body>`` is the compact JSON of the state *in its
  own key order* (restoring it gives back dicts in the order they were built,
  so a request held across a restart is recorded with the same bytes as
  without one), and the digest covers exactly those bytes:
  ``hmac-sha256:`` with the archive's HMAC key when one is configured
  (:func:`use_key`), else ``sha256:``. A file that is empty, torn, not JSON,
  not byte-for-byte in that layout, or whose digest does not match is
  corrupt. Format 1 (``{"checkpoint":1,"sha256":<hex>,"state":...}``, the
  digest over the sorted-keys JSON of the state) is still read.
* **Keys.** With a key, only a valid ``hmac-sha256`` envelope is accepted:
  an unkeyed one (format 1, or ``sha256:``) is ``not_keyed``, so someone who
  can write the state directory but lacks the key cannot hand the exporter
  offsets, in-flight requests or an archive cut of their choosing (a
  downgrade, as for records in :mod:`exporter.chain`). Without a key a keyed
  envelope is ``needs_key``. Either way the file is not used, and the
  exporter takes its no-checkpoint path (:mod:`exporter.archive.recovery`).
* **Read** (:func:`read_checkpoint`): the current file if it is good, else
  ``<path>.prev`` if that is good, else nothing. Falling back to the previous
  checkpoint is safe by design: every checkpoint is a consistent snapshot and
  the pipeline re-derives everything after it (the archive is cut back to the
  checkpointed size). Never raises; the reason says what was wrong.
* **Errors.** Any OS error while writing (disk full, read-only directory,
  quota) raises :class:`CheckpointError` with ``reason`` = the errno name
  (``ENOSPC``, ``EROFS``, …), a metric label value. The temp file is removed
  best-effort; ``<path>`` and ``<path>.prev`` are untouched or complete.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
from typing import NamedTuple

from .chain import HMAC_PREFIX, SHA_PREFIX, keyed_digest
from .durable import fsync_dir

FORMAT = 2  # written; format 1 is still read
CHECKPOINT_NAME = "checkpoint.json"  # in the state directory
MODE = 0o640
_DIGEST = re.compile(r"^(?:sha256|hmac-sha256):[0-9a-f]{64}$")
# Insertion order kept: the body is the state exactly as the pipeline built it.
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

# The key each checkpoint path is sealed with. The pipeline calls
# write_atomic(path, state); the composition root says once which key
# applies to its path (runtime.build -> use_key).
_KEYS: dict[str, bytes] = {}
_REGISTERED = object()


class CheckpointError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Loaded(NamedTuple):
    state: dict | None
    source: str  # "current", "prev" or "none"
    reason: str | None  # why the current file (and .prev) was not used


class OsOps:
    """The OS calls of a checkpoint write; tests override one to fail it."""

    def open(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), MODE)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fsync_dir(path)


def use_key(path: str | os.PathLike, key: bytes | None) -> None:
    """Seal (and read) the checkpoint at ``path`` with ``key`` from now on;
    None: the unkeyed ``sha256:`` envelope."""
    name = os.path.abspath(path)
    if key is None:
        _KEYS.pop(name, None)
    else:
        _KEYS[name] = key


def _key_for(path: str | os.PathLike, key) -> bytes | None:
    return _KEYS.get(os.path.abspath(path)) if key is _REGISTERED else key


def _canonical_v1(state: object) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _prefix(digest: str) -> bytes:
    return b'{"checkpoint":%d,"digest":"%s","state":' % (FORMAT, digest.encode())


def encode(state: dict, key: bytes | None = None) -> bytes:
    body = _BODY_ENCODER(state).encode()
    return _prefix(keyed_digest(key, body)) + body + b"}\n"


def decode(data: bytes, key: bytes | None = None) -> tuple[dict | None, str | None]:
    """Return ``(state, None)`` or ``(None, reason)`` (module rules on keys)."""
    if not data.strip():
        return None, "empty"
    try:
        obj = json.loads(data)
    except ValueError:
        return None, "not_json"  # torn write or garbage
    if not isinstance(obj, dict) or obj.get("checkpoint") not in (1, FORMAT) \
            or not isinstance(obj.get("state"), dict):
        return None, "bad_format"
    state = obj["state"]
    if obj["checkpoint"] == 1:
        if hashlib.sha256(_canonical_v1(state)).hexdigest() != obj.get("sha256"):
            return None, "bad_digest"
        return (None, "not_keyed") if key is not None else (state, None)
    digest = obj.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        return None, "bad_format"
    prefix = _prefix(digest)
    if not data.startswith(prefix) or not data.endswith(b"}\n"):
        return None, "bad_digest"  # reformatted: not the bytes that were sealed
    body = data[len(prefix):-2]
    if digest.startswith(HMAC_PREFIX) and key is None:
        return None, "needs_key"
    if digest.startswith(SHA_PREFIX) and key is not None:
        return None, "not_keyed"
    if not hmac.compare_digest(digest, keyed_digest(key, body)):
        return None, "bad_digest"
    return state, None


def write_atomic(path: str, state: dict, *, ops: OsOps | None = None, key=_REGISTERED) -> None:
    """Replace ``path`` with ``state`` atomically and durably (module rules).
    ``key`` defaults to the one registered for ``path`` (:func:`use_key`)."""
    ops = ops or OsOps()
    try:
        data = encode(state, _key_for(path, key))
    except (TypeError, ValueError) as e:  # a programming error, but never crash the loop
        raise CheckpointError("not_serialisable", str(e)) from e
    tmp, prev = path + ".tmp", path + ".prev"
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = ops.open(tmp)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[ops.write(fd, view):]
            ops.fsync(fd)
        finally:
            ops.close(fd)
        _keep_prev(ops, path, prev)
        ops.replace(tmp, path)
        ops.fsync_dir(directory)
    except OSError as e:
        try:
            ops.unlink(tmp)
        except OSError:
            pass
        raise CheckpointError(errno.errorcode.get(e.errno, "OSError"), str(e)) from e


def _keep_prev(ops: OsOps, path: str, prev: str) -> None:
    """Make ``prev`` the current checkpoint, leaving ``path`` in place."""
    link_tmp = prev + ".tmp"
    try:
        try:
            ops.unlink(link_tmp)
        except FileNotFoundError:
            pass
        ops.link(path, link_tmp)
        ops.replace(link_tmp, prev)  # a hard link cannot overwrite: rename it over
    except FileNotFoundError:
        return  # first checkpoint: nothing to keep
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links here: a rename leaves a short window without <path>;
        # read_checkpoint then falls back to <path>.prev, which is complete
        try:
            ops.replace(path, prev)
        except FileNotFoundError:
            pass


def read_file(name: str, key: bytes | None) -> tuple[dict | None, str | None]:
    """One checkpoint file: ``(state, None)`` or ``(None, reason)``; reason
    ``missing``, an errno name, or a :func:`decode` reason. Never raises."""
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, errno.errorcode.get(e.errno, "OSError")
    return decode(data, key)


def read_checkpoint(path: str, key=_REGISTERED) -> Loaded:
    """The newest good checkpoint (current, else ``.prev``); never raises.
    ``key`` defaults to the one registered for ``path`` (:func:`use_key`)."""
    key = _key_for(path, key)
    reasons = []
    for source, name in (("current", path), ("prev", path + ".prev")):
        state, why = read_file(name, key)
        if state is not None:
            return Loaded(state, source, "; ".join(reasons) or None)
        reasons.append(f"{source}: {why}")
    return Loaded(None, "none", "; ".join(reasons))
