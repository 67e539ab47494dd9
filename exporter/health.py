"""What ``/health`` reports, and the rule for healthy vs unhealthy.

The pipeline, tailers and checkpoint writer update a :class:`Health` object
with plain attribute writes (each field is written by one thread; a reader
may see one update late, never a torn value). ``report()`` turns it into
the ``/health`` JSON.

Unhealthy (HTTP 503) when any of these holds, each listed in ``problems``:

1. a *required* log source is not up (file missing or unreadable): records
   are being lost or delayed right now. A file that has not existed since the
   exporter started, with no checkpoint naming one, is only *waiting*
   (``"waiting": true``): nothing was written there yet, so nothing is lost.
   A fresh, idle stack is healthy although vLLM's middleware creates
   ``middleware.jsonl`` only at the first audited request;
2. the most recent checkpoint write failed: a restart would re-read and the
   archive cannot advance its committed size;
3. a vLLM scraper is configured and its most recent scrape failed, once one
   has succeeded since the exporter started: until vLLM first answers (a
   model download or load takes minutes, and compose starts both at once)
   the exporter is not the one at fault and nothing is lost, so it stays
   healthy and ``vllm`` shows the failures (``VllmDown`` alerts on them);
4. a worker thread (``pipeline``, ``loki``) is not running normally: it failed
   with an unexpected exception and has not made progress since its restart,
   it gave up (the process is exiting non-zero), or it ended unexpectedly;
5. the archive cannot be written (disk full, read-only): the records wait in
   memory and, once its bound is reached, no input is read until a write
   succeeds again (``archive.ingestion_paused``);
6. a log's header times are off UTC by a whole number of quarter hours
   (``sources.*.time_offset_seconds``): ``--server-timezone`` is not the
   zone vLLM logs in, so requests are timed out early or held for hours.

Shown, not judged: ``capture`` (``{"mode": "log_only", "frontend": "rust",
"middleware": "off", "note": ...}`` when vLLM runs its Rust frontend, which
runs no Python middleware) and each source's ``vllm`` settings as its
start-up line said.

Not judged: lag and ``at_eof`` (an idle vLLM is normal), a vLLM scraper that
has not run yet (reported as ``"up": null``), and Loki (shown for operators;
a Loki outage is buffered by design and has its own metrics and alerts).

Because rule 3 depends on vLLM, use ``/health`` for readiness and alerting,
not as a liveness probe that restarts the exporter: a liveness probe should
hit ``/`` instead.

Example body::

    {"status": "unhealthy", "problems": ["source vllm: not up (FileNotFoundError: ...)"],
     "version": "0.1.0", "uptime_seconds": 12.5,
     "sources": {"vllm": {"path": "/var/log/vllm.log", "required": true, "up": false,
                          "at_eof": false, "lag_bytes": 0, "last_line_unix": null, ...}},
     "checkpoint": {"last_success_unix": 1790000000.0, "last_error": null,
                    "consecutive_failures": 0},
     "vllm": {"up": true, "last_success_unix": 1790000000.1, "error": null, ...},
     "loki": null,
     "threads": {"pipeline": {"state": "running", "restarts": 0, "consecutive_failures": 0,
                              "last_error": null, "last_error_unix": null}},
     "archive": {"write_error": null, "failing_since_unix": null, "pending_records": 0,
                 "ingestion_paused": false}}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from exporter import __version__


@dataclass
class SourceHealth:
    """One log source, written by its tailer."""

    name: str
    path: str | None = None  # None for stdin
    required: bool = True
    up: bool = False  # open and readable
    at_eof: bool = False  # caught up with the writer
    position: int = 0  # byte offset of the next unread byte
    size: int | None = None  # file size at the last poll
    lag_bytes: int = 0  # size - position, never negative
    last_line_unix: float | None = None  # wall time the last line was read
    error: str | None = None  # why it is not up
    waiting: bool = False  # never existed yet: not a problem (rule 1)
    # Header times minus UTC as measured (quarter hours; 0 = consistent), and
    # the operator-facing explanation when not 0 (pipeline's ClockCheck).
    time_offset_seconds: int = 0
    time_offset_note: str | None = None
    # vLLM's settings from its last start-up line in this source
    # (exporter.learned: served, max_log_len, frontend, process, pid, ...).
    vllm: dict | None = None


@dataclass
class ThreadHealth:
    """One supervised worker thread, written by its supervisor."""

    name: str
    state: str = "starting"  # running, restarting, failed (gave up), stopped (asked to)
    restarts: int = 0
    consecutive_failures: int = 0  # failures since the last progress
    last_error: str | None = None
    last_error_unix: float | None = None
    # Liveness of the OS thread itself (threading.Thread.is_alive); None: not started.
    alive: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    def problem(self) -> str | None:
        if self.state in ("starting", "stopped"):
            return None
        if self.state == "failed":
            return (f"thread {self.name}: gave up after {self.consecutive_failures} failure(s) in a "
                    f"row ({self.last_error}); the process exits non-zero")
        if self.alive is not None and not self.alive():
            return f"thread {self.name}: not running (ended unexpectedly)"
        if self.consecutive_failures:
            return (f"thread {self.name}: failed {self.consecutive_failures} time(s) in a row "
                    f"({self.last_error}); restarted, no progress yet")
        return None

    def as_dict(self) -> dict:
        return {"state": self.state, "restarts": self.restarts,
                "consecutive_failures": self.consecutive_failures,
                "last_error": self.last_error, "last_error_unix": self.last_error_unix}


@dataclass
class ArchiveHealth:
    """The archive writer as the pipeline last saw it."""

    write_error: str | None = None  # why the last write failed; None once one succeeds
    failing_since_unix: float | None = None
    pending_records: int = 0  # sealed, waiting in memory for the disk
    ingestion_paused: bool = False  # no input is read until a write succeeds

    def problem(self) -> str | None:
        if self.write_error is None:
            return None
        what = (f"{self.pending_records} records wait in memory; ingestion paused until a write "
                "succeeds (it resumes by itself; nothing is lost)") if self.ingestion_paused else \
            f"{self.pending_records} records wait in memory"
        return f"archive: cannot be written ({self.write_error}); {what}"


class Health:
    """Shared health state; see the module docstring for the rule."""

    def __init__(self, *, scraper: object | None = None,
                 clock: Callable[[], float] = time.time):
        self._clock = clock
        self.started_unix = clock()
        self.sources: dict[str, SourceHealth] = {}
        self.checkpoint_last_success_unix: float | None = None
        self.checkpoint_last_error: str | None = None
        self.checkpoint_consecutive_failures = 0
        # Anything with a ``last_scrape`` (scrape.ScrapeStatus); None = no vLLM URL.
        self.scraper = scraper
        # Placeholder for the Loki pusher: any JSON-serialisable dict, shown as is.
        self.loki: dict | None = None
        self.threads: dict[str, ThreadHealth] = {}
        self.archive = ArchiveHealth()
        # How requests are captured (the pipeline's): mode "middleware" or
        # "log_only", frontend "python"/"rust"/"unknown", middleware "on"/"off".
        self.capture: dict | None = None

    def add_source(self, name: str, path: str | None = None, *, required: bool = True) -> SourceHealth:
        source = self.sources[name] = SourceHealth(name=name, path=path, required=required)
        return source

    def add_thread(self, name: str) -> ThreadHealth:
        thread = self.threads[name] = ThreadHealth(name=name)
        return thread

    def checkpoint_ok(self, unix_time: float) -> None:
        self.checkpoint_last_success_unix = unix_time
        self.checkpoint_last_error = None
        self.checkpoint_consecutive_failures = 0

    def checkpoint_failed(self, error: str) -> None:
        self.checkpoint_last_error = error
        self.checkpoint_consecutive_failures += 1

    def problems(self) -> list[str]:
        found = []
        for src in list(self.sources.values()):
            if src.required and not src.up and not src.waiting:
                found.append(f"source {src.name}: not up" + (f" ({src.error})" if src.error else ""))
        if self.checkpoint_consecutive_failures:
            found.append(f"checkpoint: last {self.checkpoint_consecutive_failures} write(s) failed"
                         f" ({self.checkpoint_last_error})")
        status = getattr(self.scraper, "last_scrape", None)
        if status is not None and status.up is False and status.last_success_unix is not None:
            found.append(f"vllm: scrape failing ({status.error})")
        for thread in list(self.threads.values()):
            problem = thread.problem()
            if problem:
                found.append(problem)
        problem = self.archive.problem()
        if problem:
            found.append(problem)
        for src in list(self.sources.values()):
            if src.time_offset_seconds and src.time_offset_note:
                found.append(f"source {src.name}: {src.time_offset_note}")
        return found

    def report(self) -> tuple[bool, dict]:
        """(healthy, JSON body)."""
        problems = self.problems()
        status = getattr(self.scraper, "last_scrape", None)
        body = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            "version": __version__,
            "uptime_seconds": round(max(0.0, self._clock() - self.started_unix), 3),
            "sources": {name: asdict(src) for name, src in list(self.sources.items())},
            "checkpoint": {
                "last_success_unix": self.checkpoint_last_success_unix,
                "last_error": self.checkpoint_last_error,
                "consecutive_failures": self.checkpoint_consecutive_failures,
            },
            "vllm": status.as_dict() if status is not None else None,
            "loki": self.loki,
            "threads": {name: t.as_dict() for name, t in list(self.threads.items())},
            "archive": asdict(self.archive),
            "capture": self.capture,
        }
        return not problems, body
