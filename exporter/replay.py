"""``replay``: read whole log files once, write their records, summarise.

Also what the demo, the benchmarks and the tests run to the end of a
capture (:func:`replay_into`).
"""

from __future__ import annotations

import gc
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# Cyclic GC during a replay (see replay_gc): the generation-0 and -1 thresholds.
REPLAY_GC_GEN0 = 10_000
REPLAY_GC_GEN1 = 100


class Progress:
    """A one-line progress bar on stderr for large replays (bytes read)."""

    def __init__(self, total: int, enabled: bool, stream=sys.stderr):
        self.total = max(total, 1)
        self.enabled = enabled and total > 8 * 1024 * 1024
        self.stream = stream
        self._last = 0.0

    def update(self, done: int, records: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.5):
            return
        self._last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {frac:6.1%} {done / 2**20:9.1f} MiB {records:>10,} records")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


@contextmanager
def replay_gc():
    """The cyclic GC tuned for a replay, restored afterwards.

    A replay makes and frees millions of small objects a second (lines,
    events, records); refcounting frees nearly all of them, and what
    survives a young collection (in-flight requests) lives for seconds.
    With the default generation-1 threshold (10) those survivors were
    walked every ~7 000 allocations: 7 % of a 32 MiB replay's CPU went to
    collections that freed next to nothing. At 100 that is 3 % (big32:
    0.24 -> 0.12 CPU-s). A young collection every 10 000 allocations
    instead of 700 walks fewer objects that happen to be alive at that
    instant (a batch's lines and events): 1.1 % fewer instructions on big32
    (callgrind). Start-up objects (modules, settings, compiled patterns) are
    frozen so the rare full collection skips them. Cycles are still
    collected, only less often: memory stays bounded."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(before[0], REPLAY_GC_GEN0), max(before[1], REPLAY_GC_GEN1), before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def replay_into(settings, *, quiet: bool = False):
    """Run a replay to the end; returns (runtime, summary)."""
    with replay_gc():
        return _replay_into(settings, quiet)


def _replay_into(settings, quiet: bool):
    from .runtime import build
    from .summary import Summary
    rt = build(settings, live=False)
    summary = Summary()
    rt.pipeline.sinks.on_record.append(summary.add)
    total = sum(Path(f).stat().st_size for f in settings.replay_files if f != "-")
    progress = Progress(total, settings.progress and not quiet)
    while not rt.pipeline.done():
        rt.pipeline.step()
        done = sum(int((s.tailer.position() or {}).get("offset", 0) or 0) for s in rt.pipeline.sources)
        progress.update(done, rt.pipeline.records_emitted)
    rt.pipeline.finish()
    if rt.publishers is not None:
        rt.publishers.close()  # witnesses and the TSA get the final checkpoint, bounded
    progress.update(total, rt.pipeline.records_emitted, force=True)
    progress.close()
    return rt, summary


def cmd_replay(settings) -> int:
    rt, summary = replay_into(settings)
    if rt.loki is not None:
        print("pushing to Loki ...", file=sys.stderr)
        # Backfill: push until Loki has acknowledged everything (retries back
        # off inside run_once); Ctrl-C leaves the acknowledged position saved.
        while rt.loki.backlog() > 0:
            rt.loki.run_once()
        rt.loki.close()
    print(summary.render())
    print(f"archive: {settings.archive_dir}")
    if rt.pipeline.commit_error is not None:
        # The records are archived (flushed before the checkpoint); only the
        # position is not saved, which /health would say in a long run.
        print(f"vllm-audit-exporter: warning: the final checkpoint was not written "
              f"({rt.pipeline.commit_error}): every record is in the archive; a later run resumes "
              "from the last checkpoint written (with none, from the inputs' start) and skips "
              "what is archived", file=sys.stderr)
    return 0
