"""The pusher's state as ``/health`` shows it under ``"loki"``: one object
that owns its lock and its transitions (the pusher thread writes, the HTTP
thread reads a consistent copy)."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class LokiStatus:
    """Shown under ``"loki"`` in /health. Plain values, no secrets."""

    url: str
    last_success_unix: float | None = None
    last_error: str | None = None  # "reason: status message", Loki's text only
    last_error_unix: float | None = None
    consecutive_failures: int = 0
    auth_failing: bool = False
    backlog_records: int = 0
    position: dict | None = None
    dead_letters: int = 0
    note: str | None = None  # start-up fallbacks (clamped offset, corrupt state)

    def __post_init__(self):
        self._lock = threading.Lock()

    def report(self) -> dict:
        with self._lock:
            out = {k: v for k, v in asdict(self).items()}
        out["ok"] = self.consecutive_failures == 0
        return out

    def record_success(self, now: float) -> None:
        with self._lock:
            self.last_success_unix = now
            self.consecutive_failures = 0
            self.auth_failing = False

    def record_error(self, text: str, now: float, *, counted: bool, auth: bool) -> None:
        """A failed push (``counted``) or a note-only error (not counted)."""
        with self._lock:
            self.last_error = text[:600]
            self.last_error_unix = now
            if counted:
                self.consecutive_failures += 1
            if auth:
                self.auth_failing = True

    def record_dead_letters(self, n: int) -> None:
        with self._lock:
            self.dead_letters += n

    def record_backlog(self, records: int, position: dict) -> None:
        with self._lock:
            self.backlog_records = records
            self.position = position
