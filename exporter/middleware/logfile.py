"""A size-rotated log file that several vLLM processes share (stdlib only).

vLLM's API server and its engine-core process both log to ``/logs/vllm.log``
(compose.yaml's logging config). ``RotatingFileHandler`` is unsafe there:
each process would rotate on its own view of the size. This handler, named
in the dictConfig as ``exporter.middleware.logfile.SharedRotatingFileHandler``,
rotates under an ``flock`` on ``<file>.lock``:

- every emit takes the lock, reopens when the path no longer names its open
  file (another process rotated it: ``WatchedFileHandler`` semantics), and
  rotates when the file's real size (``fstat``, not its own offset) plus the
  line would pass ``maxBytes``;
- rotation is logrotate's: ``.k`` → ``.k+1`` (the oldest, ``.backupCount``,
  is replaced), the file → ``.1``, a new file. The exporter's tailer follows
  exactly this (it drains the old inode, then ``.k-1`` ... the path);
- so the volume holds at most ``maxBytes × (backupCount + 1)`` of vLLM log;
  lines are lost only if the exporter stays down while all of that is
  written (size it for your longest outage, docs/operations.md);
- ``dirMode`` (e.g. ``"0770"``): the log directory's mode, set at start.
  The exporter's ``--prune-rotated`` deletes the generations it has read and
  committed, which needs write access to the directory: compose gives it
  through the group (vLLM writes as root, the exporter runs as 10001:0), on
  a volume whose directory Docker creates root-owned 0755.

Any failure goes to ``handleError`` like every logging handler: logging must
never break vLLM.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os


class SharedRotatingFileHandler(logging.handlers.WatchedFileHandler):
    def __init__(self, filename, maxBytes: int = 100 << 20, backupCount: int = 10,  # noqa: N803
                 encoding=None, delay: bool = False, errors=None, dirMode=None):  # noqa: N803
        if dirMode is not None:
            try:
                os.chmod(os.path.dirname(os.path.abspath(filename)),
                         int(dirMode, 8) if isinstance(dirMode, str) else int(dirMode))
            except (OSError, ValueError):
                pass  # not the directory's owner: logging goes on, pruning will count it
        super().__init__(filename, mode="a", encoding=encoding, delay=delay, errors=errors)
        self.maxBytes, self.backupCount = int(maxBytes), max(1, int(backupCount))
        self._lock_fd: int | None = None

    def _lock_file(self) -> int:
        if self._lock_fd is None:
            self._lock_fd = os.open(self.baseFilename + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        return self._lock_fd

    def _rotate(self) -> None:
        if self.stream is not None:
            self.stream.flush()
            self.stream.close()
            self.stream = None
        base = self.baseFilename
        for i in range(self.backupCount - 1, 0, -1):
            if os.path.exists(f"{base}.{i}"):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        os.replace(base, f"{base}.1")
        self.stream = self._open()
        self._statstream()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fd = self._lock_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self.reopenIfNeeded()
                if self.stream is None:
                    self.stream = self._open()
                    self._statstream()
                if self.maxBytes > 0:
                    size = os.fstat(self.stream.fileno()).st_size
                    line = len((self.format(record) + self.terminator).encode(
                        self.stream.encoding or "utf-8", "replace"))
                    if size and size + line > self.maxBytes:
                        self._rotate()
                logging.FileHandler.emit(self, record)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except Exception:  # noqa: BLE001 - logging never breaks the program
            self.handleError(record)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
