"""The atomic JSON state file (pipeline offsets, in-flight state, metrics).

Rules:

* **Write** (:func:`write_atomic`): serialise to ``<path>.tmp`` in the same
  directory, fsync it, keep the current file as ``<path>.prev`` (a hard link,
  so ``<path>`` exists at every instant; a copy-free rename where links are
  not supported), rename the temp file over ``<path>``, fsync the directory.
  A crash at any point leaves ``<path>`` either the old or the new complete
  file (plus a stray temp file, overwritten by the next write, never read).
* **Envelope.** The file is ``{"checkpoint": 1, "sha256": <hex>, "state":
  <obj>}`` where the digest covers the canonical JSON of ``state`` (sorted
  keys, compact separators). A file that is empty, torn, not JSON, or whose
  digest does not match is corrupt.
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
import json
import os
from typing import NamedTuple

FORMAT = 1
MODE = 0o640


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
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _canonical(state: object) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def encode(state: dict) -> bytes:
    body = _canonical(state)
    digest = hashlib.sha256(body).hexdigest()
    return b'{"checkpoint":%d,"sha256":"%s","state":%s}\n' % (FORMAT, digest.encode(), body)


def decode(data: bytes) -> tuple[dict | None, str | None]:
    """Return ``(state, None)`` or ``(None, reason)``."""
    if not data.strip():
        return None, "empty"
    try:
        obj = json.loads(data)
    except ValueError:
        return None, "not_json"  # torn write or garbage
    if not isinstance(obj, dict) or obj.get("checkpoint") != FORMAT or "state" not in obj:
        return None, "bad_format"
    state = obj["state"]
    if not isinstance(state, dict):
        return None, "bad_format"
    if hashlib.sha256(_canonical(state)).hexdigest() != obj.get("sha256"):
        return None, "bad_digest"
    return state, None


def write_atomic(path: str, state: dict, *, ops: OsOps | None = None) -> None:
    """Replace ``path`` with ``state`` atomically and durably (module rules)."""
    ops = ops or OsOps()
    try:
        data = encode(state)
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


def read_checkpoint(path: str) -> Loaded:
    """The newest good checkpoint (current, else ``.prev``); never raises."""
    reasons = []
    for source, name in (("current", path), ("prev", path + ".prev")):
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            reasons.append(f"{source}: missing")
            continue
        except OSError as e:
            reasons.append(f"{source}: {errno.errorcode.get(e.errno, 'OSError')}")
            continue
        state, why = decode(data)
        if state is not None:
            return Loaded(state, source, "; ".join(reasons) or None)
        reasons.append(f"{source}: {why}")
    return Loaded(None, "none", "; ".join(reasons))
