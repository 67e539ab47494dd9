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
* **Journal** (format 3). A state whose in-flight store is an
  :class:`~exporter.inflight.InFlight` is journaled once its snapshot
  reaches ``JOURNAL_FROM`` bytes: the file becomes a *base*,
  ``{"checkpoint":3,"journal":<gen>,"digest":…,"state":<body>}`` (the digest
  over ``"<gen>:"`` and the body), and each later commit appends one record
  of what changed to ``<path>.j<gen>`` and fsyncs it (:mod:`exporter.journal`)
  instead of rewriting the file. So a commit costs O(changes), not
  O(in flight). When the journal outgrows ``JOURNAL_RATIO`` times its base
  (at least ``JOURNAL_MIN``) the next commit compacts: an empty
  ``<path>.j<gen+1>`` is created and made durable, then the new base is
  written as above (the old one kept as ``.prev``, with its journal); other
  journals are removed. The first commit of a store (a restart) and the one
  after a failed commit are always a base, so a torn record is never
  appended to. Reading a base replays its journal: the state is exactly the
  last durable commit's; a torn last record is ignored (never
  acknowledged). A missing journal or one damaged before its last record
  makes that file unusable (reason ``journal_missing``/``journal_corrupt``
  with the journal's name), and ``.prev`` is tried.
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
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from . import journal
from .chain import HMAC_PREFIX, SHA_PREFIX, keyed_digest
from .durable import fsync_dir
from .inflight import InFlight

FORMAT = 2  # a full snapshot; format 1 is still read
JOURNAL_FORMAT = 3  # a base with a journal (module rules)
JOURNAL_FROM = 256 * 1024  # bytes of snapshot from which a store is journaled
# Bytes a journal may always reach before compaction. A compaction is a
# full encoding of the in-flight store and the recent ids (~20 ms at 20 000
# recent ids); a restart replays at most this much journal (a few tens of
# ms of JSON decoding at 4 MiB), so a larger bound buys fewer compactions
# for a start-up cost nobody notices: a 32 MiB replay went from 3 bases to 1.
JOURNAL_MIN = 4 << 20
JOURNAL_RATIO = 1.0  # ... or this many times its base
_JOURNAL_PATH = re.compile(r"\.j\d+$")
_BASE_HEAD = re.compile(rb'^\{"checkpoint":3,"journal":(\d+),')
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


@dataclass(frozen=True)
class JournalSync:
    """Where a store's last commit went: ``gen`` None for a full snapshot,
    else its base's journal, ``seq`` records and ``size`` bytes in."""

    path: str
    key: bytes | None
    gen: int | None
    seq: int = 0
    size: int = 0
    base_size: int = 0
    # The correlator's recent ids as of that commit (a copy): the next
    # journal record carries only how they changed (exporter.journal).
    recent: list | None = field(default=None, compare=False, repr=False)


class OsOps:
    """The OS calls of a checkpoint write; tests override one to fail it."""

    def open(self, path: str) -> int:
        """For writing: a journal (``<path>.j<gen>``) to append to, any other
        file (the temp file) truncated."""
        mode = os.O_APPEND if _JOURNAL_PATH.search(path) else os.O_TRUNC
        return os.open(path, os.O_WRONLY | os.O_CREAT | mode | getattr(os, "O_CLOEXEC", 0), MODE)

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


def _base_prefix(gen: int, digest: str) -> bytes:
    return b'{"checkpoint":%d,"journal":%d,"digest":"%s","state":' % (JOURNAL_FORMAT, gen, digest.encode())


def encode_base(state: dict, gen: int, key: bytes | None = None, body: bytes | None = None) -> bytes:
    """A format-3 base pointing at journal ``gen`` (module rules)."""
    body = _BODY_ENCODER(state).encode() if body is None else body
    return _base_prefix(gen, keyed_digest(key, b"%d:" % gen + body)) + body + b"}\n"


def decode(data: bytes, key: bytes | None = None) -> tuple[dict | None, str | None]:
    """Return ``(state, None)`` or ``(None, reason)`` (module rules on keys).
    For a format-3 base, the state of the base alone (see :func:`read_file`)."""
    state, why, _gen = _decode(data, key)
    return state, why


def _decode(data: bytes, key: bytes | None) -> tuple[dict | None, str | None, int | None]:
    """:func:`decode` plus the journal generation of a format-3 base."""
    if not data.strip():
        return None, "empty", None
    try:
        obj = json.loads(data)
    except ValueError:
        return None, "not_json", None  # torn write or garbage
    if not isinstance(obj, dict) or obj.get("checkpoint") not in (1, FORMAT, JOURNAL_FORMAT) \
            or not isinstance(obj.get("state"), dict):
        return None, "bad_format", None
    state = obj["state"]
    if obj["checkpoint"] == 1:
        if hashlib.sha256(_canonical_v1(state)).hexdigest() != obj.get("sha256"):
            return None, "bad_digest", None
        return (None, "not_keyed", None) if key is not None else (state, None, None)
    digest = obj.get("digest")
    gen = obj.get("journal") if obj["checkpoint"] == JOURNAL_FORMAT else None
    if not isinstance(digest, str) or not _DIGEST.match(digest) \
            or obj["checkpoint"] == JOURNAL_FORMAT and (type(gen) is not int or gen < 0):
        return None, "bad_format", None
    prefix = _prefix(digest) if gen is None else _base_prefix(gen, digest)
    if not data.startswith(prefix) or not data.endswith(b"}\n"):
        return None, "bad_digest", None  # reformatted: not the bytes that were sealed
    body = data[len(prefix):-2]
    if digest.startswith(HMAC_PREFIX) and key is None:
        return None, "needs_key", None
    if digest.startswith(SHA_PREFIX) and key is not None:
        return None, "not_keyed", None
    sealed = body if gen is None else b"%d:" % gen + body
    if not hmac.compare_digest(digest, keyed_digest(key, sealed)):
        return None, "bad_digest", None
    return state, None, gen


def write_atomic(path: str, state: dict, *, ops: OsOps | None = None, key=_REGISTERED) -> None:
    """Make ``state`` the checkpoint at ``path``, atomically and durably:
    a full snapshot, a journaled base, or one journal record (module rules).
    ``key`` defaults to the one registered for ``path`` (:func:`use_key`)."""
    ops = ops or OsOps()
    key = _key_for(path, key)
    store = journal.store_of(state)
    if not isinstance(store, InFlight):
        _replace(path, _encoded(lambda: encode(state, key)), ops)
        return
    sync, apath = store.sync, os.path.abspath(path)
    if sync is not None and sync.gen is not None and sync.path == apath and sync.key == key \
            and sync.size <= max(JOURNAL_MIN, JOURNAL_RATIO * sync.base_size):
        _append(path, state, store, sync, ops, key)
    else:
        _write_base(path, state, store, ops, key)


def _encoded(make) -> bytes:
    try:
        return make()
    except (TypeError, ValueError) as e:  # a programming error, but never crash the loop
        raise CheckpointError("not_serialisable", str(e)) from e


def _append(path: str, state: dict, store: InFlight, sync: JournalSync, ops: OsOps, key) -> None:
    """One commit as a journal record, durable once fsynced."""
    seq = sync.seq + 1
    data = _encoded(lambda: journal.encode_record(sync.gen, seq, state, store, store.dirty, key, sync.recent))
    store.sync = None  # until this record is durable: a failure means a new base next time
    try:
        fd = ops.open(journal.journal_name(path, sync.gen))
        try:
            _write_all(ops, fd, data)
            ops.fsync(fd)
        finally:
            ops.close(fd)
    except OSError as e:
        raise CheckpointError(errno.errorcode.get(e.errno, "OSError"), str(e)) from e
    store.committed(replace(sync, seq=seq, size=sync.size + len(data), recent=_recent_copy(state)))


def _write_base(path: str, state: dict, store: InFlight, ops: OsOps, key) -> None:
    """A full snapshot (small) or a format-3 base with a new empty journal."""
    sync, apath = store.sync, os.path.abspath(path)
    body = _encoded(lambda: _BODY_ENCODER(state).encode())
    tidy = sync is None or sync.gen is not None  # journals of this or an earlier run may be about
    store.sync = None
    directory = os.path.dirname(apath)
    if len(body) < JOURNAL_FROM:
        gen, data = None, _prefix(keyed_digest(key, body)) + body + b"}\n"
    else:
        gen = _next_gen(path)
        data = encode_base(state, gen, key, body)
        try:
            fd = ops.open(journal.journal_name(path, gen))  # new: empty
            try:
                ops.fsync(fd)
            finally:
                ops.close(fd)
            ops.fsync_dir(directory)
        except OSError as e:
            raise CheckpointError(errno.errorcode.get(e.errno, "OSError"), str(e)) from e
    keep = {gen, _gen_of(path)} if tidy else set()
    _replace(path, data, ops)
    if tidy:
        _remove_journals(path, keep, ops)
    store.committed(JournalSync(apath, key, gen, 0, 0, len(data), _recent_copy(state) if gen is not None else None))


def _recent_copy(state: dict) -> list | None:
    recent = journal.recent_of(state)
    return None if recent is None else list(recent)


def _write_all(ops: OsOps, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked
        view = view[ops.write(fd, view):]


def _journals(path: str) -> dict[int, str]:
    """The journal files beside ``path``: generation -> file name."""
    directory, name = os.path.split(os.path.abspath(path))
    stem = name + journal.JOURNAL_SUFFIX
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    return {int(n[len(stem):]): os.path.join(directory, n) for n in names
            if n.startswith(stem) and n[len(stem):].isdigit()}


def _next_gen(path: str) -> int:
    return max(_journals(path), default=0) + 1


def _gen_of(path: str) -> int | None:
    """The journal generation the file at ``path`` points at, if a base."""
    try:
        with open(path, "rb") as f:
            m = _BASE_HEAD.match(f.read(64))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _remove_journals(path: str, keep: set, ops: OsOps) -> None:
    """Best effort: journals neither the checkpoint nor ``.prev`` points at."""
    for gen, name in _journals(path).items():
        if gen not in keep:
            try:
                ops.unlink(name)
            except OSError:
                pass


def _replace(path: str, data: bytes, ops: OsOps) -> None:
    """``data`` becomes the file at ``path``: temp file, fsync, the current
    file kept as ``.prev``, rename, directory fsync (module rules)."""
    tmp, prev = path + ".tmp", path + ".prev"
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = ops.open(tmp)
        try:
            _write_all(ops, fd, data)
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
    ``missing``, an errno name, or a :func:`decode` reason; for a base whose
    journal cannot be used, ``journal_missing (<file>)`` or
    ``journal_corrupt (<file>)`` (or an errno name and the file). A base's
    state is the last durable commit of its journal. Never raises."""
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, errno.errorcode.get(e.errno, "OSError")
    state, why, gen = _decode(data, key)
    if state is None or gen is None:
        return state, why
    base = name.removesuffix(".prev")
    jname = journal.journal_name(base, gen)
    try:
        with open(jname, "rb") as f:
            jdata = f.read()
    except FileNotFoundError:
        return None, f"journal_missing ({jname})"
    except OSError as e:
        return None, f"{errno.errorcode.get(e.errno, 'OSError')} ({jname})"
    try:
        state, _records, _good = journal.replay(state, jdata, gen, key, jname)
    except journal.JournalError as e:
        return None, f"{e.reason} ({jname}: {str(e).split(': ', 1)[-1]})"
    return state, None


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
