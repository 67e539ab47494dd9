"""Sources → parser → correlator → metrics + archive, with one atomic checkpoint.

The pipeline is single-threaded: between two lines, tailer positions,
in-flight requests, the metric store and the archive contents are mutually
consistent. ``commit()`` makes that state durable in order: archive write +
fsync first, then one checkpoint (a file written temp + fsync + rename, or
once the in-flight state is large one fsynced journal record of what changed
since, :mod:`exporter.checkpoint`) holding the
positions of the last processed lines, the in-flight requests, the time
resolver, the metric snapshot and the archive's size and chain head. On start
the archive is cut back to the checkpointed size and reading resumes at the
checkpointed positions, so a crash anywhere (``kill -9`` included) neither
loses nor repeats a record: the cut records are re-derived from the same
lines. (A request is recorded differently after a crash only if its two
sources were read with different relative timing — the merge waits are
measured on a wall-clock watermark when a source is caught up.)

Watermark: the time up to which every source has been read. A source
still reading a backlog contributes the time of its last event; a caught-up
live source contributes "now"; a finished replay file contributes +inf. In
replay the source furthest behind is read next, so files are merged in time
order rather than one after another.

vLLM's start-up lines set each source's learned settings
(:mod:`exporter.learned`): the correlator stamps them on the requests that
follow, a flag that contradicts them is reported once, the served model
names bound the ``model`` label (``served``), and ``/health`` and
``vllm_audit_capture_mode_info`` say how requests are captured (the Rust
frontend runs no middleware). They are part of the checkpoint.

Beside the loop: the zone check (:mod:`exporter.zonecheck`, reports only)
and the status bridge (:mod:`exporter.status`: tailer and archive state →
self metrics and /health).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import events as ev
from . import learned as learn
from .assemble import AssembleContext, build_record
from .checkpoint import CheckpointError, write_atomic
from .correlate import Correlator
from .parse import CHECK_PROBLEMS, fast, parse_line
from .status import StatusBridge
from .zonecheck import ZoneCheck

# 2: adds "learned" (per source: [settings, pending], exporter.learned) and
# "conflicts"; a version-1 state is restored without them (the sources then
# look back for their last start-up line, see runtime).
CHECKPOINT_VERSION = 2
# Commit pacing (Pipeline._pace): at most this share of the time goes to
# commits once one costs more than PACE_FROM_CPU seconds of CPU; the gap is
# capped so records still reach Loki within MAX_COMMIT_GAP of being written.
COMMIT_CPU_SHARE = 0.05
PACE_FROM_CPU = 0.02
MAX_COMMIT_GAP = 10.0


@dataclass
class Source:
    name: str
    tailer: object
    last_t: float | None = None
    health: object | None = None
    metrics: object | None = None
    finished: bool = False  # replay: read to EOF
    # Continuation state (see _lines): \r count before the last line's \n,
    # the fewest seen in this source (its usual line end: 0, or 1 for a log
    # that went through a terminal), and the header of the last
    # "Request X failed" line, whose continuation lines repeat it.
    cr: int = 0
    base_cr: int | None = None
    failed_head: str | None = None
    seen: dict = field(default_factory=dict)  # tailer counter values already exported
    last_line_unix: float | None = None  # clock time the last line was read (for /health)
    when_cache: tuple = (None, None)  # (LogTime, epoch seconds) last resolved
    zoneless_t: float | None = None  # last resolved time of a zone-less line in the batch
    # Zone check of this source (logtime.ClockCheck): against the middleware's
    # times for the same requests (authoritative once decided), against the clock.
    pair_check: object | None = None
    clock_check: object | None = None
    time_offset: int = 0  # the verdict reported
    # vLLM's settings from its last start-up line (exporter.learned), what a
    # version line said before it, and the compact form the correlator stamps.
    learned: dict | None = None
    pending: dict | None = None
    cfg: dict | None = None


@dataclass
class Sinks:
    """Where a record goes, in order; each is a plain callable or object."""

    metrics: object  # RequestMetrics: observe(rec), snapshot()
    archive: object  # ArchiveWriter: append(rec), flush(), state()
    detect: Callable[[dict], list[str]] = lambda rec: []
    archive_policy: Callable[[dict], dict] = lambda rec: rec
    on_record: list[Callable[[dict], None]] = field(default_factory=list)


class Pipeline:
    def __init__(self, *, sources: list[Source], correlator: Correlator, resolver,
                 sinks: Sinks, selfm, ctx: AssembleContext, checkpoint_path: Path,
                 users=None, live: bool = True, clock: Callable[[], float] = time.time,
                 checkpoint_interval: float = 1.0, batch_lines: int = 4096, health=None,
                 logging_prefix: str = "", served=None):
        self.sources = sources
        self.logging_prefix = logging_prefix  # vLLM's VLLM_LOGGING_PREFIX, exactly
        self.correlator = correlator
        self.resolver = resolver
        self.sinks = sinks
        self.selfm = selfm
        self.ctx = ctx
        self.checkpoint_path = Path(checkpoint_path)
        self.users = users
        self.live = live
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        # The gap between commits actually used: checkpoint_interval, widened
        # when a commit's CPU cost is large (a pile-up of in-flight requests
        # makes the checkpoint big) so commits never take more than
        # COMMIT_CPU_SHARE of the time; see _pace().
        self.commit_gap = checkpoint_interval
        self.batch_lines = batch_lines
        self.health = health
        self._last_commit = clock()
        # The archive as of the last checkpoint: what crash recovery keeps,
        # so the only part the Loki pusher may read and acknowledge.
        self.committed_archive: dict | None = None
        self._dirty = False  # something read or recorded since the last commit
        # (request_id, ts) already archived: set only when starting without a
        # usable checkpoint over a non-empty archive (exporter/archive/recovery.py).
        self.skip_keys: set | None = None
        self.records_emitted = 0
        self.commits = 0  # successful commits by this pipeline
        self.commit_error: str | None = None  # why the last commit failed; None after a success
        # Called with the checkpoint state after each successful commit, i.e.
        # once what it covers is durable (--prune-rotated deletes read logs).
        self.after_commit: list[Callable[[dict], None]] = []
        # The transparency log (--signing-key-file): signs the committed tree.
        self.tlog = None
        for src in sources:
            src.metrics = selfm.source(src.name)
        self.zone = ZoneCheck(sources, tz=resolver.tz, clock=clock)  # reports, never changes a record
        self.status = StatusBridge(selfm, health, live=live)
        self.served = served  # labels.ServedModels: the model label's bound, or None
        self.correlator.eager = live  # run: a request with both sides in is recorded at once
        self._conflicts: list = []  # (setting, flag, log) already reported
        self._capture()  # log_only/unknown until a start-up line or a middleware line says more

    # ------------------------------------------------------------- restore
    def restore(self, state: dict | None) -> None:
        if not state:
            return
        self.correlator.restore(state.get("correlator"))
        self.committed_archive = state.get("archive")
        continued = state.get("continued") or {}
        ends = state.get("line_ends") or {}
        for src in self.sources:
            src.cr = int(continued.get(src.name) or 0)
            src.base_cr, src.failed_head = ends.get(src.name) or (None, None)
            src.when_cache = (None, None)
        if state.get("time") is not None:
            self.resolver.restore(state["time"])
        saved = state.get("learned") or {}
        self._conflicts = [tuple(c) for c in state.get("conflicts") or []]
        for src in self.sources:
            if src.name in saved:
                src.learned, src.pending = saved[src.name]
                self.learned_changed(src, report=False)

    def learned_changed(self, src: Source, *, report: bool = True) -> None:
        """``src.learned`` is new: the correlator's stamp, conflicts with the
        flags (once each, kept in the checkpoint), the model label's bound,
        and what /health and the self metrics say (StatusBridge)."""
        src.cfg = learn.entry_cfg(src.learned)
        self.correlator.cfg = src.cfg
        for found in learn.conflicts(src.learned, model=self.ctx.model, max_log_len=self.ctx.max_log_len):
            if found in self._conflicts and report:
                continue
            if found not in self._conflicts:
                self._conflicts.append(found)
            self.status.conflict(src.name, found, warn=report)
        if self.served is not None:
            self.served.learn(src.name, (src.learned or {}).get("served"))
        self.status.learned(src)
        self._capture()

    def _learn(self, src: Source, data: dict, t: float | None) -> None:
        before = src.learned
        src.learned, src.pending = learn.apply(src.learned, src.pending, data, t)
        if src.learned is not before:
            self.learned_changed(src)

    def _capture(self) -> None:
        self.status.capture(self.sources, self.correlator.middleware_seen)

    # ---------------------------------------------------------------- loop
    def step(self) -> int:
        """Read one batch, record what is ready, commit when due. Returns lines read.

        While the archive refuses writes with its buffer at its bound
        (``ArchiveWriter.full``: disk full, read-only), nothing is read or
        recorded: the step only retries the commit at the checkpoint cadence.
        The input stays where it is (the log file, the stdin pipe), so
        ingestion resumes where it stopped as soon as a write succeeds. (A
        replay raises the archive's ``OSError`` instead.)
        """
        if getattr(self.sinks.archive, "full", False):
            if not self.live:
                # A replay is a batch job: fail with the disk's error (its
                # checkpoint lets the next replay resume) rather than wait.
                self.sinks.archive.flush()
            elif self.clock() - self._last_commit >= self.commit_gap:
                self.commit()
            if getattr(self.sinks.archive, "full", False):
                self.status.archive(self.sinks.archive)
                return 0
        if self.live:
            todo = self.sources
        else:
            pending = [s for s in self.sources if not s.finished]
            todo = [min(pending, key=lambda s: s.last_t if s.last_t is not None else -math.inf)] \
                if pending else []
        n = 0
        for src in todo:
            fresh = self.live and src.tailer.at_eof  # caught up: what comes now was just written
            lines = src.tailer.poll(self.batch_lines)
            if lines:
                src.last_line_unix = self.clock()
                self._lines(src, lines)
                if fresh:
                    self.zone.clock_sample(src)
            n += len(lines)
            if not self.live and not lines and src.tailer.at_eof:
                src.finished = True
            self.status.source(src)
        emitted = self.records_emitted
        if self.correlator.middleware_seen and not self.status.capture_is_middleware:
            self._capture()
        self._emit(self.correlator.ready(self.watermark()))
        self.selfm.inflight.set(len(self.correlator.inflight))
        # Only a change needs a commit: an idle exporter does not fsync.
        self._dirty = self._dirty or n > 0 or self.records_emitted != emitted
        if self._dirty and self.clock() - self._last_commit >= self.commit_gap:
            self.commit()
        else:
            self.status.archive(self.sinks.archive)
        if self.tlog is not None:
            self.tlog.tick(self.signable())  # a heartbeat too when nothing arrived
        return n

    def signable(self) -> dict:
        """The archive state a checkpoint may sign: the last committed one
        (never records a crash could still cut), or before the first commit
        the state the archive was recovered to (all on disk)."""
        return self.committed_archive if self.committed_archive is not None else self.sinks.archive.state()

    def sign_now(self) -> None:
        if self.tlog is not None:
            self.tlog.sign(self.signable())

    def done(self) -> bool:
        return all(s.finished for s in self.sources)

    @property
    def dirty(self) -> bool:
        """Something was read or recorded since the last successful commit."""
        return self._dirty

    def watermark(self) -> float:
        marks = []
        for s in self.sources:
            if s.finished:
                marks.append(math.inf)
            elif self.live and s.tailer.at_eof:
                marks.append(self.clock())
            else:
                marks.append(s.last_t if s.last_t is not None else -math.inf)
        return min(marks) if marks else math.inf

    def _lines(self, src: Source, lines) -> None:
        """Parse and file one batch. Hot loop: per-line work is one parse, one
        dict probe for the time and one feed; self metrics are added once per
        batch (same totals as per line, far fewer lock round trips)."""
        m = src.metrics
        m.lines.inc(len(lines))
        m.bytes.inc(sum([line.nbytes for line in lines]))
        ignored: dict[str, int] = {}
        parse = parse_line
        # parse_line's first step, the C scanner (None: not built, or off),
        # called here without parse_line's frame; a line it is not certain
        # of (None) or fails on goes to parse_line, which scans it once more
        # (declining is cheap) and then decides.
        scan = fast.scan
        feed = self.correlator.feed
        event_cls, ignored_cls = ev.Event, ev.Ignored  # an Event needs no isinstance() call
        access, dropped_kind = ev.ACCESS, ev.MIDDLEWARE_DROPPED
        engine_kind, engine_status = ev.ENGINE, ev.ENGINE_STATUS
        body_kind, failed_kind = ev.BODY, ev.FAILED
        # Lines of one second share one header time: resolve it once. The
        # resolver's answer and its state depend only on ``when`` and this
        # source's previous resolved line, which the same ``when`` leaves as is.
        last_when, last_t = src.when_cache
        src_t = src.last_t
        # Continuation lines of a multi-line vLLM record (an exception text
        # can carry client input, so they must never count as records):
        # 1. NewLineFormatter ends every line but a record's last with one
        #    \r more than the log's usual line end: the line after one with
        #    more \r than the fewest this source has shown continues it
        #    (plain logs: "\r\n" inside, "\n" after; through a terminal:
        #    "\r\r\n" inside, "\r\n" after);
        # 2. where the \r were lost (LF-only copies), the one multi-line
        #    message from a file allowed to alter a record, "Request X
        #    failed due to <exception>", is followed by lines repeating its
        #    exact header: those are continuations too.
        name, resolve = src.name, self.resolver.resolve
        self.correlator.cfg = src.cfg
        startup_kind, summary_kind = ev.STARTUP, ev.SUMMARY
        timed = False
        received, mw_kind = ev.RECEIVED, ev.MIDDLEWARE
        special = frozenset((access, dropped_kind, engine_status, startup_kind, summary_kind, failed_kind))
        checked = frozenset((mw_kind, body_kind, engine_kind))  # kinds whose data may name problems
        prefix, prev_cr, base_cr, head = self.logging_prefix, src.cr, src.base_cr, src.failed_head
        for line in lines:
            cr = line.cr
            if base_cr is None or cr < base_cr:
                base_cr = cr
            continued = prev_cr > base_cr
            prev_cr = cr
            if line.truncated:  # over --max-line-bytes: cannot be parsed whole
                ignored["line_too_long"] = ignored.get("line_too_long", 0) + 1
                continue
            text = line.text
            if head is not None:
                if text.startswith(head):
                    continued = True
                else:
                    head = None
            if continued or prefix or scan is None:
                result = parse(text, logging_prefix=prefix, continued=continued)
            else:
                try:
                    result = scan(text)
                except Exception:  # noqa: BLE001 - parse_line decides
                    result = None
                if result is None:
                    result = parse(text)
            cls = result.__class__
            if cls is not event_cls and (cls is ignored_cls or isinstance(result, ignored_cls)):
                reason = result.reason
                ignored[reason] = ignored.get(reason, 0) + 1
                continue
            kind = result.kind
            if kind in special:  # one set probe keeps the bulk (outputs) off this chain
                if kind == access:
                    ignored["access"] = ignored.get("access", 0) + 1
                    continue
                if kind == dropped_kind:
                    self.selfm.middleware_dropped.inc(result.data.get("dropped") or 0)
                    continue
                if kind == engine_status:
                    self.selfm.engine_status(result.data)
                    continue
                if kind == startup_kind:
                    self._learn(src, result.data, None if result.when is None else resolve(result.when, name))
                    ignored["startup"] = ignored.get("startup", 0) + 1
                    continue
                if kind == summary_kind and (src.learned or {}).get("frontend") != "rust":
                    self._learn(src, {"what": "rust_frontend"}, None)  # only the Rust frontend writes it
                if kind == failed_kind:
                    k = text.find("] Request ")
                    head = text[:k + 2] if k >= 0 else None
            elif kind in checked and "problems" in result.data:
                for reason in result.data["problems"]:
                    ignored[reason] = ignored.get(reason, 0) + 1
            when = result.when
            if when is None:
                # A middleware line without a usable time: the time this
                # source had reached stands in, so it is recorded, not stuck.
                t = src_t if kind == mw_kind or kind == engine_kind else None
            elif when is last_when or when == last_when:  # the header parser shares one LogTime per second
                t = last_t
            else:
                t = last_t = resolve(when, name)
                last_when = when
            timed = timed or t is not None
            if t is not None and (src_t is None or t > src_t):
                src_t = src.last_t = t
            if kind == received or kind == mw_kind:
                self.zone.pair(src, result, t)
            feed(result, t)
        src.cr, src.base_cr, src.failed_head = prev_cr, base_cr, head
        src.when_cache = (last_when, last_t)
        # The newest header time of this batch, if the line had no zone of its own.
        src.zoneless_t = last_t if timed and last_when.utc_offset is None else None
        selfm = self.selfm
        for reason, count in ignored.items():
            if reason.startswith("malformed") or reason in CHECK_PROBLEMS:
                selfm.parse_errors.labels(reason).inc(count)
            else:
                selfm.lines_ignored.labels(reason).inc(count)

    def _emit(self, entries: list[dict]) -> None:
        if not entries:
            return
        ctx, seen = self.ctx, self.correlator.middleware_seen
        sinks = self.sinks
        detect, observe = sinks.detect, sinks.metrics.observe
        append, policy, hooks = sinks.archive.append, sinks.archive_policy, sinks.on_record
        done = unmatched = skipped = 0
        skip = self.skip_keys
        try:
            for entry in entries:
                rec = build_record(entry, ctx, middleware_seen=seen)
                if rec is None:
                    unmatched += 1
                    continue
                if skip is not None and (rec["request_id"], rec["ts"]) in skip:
                    skipped += 1
                    continue
                found = detect(rec)
                if found:
                    rec["flags"] = sorted(set(rec["flags"]) | set(found))
                observe(rec)
                append(policy(rec))
                done += 1
                for hook in hooks:
                    hook(rec)
        finally:
            if unmatched:
                self.selfm.evictions.labels("unmatched").inc(unmatched)
            if skipped:
                self.selfm.evictions.labels("already_archived").inc(skipped)
            if done:
                self.selfm.records.inc(done)
                self.records_emitted += done

    # -------------------------------------------------------------- commit
    def state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "sources": {s.name: s.tailer.position() for s in self.sources},
            # --prune-rotated: rotated files drained to their end (exporter.tail.prune),
            # so a crash between this commit and their deletion does not forget them.
            "rotated_read": {s.name: list(s.tailer.finished) for s in self.sources
                             if getattr(s.tailer, "keep_finished", False)},
            "continued": {s.name: s.cr for s in self.sources},
            "line_ends": {s.name: [s.base_cr, s.failed_head] for s in self.sources},
            "correlator": self.correlator.state(),
            "time": self.resolver.state(),
            "metrics": self.sinks.metrics.snapshot(),
            "users": self.users.state() if self.users is not None else None,
            "archive": self.sinks.archive.state(),
            "learned": {s.name: [s.learned, s.pending] for s in self.sources
                        if s.learned is not None or s.pending is not None},
            "conflicts": [list(c) for c in self._conflicts],
            "written_at": self.clock(),
        }

    def commit(self) -> bool:
        """Archive fsync, then the checkpoint. False (and counted) on failure:
        the next commit retries; nothing is acknowledged in between."""
        self._last_commit = self.clock()
        cpu0 = time.thread_time()
        # The snapshot is tens of thousands of small objects (the recent ids'
        # pairs above all) that live exactly as long as the commit and hold
        # no cycles: the cyclic GC would only walk them again and again as
        # they are made (a third of a commit's CPU). Paused for the commit,
        # it never sees them: refcounting frees them all at the end.
        was_enabled = gc.isenabled()  # a caller (replay) may have it off already
        try:
            gc.disable()
            try:
                self.sinks.archive.flush()
                state = self.state()
                write_atomic(str(self.checkpoint_path), state)
            finally:
                if was_enabled:
                    gc.enable()
            self.committed_archive = state["archive"]
            self._dirty = False
        except (OSError, CheckpointError) as exc:
            self.commit_error = str(exc)
            self.selfm.checkpoint_failed()
            if self.health is not None:
                self.health.checkpoint_failed(str(exc))
            self.status.archive(self.sinks.archive)
            return False
        for hook in self.after_commit:
            hook(state)
        self._pace(time.thread_time() - cpu0)
        now = self.clock()
        self.commits += 1
        self.commit_error = None
        self.selfm.checkpoint_written(now)
        if self.health is not None:
            self.health.checkpoint_ok(now)
        self.status.archive(self.sinks.archive)
        return True

    def _pace(self, cpu: float) -> None:
        """Widen the commit gap so a commit costing ``cpu`` seconds takes at
        most COMMIT_CPU_SHARE of the time (never beyond MAX_COMMIT_GAP).

        A full snapshot holds every in-flight request, so its cost grew with
        a pile-up (stock vLLM never logs some requests as finished; they wait
        for --request-timeout) and a fixed interval made that quadratic in
        the pile-up's size. The journal (exporter.journal) makes a commit cost
        what changed; pacing still bounds the compactions and any commit
        that turns out expensive. Commit frequency only
        decides how much is re-read after a crash, never what is recorded, so
        exactly-once holds at any gap. Small commits (< PACE_FROM_CPU) keep
        the configured interval exactly.
        """
        gap = self.checkpoint_interval
        if cpu > PACE_FROM_CPU:
            gap = max(gap, min(MAX_COMMIT_GAP, cpu * (1 - COMMIT_CPU_SHARE) / COMMIT_CPU_SHARE))
        self.commit_gap = gap

    def finish(self) -> None:
        """End of a replay: record everything still held, then commit."""
        self._emit(self.correlator.drain())
        self.selfm.inflight.set(0)
        self.commit()
        self.sign_now()
