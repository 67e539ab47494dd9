"""A commit wakes the Loki pusher (LokiPusher.wake, runtime.wake_loki_on_commit).

Records become readable to the pusher only at a commit; it used to find
them at its next poll and then wait --loki-batch-wait for more, which were
0.2 s of a Loki lag p99 near 1 s at 2 000 streamed tokens/s (README,
Benchmarks). Here the poll and the batch wait are a minute long, so only the
wake can deliver within the test's deadline.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from exporter.loki import LokiPusher, LokiSettings

try:
    from tests.loki_server import FakeClock, LokiServer, archive_line, write_archive
except ImportError:
    from loki_server import FakeClock, LokiServer, archive_line, write_archive

from exporter.record import format_ts

START = 1_795_000_000.0
DAY = "2026-11-18"


def _records(n, start=0):
    return [archive_line(i, format_ts(START - 60 + i * 0.001), user="alice") for i in range(start, start + n)]


def _until(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # another thread's progress: polled


@contextmanager
def _running(tmp_path):
    """A pusher thread whose poll and batch wait are a minute long, on a
    clock that never advances (batch ages never count): only a flush pushes."""
    clock = FakeClock(START)
    with LokiServer(clock=clock) as loki:
        settings = LokiSettings(url=loki.url, batch_wait=60.0, poll_interval_seconds=60.0)
        p = LokiPusher(settings, tmp_path, CollectorRegistry(), label_user=lambda u: u, clock=clock)
        stop = threading.Event()
        t = threading.Thread(target=p.run, args=(stop,))
        t.start()
        try:
            yield p, loki, stop, t
        finally:
            stop.set()
            t.join(5)
            p.close()
        assert not t.is_alive()


def test_wake_pushes_committed_records_at_once_and_stop_stays_prompt(tmp_path):
    with _running(tmp_path) as (p, loki, stop, t):
        write_archive(tmp_path, DAY, _records(3))
        p.wake()
        _until(lambda: len(loki.lines()) == 3, 10, "a woken pusher did not push the new records")
        write_archive(tmp_path, DAY, _records(2, start=3))
        p.wake()
        _until(lambda: len(loki.lines()) == 5, 10, "the second wake did not push")
        # Loki stores a push before it answers; the position moves once the answer is in
        _until(lambda: p.backlog() == 0, 10, "the pushed records were never acknowledged")
        begun = time.monotonic()
        stop.set()  # idle in a minute-long poll: must still stop at once
        t.join(5)
        assert not t.is_alive() and time.monotonic() - begun < 2


def test_without_a_wake_the_poll_and_batch_wait_still_apply(tmp_path):
    with _running(tmp_path) as (p, loki, stop, t):
        write_archive(tmp_path, DAY, _records(3))
        # the first step may already have read them: either way they wait for their batch
        time.sleep(0.3)  # asserting that nothing happens: a bounded look is all there is
        assert loki.lines() == []


def test_the_runtime_wakes_the_pusher_after_each_commit(tmp_path):
    from exporter.cli import make_parser
    from exporter.runtime import build, rebuild_pipeline
    from exporter.settings import build as build_settings

    log = tmp_path / "vllm.log"
    log.write_text("")
    args = make_parser().parse_args(["run", "--log", str(log), "--archive-dir", str(tmp_path / "a"),
                                     "--loki-url", "http://127.0.0.1:9"])
    rt = build(build_settings("run", args, {}), live=True)
    woken = []
    rt.loki.wake = lambda: woken.append(True)
    assert rt.pipeline.commit() and woken == [True]
    rebuild_pipeline(rt)  # after an unexpected exception: the new pipeline wakes it too
    assert rt.pipeline.commit() and woken == [True, True]
    rt.archive.close()
    rt.loki.close()
