"""The mount targets a stack needs that are missing on this host (a
service's container path such as /alerts or /run/secrets/...): enter.py
creates them empty, and the last running stack removes them again (a shared
lock tells whether another stack still uses them)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "/tmp/vllm-audit-stack.lock"  # held shared by every running stack


class Mountpoints:
    def __init__(self) -> None:
        self._lock = None
        self._mountpoints: list[Path] = []

    def note(self, services) -> None:
        """The mount targets missing on this host: enter.py creates them (empty)
        and :meth:`remove` removes them again when no other stack is running."""
        self._lock = open(LOCK_FILE, "a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        for svc in services:
            for _src, target, _ro in svc.mounts():
                top, path = None, Path(target)
                while not path.exists():
                    top, path = path, path.parent
                if top is not None and top not in self._mountpoints:
                    self._mountpoints.append(top)

    def remove(self) -> None:
        if self._lock is None:
            return
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another stack still uses them
            self._lock.close()
            return
        for top in self._mountpoints:
            for dirpath, dirs, files in sorted(os.walk(top, topdown=False), reverse=True):
                for f in files:
                    fp = os.path.join(dirpath, f)
                    if os.path.getsize(fp) == 0 and not os.path.ismount(fp):
                        os.unlink(fp)
                if not os.path.ismount(dirpath):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass  # not empty: not only ours
            if top.is_file() and top.stat().st_size == 0:
                top.unlink()
        self._lock.close()
