"""One background thread that hands the newest checkpoint to outside parties.

Witnesses and the time-stamping authority only ever need the *latest*
checkpoint: a cosignature (or a timestamp) over it covers every earlier one,
since the log proves consistency between any two. So a submission replaces
whatever was waiting (nothing queues up while a party is down), ``submit``
only swaps a reference under a lock (the log's writer thread calls it and
must never wait on the network), and each party that fails is retried with
exponential backoff, independently of the others.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Target:
    """One outside party: ``attempt(item)`` is True once it has ``item``."""

    name: str
    attempt: Callable[[str], bool]
    done: str | None = None
    delay: float = 0.0
    next_try: float = 0.0


class LatestWorker:
    def __init__(self, name: str, targets: list[Target], *, initial_backoff: float = 1.0,
                 max_backoff: float = 300.0, monotonic: Callable[[], float] = time.monotonic):
        self.targets = targets
        self.initial_backoff, self.max_backoff, self.monotonic = initial_backoff, max_backoff, monotonic
        self._item: str | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: str) -> None:
        """Never blocks on the network: the newest item wins."""
        with self._cond:
            self._item = item
            self._cond.notify()

    def pending(self) -> bool:
        with self._cond:
            return self._item is not None and any(t.done != self._item for t in self.targets)

    def close(self, timeout: float = 5.0) -> None:
        """Try each party that lacks the newest item once more (no backoff), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                item, closing, now = self._item, self._closing, self.monotonic()
                waiting = [t for t in self.targets if item is not None and t.done != item]
                due = [t for t in waiting if closing or t.next_try <= now]
                if not due:
                    if closing:
                        return
                    self._cond.wait(min(t.next_try for t in waiting) - now if waiting else None)
                    continue
            for t in due:
                try:
                    ok = t.attempt(item)
                except Exception as exc:  # a bug in one party's code must not stop the others
                    print(f"{self._thread.name}: {t.name}: unexpected {type(exc).__name__}: {exc}",
                          file=sys.stderr)
                    ok = False
                if ok:
                    t.done, t.delay, t.next_try = item, 0.0, 0.0
                else:
                    t.delay = min(max(self.initial_backoff, t.delay * 2), self.max_backoff)
                    t.next_try = self.monotonic() + t.delay
            if closing:
                return
