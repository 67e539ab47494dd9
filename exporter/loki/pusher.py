"""Ship every archive record to Loki: at-least-once, in order, bounded memory.

The archive is the write-ahead log. One batch is in flight at a time and the
saved position (``.state/loki.json``) moves only past records Loki
acknowledged with 204 or that were durably dead-lettered, so a crash or
SIGKILL resends at most the unacknowledged tail; resends are byte-identical
(``entries.py``) and Loki's dedup absorbs them. Retryable failures (network,
timeouts, 429, 5xx, 401/403, odd statuses such as 260) are retried forever
with capped exponential backoff and full jitter: the archive keeps growing on
disk meanwhile and the backlog is pushed in order afterwards. A 400/413 is
bisected so the valid entries are delivered and only the ones Loki refuses
are dead-lettered. Head-of-line blocking is deliberate: a newer entry of a
stream never goes out before an older unacknowledged one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
from prometheus_client import CollectorRegistry

from .archive_reader import ArchiveReader, Position, RawLine
from .client import SPLIT_REASONS, LokiClient, PushResult
from .config import LokiSettings
from .entries import Entry, EntryError, build_entry, encode_push
from .metrics import LokiMetrics
from .status import LokiStatus
from .state import DeadLetters, load_position, save_position

log = logging.getLogger("exporter.loki")

_LOG_EVERY = 60.0  # seconds between repeated warnings for one failure reason

# Loki's 400 texts (pkg/validation) -> dead-letter reason for a single entry.
_REJECT_REASONS = (
    ("max entry size", "line_too_long"), ("line too long", "line_too_long"),
    ("too old", "too_old"), ("greater_than_max_sample_age", "too_old"),
    ("too new", "too_far_in_future"), ("too far in the future", "too_far_in_future"),
    ("too far behind", "too_far_behind"), ("out of order", "too_far_behind"),
    ("label", "invalid_labels"),
)


class _Stopped(Exception):
    pass


@dataclass(slots=True)
class _Item:
    raw: RawLine
    entry: Entry | None
    error: EntryError | None


def _reject_reason(message: str) -> str:
    low = message.lower()
    for needle, reason in _REJECT_REASONS:
        if needle in low:
            return reason
    return "rejected"


STOP_CHECK = 0.05  # seconds: how late an idle pusher may notice its stop event


class LokiPusher:
    def __init__(self, settings: LokiSettings, archive_dir: Path, registry: CollectorRegistry, *,
                 label_user: Callable[[str | None], str | None],
                 policy: Callable[[dict], dict] = lambda r: r,
                 client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random,
                 state_dir: Path | None = None,
                 committed: Callable[[], dict | None] | None = None,
                 fold_model: Callable | None = None):
        self.settings = settings
        self.fold_model = fold_model  # labels.ServedModels.fold: the model label's bound
        archive_dir = Path(archive_dir)
        self._reader = ArchiveReader(archive_dir, committed)
        self._state_path = Path(state_dir or archive_dir / ".state") / "loki.json"
        self._dead = DeadLetters(archive_dir / "dead-letter", clock)
        self._client = LokiClient(settings, client)
        self._label_user, self._policy = label_user, policy
        self._clock, self._sleep, self._rng = clock, sleep, rng
        self.metrics = LokiMetrics(registry)
        # Computed at scrape time: while a push is stuck retrying, the archive
        # keeps growing and /metrics must show it (not the value before the stall).
        self.metrics.backlog.set_function(self.backlog)
        self.status = LokiStatus(url=settings.push_url)
        self._stop: threading.Event | None = None
        # Set by wake() after each commit (the pipeline's after_commit hook):
        # what the commit made readable is pushed at once, see run().
        self._wake = threading.Event()
        self._attempt = 0  # consecutive failures, drives the backoff
        self._last_log: tuple[str, float] | None = None
        self._too_old_ns: int | None = None  # a rejected "too old" ts: older ones are too

        pos, note1 = load_position(self._state_path)
        pos, note2 = self._reader.normalize(pos)
        self.status.note = "; ".join(n for n in (note1, note2) if n) or None
        if self.status.note:
            log.warning("loki: %s", self.status.note)
        self._acked = pos
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._pending_since: float | None = None
        self._read_pos = pos
        self._publish_backlog()

    # -- public API ---------------------------------------------------------

    @property
    def position(self) -> Position:
        return self._acked

    def backlog(self) -> int:
        return self._reader.backlog(self._acked)

    def run_once(self) -> int:
        """Read and push at most one batch now (no batch-age wait); returns
        the number of entries Loki acknowledged. Retries until delivered."""
        return self._step(flush=True)

    def run(self, stop_event: threading.Event,
            on_progress: Callable[[], None] | None = None) -> None:
        """Loop for a thread until ``stop_event`` is set. Nothing is lost on
        stop: only acknowledged records are behind the saved position.

        An unexpected exception (a local disk error, a bug) is noted in the
        status and raised: the thread's supervisor (exporter/supervise.py)
        counts it, calls :meth:`reset` and enters ``run`` again after a
        backoff. ``on_progress`` is called after every step that had a batch
        acknowledged or left nothing to send."""
        self._stop = stop_event
        try:
            while not stop_event.is_set():
                woken = self._wake.is_set()
                if woken:
                    self._wake.clear()  # a commit during the step sets it again
                try:
                    acked = self._step(flush=woken)
                except _Stopped:
                    break
                except Exception as exc:
                    self._note_error("internal", None, f"{type(exc).__name__}: {exc}")
                    raise
                if on_progress is not None and (acked or self.status.backlog_records == 0):
                    on_progress()
                if not acked and not self._pending_ready():
                    self._idle(self.settings.poll_interval_seconds)
        except _Stopped:
            pass
        finally:
            self._stop = None

    def wake(self) -> None:
        """Records were just committed: read and push them now, not at the
        next poll. They are all there is to read until the next commit, so
        waiting ``--loki-batch-wait`` for more would only add lag (at 2 000
        streamed tokens/s the poll and the batch wait were 0.2 s of a Loki
        lag p99 of about 1 s). Safe from any thread."""
        self._wake.set()

    def reset(self) -> None:
        """Forget the read-ahead: the next step re-reads from the acknowledged
        position (after an unexpected exception, before ``run`` again)."""
        self._pending, self._pending_bytes, self._pending_since = [], 0, None
        self._read_pos = self._acked

    def close(self) -> None:
        self._client.close()

    # -- batching -----------------------------------------------------------

    def _pending_ready(self) -> bool:
        if not self._pending:
            return False
        if self._pending_bytes >= self.settings.batch_bytes:
            return True
        return self._clock() - (self._pending_since or 0.0) >= self.settings.batch_wait

    def _fill(self) -> None:
        # The pipeline may have cut back the archive (its crash recovery) under
        # our read-ahead: drop the read-ahead and re-read from the acked point.
        if self._read_pos.file is not None:
            size = self._reader.size(self._read_pos.file)
            if size is not None and size < self._read_pos.offset:
                self._acked, _ = self._reader.normalize(self._acked)
                self._pending, self._pending_bytes, self._pending_since = [], 0, None
                self._read_pos = self._acked
        room = self.settings.batch_bytes - self._pending_bytes
        if room <= 0:
            return
        for raw in self._reader.read(self._read_pos, room):
            self._pending.append(self._prepare(raw))
            self._pending_bytes += raw.end - raw.start
            self._read_pos = Position(raw.file, raw.end)
            if self._pending_since is None:
                self._pending_since = self._clock()

    def _prepare(self, raw: RawLine) -> _Item:
        try:
            entry = build_entry(raw.text, self.settings, self._label_user, self._policy,
                                    self.fold_model)
        except EntryError as exc:
            return _Item(raw, None, exc)
        if self._too_old_ns is not None and entry.ts_ns <= self._too_old_ns:
            return _Item(raw, entry, EntryError("too_old", "older than an entry Loki refused as too old"))
        return _Item(raw, entry, None)

    def _step(self, flush: bool) -> int:
        self._fill()
        if not self._pending or not (flush or self._pending_ready()):
            self._publish_backlog()
            return 0
        items = self._pending
        self._pending, self._pending_bytes, self._pending_since = [], 0, None
        try:
            # Local rejects first, durably; then the good entries in archive order.
            self._dead_letter([i for i in items if i.error is not None])
            good = [i for i in items if i.error is None]
            acked = self._deliver(good) if good else 0
            self._advance(items[-1].raw)
        except BaseException:
            # Interrupted (stop, disk error): forget the read-ahead so the next
            # step re-reads from the acknowledged position; nothing is skipped.
            self._read_pos = self._acked
            raise
        return acked

    # -- delivery -----------------------------------------------------------

    def _deliver(self, items: list[_Item]) -> int:
        """Deliver ``items`` (all or dead-lettered); returns entries acked."""
        body = encode_push([i.entry for i in items])
        while True:
            if self._attempt:
                self.metrics.retries.inc()
            result = self._client.push(body)
            if result.ok:
                self._on_success(items)
                return len(items)
            self.metrics.failures.labels(reason=result.reason).inc()
            if result.reason in SPLIT_REASONS:
                # Not retryable as is; Loki may have stored the valid streams
                # already (partial 400), which dedup makes harmless to resend.
                self._note_error(result.reason, result.status, result.message, quiet=True)
                if len(items) == 1:
                    self._reject(items[0], result)
                    return 0
                mid = len(items) // 2
                acked = self._deliver(items[:mid])
                return acked + self._deliver(items[mid:])
            self._note_error(result.reason, result.status, result.message)
            self._pause(self._backoff())

    def _on_success(self, items: list[_Item]) -> None:
        now = self._clock()
        self._attempt = 0
        self.metrics.entries.inc(len(items))
        self.metrics.bytes.inc(sum(i.entry.size for i in items))
        self.metrics.last_success.set(now)
        self.status.record_success(now)
        if self._last_log is not None:
            log.info("loki: pushing again after %s", self._last_log[0])
            self._last_log = None
        self._advance(items[-1].raw)

    def _reject(self, item: _Item, result: PushResult) -> None:
        reason = _reject_reason(result.message) if result.reason == "bad_request" else "rejected"
        if reason == "too_old":
            self._too_old_ns = max(self._too_old_ns or 0, item.entry.ts_ns)
        item.error = EntryError(reason, f"HTTP {result.status}: {result.message}")
        self._dead_letter([item])
        self._advance(item.raw)

    def _dead_letter(self, items: list[_Item]) -> None:
        if not items:
            return
        rows = []
        for i in items:
            row = {"reason": i.error.reason, "detail": str(i.error)[:1000],
                   "archive_file": i.raw.file, "offset": i.raw.start}
            if i.entry is not None:
                row.update(labels=dict(i.entry.labels), timestamp_ns=str(i.entry.ts_ns),
                           request_id=i.entry.request_id, line=i.entry.line)
            else:
                row["archive_line"] = i.raw.text
            rows.append(row)
        self._dead.write(rows)
        for i in items:
            self.metrics.dead_letters.labels(reason=i.error.reason).inc()
        self.status.record_dead_letters(len(items))
        log.warning("loki: dead-lettered %d record(s): %s", len(items),
                    ", ".join(sorted({i.error.reason for i in items})))

    def _advance(self, raw: RawLine) -> None:
        pos = Position(raw.file, raw.end)
        if (pos.file, pos.offset) <= (self._acked.file or "", self._acked.offset):
            return
        save_position(self._state_path, pos)
        self._acked = pos
        self._publish_backlog()

    # -- errors, backoff, status ---------------------------------------------

    def _backoff(self) -> float:
        # Full jitter (AWS architecture blog): spreads sidecars restarted together.
        cap = min(self.settings.backoff_max_seconds,
                  self.settings.backoff_initial_seconds * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return self._rng() * cap

    def _idle(self, seconds: float) -> None:
        """Nothing to send: wait for the next poll, or less if wake() is
        called. The wait is cut in slices of at most STOP_CHECK seconds so a
        stop still takes effect at once. (Injected sleeps, in tests, keep
        the plain pause.)"""
        stop = self._stop
        if stop is None or self._sleep is not time.sleep:
            self._pause(seconds)
            return
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, STOP_CHECK)):
                break
        if stop.is_set():
            raise _Stopped()

    def _pause(self, seconds: float) -> None:
        stop = self._stop
        if stop is not None and self._sleep is time.sleep:
            stop.wait(seconds)  # a real wait that SIGTERM handling can cut short
        else:
            self._sleep(seconds)
        if stop is not None and stop.is_set():
            raise _Stopped()

    def _note_error(self, reason: str, status: int | None, message: str, quiet: bool = False) -> None:
        now = self._clock()
        text = f"{reason}: {'HTTP %d ' % status if status else ''}{message}".strip()
        self.status.record_error(text, now, counted=not quiet, auth=reason == "auth")
        if quiet:
            return
        last = self._last_log
        if last is None or last[0] != reason or now - last[1] >= _LOG_EVERY:
            level = logging.ERROR if reason in ("auth", "client_error", "tls") else logging.WARNING
            log.log(level, "loki: push failed (%s); retrying, records stay in the archive", text[:600])
            self._last_log = (reason, now)

    def _publish_backlog(self) -> None:
        n = self.backlog()
        self.status.record_backlog(n, self._acked.to_json())
