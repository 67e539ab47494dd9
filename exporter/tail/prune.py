"""Delete rotated log generations that are read *and* committed (``--prune-rotated``).

vLLM's log rotates into ``<log>.1``, ``<log>.2``, ... (logrotate naming,
:mod:`exporter.middleware.logfile`); the writer drops the oldest generation
when the ring is full. With pruning, the exporter removes each generation
as soon as a durable checkpoint shows it was read to its end, so the ring
holds only what the exporter has not read yet.

When a generation may go (all must hold):

* **Read to the end.** The tailer drained it after it was rotated away and
  moved on (:attr:`FileTailer.finished`: its position at EOF, in the
  format of :mod:`exporter.tail.position`). A file the tailer never read
  (older than a first start) is never in that list.
* **Committed.** Pruning runs after a successful ``Pipeline.commit`` with the
  positions that checkpoint holds: a generation goes only if the committed
  position is already in a later file (its (dev, inode) is another one), so
  the archive records and checkpoint covering its lines are fsynced and a
  crash after the deletion never needs its bytes.
* **Provably the same bytes.** Under one of the log's own rotation names
  (``<log>.<digits>``, never the log itself, never another name), a regular
  file by ``lstat`` (a symlink is not followed, nor deleted), with the
  (dev, inode) read, the size read (nothing appended since) and the
  position's head and tail digests (:func:`position.fingerprint_ok`).
* **Under the writer's lock.** Rotation renames happen under ``flock`` on
  ``<log>.lock``; the check and the unlink hold it too (non-blocking: when
  busy, retried after the next commit), so a rename between them cannot make
  us delete another generation. No lock file (another writer): nothing goes.

Every deletion is logged (one line) and counted; a generation that cannot be
deleted is counted by reason (``permission``, ``changed``, ``no_lock``,
``error``), left in place for the writer's ring and never retried;
ingestion goes on regardless. One that is already gone (the ring dropped it
first) is forgotten silently: it was read. The list is part of the
checkpoint (``rotated_read``), and the runtime prunes once at start with the
checkpoint it restores: a crash between a commit and its deletions only
delays them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat as stat_mod

from exporter.tail.position import OsFs, fingerprint_ok, validate

log = logging.getLogger("exporter.prune")

FAILURE_REASONS = ("permission", "changed", "no_lock", "error")
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class Busy(Exception):
    """The writer holds the rotation lock: try again after the next commit."""


class RotatedPruner:
    """After each commit, delete the committed, fully read generations of
    the followed logs. ``tailers``: source name → FileTailer (its
    ``keep_finished`` is switched on here)."""

    def __init__(self, tailers: dict, *, deleted, failures, fs: OsFs | None = None):
        self.tailers = tailers
        self._deleted, self._failures = deleted, failures  # Counters labelled (source[, reason])
        self._fs = fs or OsFs()
        for name, tailer in tailers.items():
            tailer.keep_finished = True
            deleted.labels(name)
            for reason in FAILURE_REASONS:
                failures.labels(name, reason)

    def after_commit(self, state: dict) -> None:
        """``state``: the checkpoint just written (its ``sources`` positions)."""
        committed = state.get("sources") or {}
        for name, tailer in self.tailers.items():
            self._prune(name, tailer, committed.get(name))

    def restore(self, state: dict) -> None:
        """The generations a checkpoint lists as read (``rotated_read``): a
        crash between that commit and their deletion only delays it."""
        for name, tailer in self.tailers.items():
            for entry in (state.get("rotated_read") or {}).get(name) or ():
                if validate(entry, tailer.path) is not None and entry["dev"] is not None:
                    tailer.finished.append(entry)

    def _prune(self, name: str, tailer, pos: dict | None) -> None:
        done = tailer.finished
        if not done or not pos or pos.get("dev") is None:
            return
        here = (pos["dev"], pos["ino"])
        # Generations are finished in order; the committed position is in
        # the first one not yet passed (lines still pending) or in a later file.
        n = next((i for i, e in enumerate(done) if (e["dev"], e["ino"]) == here), len(done))
        while n > 0:
            entry = done[0]
            try:
                self._delete(name, tailer.path, entry)
            except Busy:
                return  # keep the rest in order for the next commit
            except Exception as exc:  # noqa: BLE001 - pruning never stops ingestion
                self._fail(name, "error", str(entry.get("file")), repr(exc))
            done.popleft()
            n -= 1

    def _fail(self, name: str, reason: str, what: str, why: str) -> None:
        self._failures.labels(name, reason).inc()
        log.warning("rotated log %s kept (%s): %s", what, reason, why)

    def _delete(self, name: str, path: str, entry: dict) -> None:
        ident = (entry["dev"], entry["ino"])
        found = self._find(path, ident, entry.get("file"))
        if found is None:
            log.debug("rotated log of %s with inode %s already gone", path, ident[1])
            return
        try:
            lock = os.open(path + ".lock", os.O_RDONLY)
        except OSError as exc:
            return self._fail(name, "no_lock" if exc.errno == errno.ENOENT else "error",
                              found, f"no rotation lock {path}.lock ({exc.strerror})")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy from None
            # Under the lock no rename happens: find and prove it again, then unlink.
            found = self._find(path, ident, found)
            if found is None:
                return
            try:
                with self._fs.open(found) as f:
                    st = self._fs.fstat(f)
                    same = ((st.st_dev, st.st_ino) == ident and st.st_size == entry["offset"]
                            and fingerprint_ok(self._fs, f, st.st_size, entry))
                if not same:
                    return self._fail(name, "changed", found,
                                      "its bytes are no longer exactly the ones read")
                self._fs.unlink(found)
            except OSError as exc:
                reason = "permission" if exc.errno in _DENIED else "error"
                return self._fail(name, reason, found, f"{exc.strerror or exc}")
        finally:
            os.close(lock)  # closing releases the flock
        self._deleted.labels(name).inc()
        # WARNING: the exporter configures no logging, and Python's last-resort
        # handler shows WARNING and above (on stderr: `docker logs`); a
        # deletion of a user's file must be visible there.
        log.warning("deleted rotated log %s (%d bytes, read and committed)", found, entry["offset"])

    def _find(self, path: str, ident: tuple, hint: str | None) -> str | None:
        """The rotation name (``<path>.<digits>``) of the regular file
        ``ident``, by lstat: never the path, never through a symlink."""
        d, base = os.path.split(path)
        rot = re.compile(re.escape(base) + r"\.\d+")
        try:
            names = sorted(self._fs.listdir(d or "."))
        except OSError:
            return None
        if hint:
            names.insert(0, os.path.basename(hint))
        for n in names:
            if not rot.fullmatch(n):
                continue
            full = os.path.join(d, n)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat_mod.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == ident:
                return full
        return None
