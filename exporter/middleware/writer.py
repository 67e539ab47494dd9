"""Bounded hand-off from vLLM's event loop to a daemon writer thread (stdlib only).

Rules:
- ``submit`` never blocks and never raises: it appends to a deque when both
  bounds (items, queued bytes) allow, else counts one drop. Only the event
  loop thread submits, so check-then-append is race free; producer and
  consumer each own their counters (``bytes_in`` / ``bytes_out``).
- The thread renders each item (``render(item) -> dict``; on failure
  ``fallback(item, exc)``), appends the batch as JSON lines and flushes;
  ``fsync`` runs at most every ``fsync_seconds`` and on close.
- Drops (queue full) and lines lost to write errors are reported by one
  ``vllm_audit_middleware_dropped`` line (the stat-logger plugin: its own
  status line, via ``dropped``) with the count since the last report,
  written as soon as a write succeeds again.
- ``FileSink`` rotates by renaming the file to ``<file>.1`` (replacing any
  older ``.1``) before a write would pass ``max_bytes``, then reopens; the
  exporter's tailer drains the old inode. It also reopens when the path no
  longer names the open inode (deleted or moved by someone else). The rename
  holds ``flock`` on ``<file>.lock``, the rotation lock of
  :mod:`.logfile`, so the exporter's ``--prune-rotated`` never deletes a
  ``.1`` swapped in between its check and its unlink (no lock file: the
  rename goes on unlocked).
- A stuck sink stalls only the thread: requests go on, the queue fills, drops
  are counted.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import json
import logging
import os
import threading
import time

from .line import dropped_line

log = logging.getLogger(__name__)


class FileSink:
    """Append-only JSONL file with rename rotation; used only by the writer thread."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fd: int | None = None
        self.size = 0
        self.ino = None
        self._lock_fd: int | None = None

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        st = os.fstat(self.fd)
        self.size, self.ino = st.st_size, st.st_ino

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def write(self, data: bytes) -> None:
        if self.fd is not None:
            try:
                moved = os.stat(self.path).st_ino != self.ino
            except FileNotFoundError:
                moved = True
            if moved:
                self._close()
        if self.fd is None:
            self._open()
        if self.size and self.size + len(data) > self.max_bytes:
            os.fsync(self.fd)  # the rotated file is complete on disk before it is renamed
            self._close()
            locked = self._lock()
            try:
                os.replace(self.path, self.path + ".1")
            finally:
                if locked:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._open()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def _lock(self) -> bool:
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            return True
        except OSError:
            return False  # rotation must not depend on it (the pruner then deletes nothing)

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


class LineWriter:
    """Queue + daemon thread. ``start=False`` lets tests drive ``drain()`` by hand."""

    def __init__(self, sink, render, fallback, *, max_items: int = 10000,
                 max_bytes: int = 256 << 20, fsync_seconds: float = 1.0,
                 clock=time.time, start: bool = True, dropped=dropped_line,
                 name: str = "vllm-audit-writer") -> None:
        self.sink = sink
        self.dropped_line = dropped  # (count, wall) -> the line that reports losses
        self.render = render
        self.fallback = fallback
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.fsync_seconds = fsync_seconds
        self.clock = clock
        self.queue: collections.deque = collections.deque()
        self.dropped = 0  # producer-owned
        self.bytes_in = 0  # producer-owned
        self.bytes_out = 0  # consumer-owned
        self.lost = 0  # consumer-owned: lines lost to write errors
        self.reported = 0  # consumer-owned
        self.written = 0
        self.write_errors = 0
        self.render_errors = 0
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._wake = threading.Event()
        self._stop = False
        self._thread = None
        if start:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
            atexit.register(self.close, 2.0)

    def submit(self, item, size: int) -> bool:
        """Called on the event loop; O(1), never blocks."""
        queued_bytes = self.bytes_in - self.bytes_out
        if len(self.queue) >= self.max_items or queued_bytes + size > self.max_bytes:
            self.dropped += 1
            return False
        self.bytes_in += size
        self.queue.append((item, size))
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.fsync_seconds)
            self._wake.clear()
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("vllm-audit middleware writer failed")
        self.drain()

    def drain(self) -> None:
        """Write everything queued now, then fsync if due."""
        lines, sizes = [], 0
        owed = self.dropped + self.lost - self.reported
        if owed > 0:
            lines.append(self.dropped_line(owed, self.clock()))
        while self.queue:
            item, size = self.queue.popleft()
            sizes += size
            try:
                lines.append(self.render(item))
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the rest
                self.render_errors += 1
                lines.append(self.fallback(item, exc))
        if lines:
            text = "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
                           for line in lines)
            # A lone surrogate (legal in decoded JSON) becomes "\udXXX": a valid JSON escape.
            data = text.encode("utf-8", "backslashreplace")
            count = len(lines) - (1 if owed > 0 else 0)
            try:
                self.sink.write(data)
                self.written += count
                self.reported += max(owed, 0)
                self._unsynced = True
            except Exception as exc:  # noqa: BLE001 - count the loss, keep the thread alive
                self.write_errors += 1
                self.lost += count
                if self.write_errors == 1 or self.write_errors % 1000 == 0:
                    log.warning("vllm-audit middleware cannot write %s: %s",
                                getattr(self.sink, "path", "?"), exc)
            self.bytes_out += sizes
        now = time.monotonic()
        if self._unsynced and (self._stop or now - self._last_sync >= self.fsync_seconds):
            try:
                self.sink.sync()
            except Exception:  # noqa: BLE001
                self.write_errors += 1
            self._unsynced = False
            self._last_sync = now

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after it wrote what is queued (bounded by ``timeout``)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.drain()
        if self._thread is None or not self._thread.is_alive():
            try:
                self.sink.close()
            except OSError:
                pass
