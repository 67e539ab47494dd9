"""Worker threads that an unexpected exception cannot silently stop.

``run`` has two long-lived workers on the audit path, the pipeline and the
Loki pusher. Each runs under a :class:`Supervisor`:

* An exception escaping the worker's loop is logged with its traceback and
  counted (``vllm_audit_thread_restarts_total{thread}``); the thread is shown
  down (``vllm_audit_thread_up{thread} 0``, ``/health`` 503 naming the error).
  The failed worker is never committed: its in-memory state may be half
  updated.
* After a backoff (``backoff_initial`` doubling up to ``backoff_max``) the
  worker is *recovered* and entered again. The pipeline is rebuilt from its
  last checkpoint (:func:`exporter.runtime.rebuild_pipeline`, the same path
  as a process restart, so the records after the checkpoint are re-derived
  byte-identically: nothing lost, nothing doubled); the pusher forgets its
  read-ahead and resends from its acknowledged position.
* The worker calls ``progress()`` when it has demonstrably moved on (the
  pipeline: a checkpoint written since the restart, or 60 s without new
  input or failure; the pusher: a batch acknowledged, or nothing left to
  send). Only then is it up again and ``/health`` back to 200.
* After ``limit`` consecutive failures without progress the supervisor gives
  up: ``/health`` says so and ``on_give_up`` makes the process exit with
  status 1, so the orchestrator restarts it (from the same checkpoint). An
  ``OSError`` (disk full, read-only file system, permissions) does not count
  towards the limit: a restart cannot fix the disk, so it is retried, and
  reported, until it goes away.
* A worker that ends in any other way than being asked to stop (an exception
  that is not an ``Exception``) is a give-up too: never a silent death.

Pure apart from the thread it runs in: the clock and the wait are injected.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Callable

log = logging.getLogger("exporter.supervise")

EXIT_THREAD_FAILED = 1


def describe(exc: BaseException) -> str:
    """One line for /health: type, message and where it was raised."""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else None
    if tb:
        frame = tb[-1]
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}{where}"


class Supervisor:
    """Run ``body(progress)`` until ``stop`` is set; see the module rules."""

    def __init__(self, name: str, body: Callable[[Callable[[], None]], None], *,
                 stop: threading.Event, status, up_gauge, restarts_counter,
                 recover: Callable[[], None] = lambda: None,
                 on_give_up: Callable[[str], None] = lambda reason: None,
                 limit: int = 5, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.body = body
        self.stop = stop
        self.status = status  # health.ThreadHealth
        self.up_gauge = up_gauge
        self.restarts_counter = restarts_counter
        self.recover = recover
        self.on_give_up = on_give_up
        self.limit = max(0, limit)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self._counted = 0  # consecutive failures that count towards the limit
        self.gave_up = False

    # -- called by the worker -------------------------------------------------
    def progress(self) -> None:
        """The worker moved on since its last failure: it is up again."""
        st = self.status
        if st.consecutive_failures or st.state != "running":
            if st.consecutive_failures:
                log.warning("%s: running again after %d failure(s)", self.name,
                            st.consecutive_failures)
            st.consecutive_failures = 0
            st.state = "running"
            self._counted = 0
            self.up_gauge.set(1)

    # -- the thread -----------------------------------------------------------
    def run(self) -> None:
        st = self.status
        st.state = "running"
        self.up_gauge.set(1)
        finished = False
        try:
            while True:
                try:
                    self.body(self.progress)
                    finished = True  # the body returns only once stop is set
                    return
                except Exception as exc:  # noqa: BLE001 - that is the point
                    self._failed(exc)
                if not self._restart():
                    finished = True
                    return
        finally:
            if not finished and not self.stop.is_set():
                # BaseException (SystemExit in a thread, ...): never a silent death.
                self.status.last_error = self.status.last_error or "the thread ended unexpectedly"
                self._give_up(f"{self.name}: the thread ended unexpectedly")
            elif not self.gave_up:
                st.state = "stopped"
            if st.state != "running":
                self.up_gauge.set(0)

    def _restart(self) -> bool:
        """Back off, recover, count the restart. False: stop or give up."""
        while True:
            if self._counted > self.limit:
                self._give_up(f"{self.name}: giving up after {self.status.consecutive_failures} "
                              f"failure(s) without progress ({self.status.last_error})")
                return False
            delay = min(self.backoff_max,
                        self.backoff_initial * 2 ** max(0, self.status.consecutive_failures - 1))
            if self.stop.wait(delay):
                return False
            try:
                self.recover()
            except Exception as exc:  # noqa: BLE001 - a failed recovery is one more failure
                self._failed(exc, during="recovery")
                continue
            self.status.restarts += 1
            self.restarts_counter.inc()
            self.status.state = "restarting"
            log.warning("%s: restarted (%d failure(s) in a row)", self.name,
                        self.status.consecutive_failures)
            return True

    def _failed(self, exc: Exception, during: str = "") -> None:
        st = self.status
        st.consecutive_failures += 1
        if not isinstance(exc, OSError):
            self._counted += 1
        st.last_error = describe(exc)
        st.last_error_unix = self.clock()
        st.state = "restarting"
        self.up_gauge.set(0)
        log.error("%s: unexpected failure%s (%d in a row); restarting in a moment",
                  self.name, f" during {during}" if during else "", st.consecutive_failures,
                  exc_info=exc)

    def _give_up(self, what: str) -> None:
        self.gave_up = True
        self.status.state = "failed"
        self.up_gauge.set(0)
        message = f"{what}; exiting with status {EXIT_THREAD_FAILED}"
        log.critical(message)
        self.on_give_up(message)
