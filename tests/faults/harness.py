"""Fault-injection harness: the real runtime, a real vLLM 0.32 capture, one invariant.

A test writes the capture (``tests/fixtures/vllm-0.32.0/debug/vllm.log``, 22
requests) into a log file under ``tmp_path`` in chunks, applies its fault, and
drives the exporter's own composition root (``exporter.runtime.build(...,
live=True)`` with settings parsed by ``exporter.cli.make_parser()``) by
calling ``pipeline.step()`` and ``pusher.run_once()`` directly. Time is a
:class:`FakeClock` shared by the pipeline, the archive, the pusher (its
backoff sleeps advance it) and the test Loki server, so outages of hours take
microseconds and the live watermark is deterministic.

The clock follows the log: after each chunk it is set just past the newest
header time written so far, so a request is never timed out while its later
lines are still to come (the live watermark of a caught-up source is the
clock). :meth:`Exporter.finish` then moves the clock past
``--request-timeout`` so every request still held is recorded.

The invariant (:func:`assert_exactly_once`), for every case:

* archive: the request ids == the ids of a clean one-pass replay
  (``exporter.replay.replay_into``) of the bytes the exporter could see, each
  exactly once;
* Loki (after its dedup): each record exactly once (plus, for cases where
  Loki refuses an entry, the dead-letter file holds exactly the rest);
* ``vllm_audit_requests_total`` summed over all label sets == number of
  archive records, across restarts (the store is restored from the checkpoint).
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import json
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from exporter import runtime as runtime_mod
from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.loki import LokiPusher
from exporter.settings import build as build_settings

try:
    from tests.loki_server import FakeClock, LokiServer
except ImportError:  # pragma: no cover - rootdir without the tests package
    from loki_server import FakeClock, LokiServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32.0"
CAPTURE = FIXTURES / "debug" / "vllm.log"
MODEL = "tiny"
REQUEST_TIMEOUT = 10.0
YEAR = 2026
# The capture was taken on 11-22 02:26:49 .. 02:27:13 (text format: no year, UTC).
START = calendar.timegm((YEAR, 11, 22, 2, 26, 0))

_HEADER_TIME = re.compile(rb"(?:^|\) )(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")


class Blocked(Exception):
    """Raised from the fake sleep when a test's retry budget is spent: the
    pusher is "still retrying" at that point (used for permanent faults)."""


# ----------------------------------------------------------------- the input
def capture_lines(path: Path = CAPTURE) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def chunks(lines: list[bytes], n: int) -> list[list[bytes]]:
    """``lines`` cut into ``n`` nearly equal consecutive chunks."""
    size = -(-len(lines) // n)
    return [lines[i:i + size] for i in range(0, len(lines), size)]


def request_starts(lines: list[bytes]) -> list[int]:
    """Indexes of the first line of each request (its ``JSON body`` line)
    that no other request overlaps: cutting there splits no request."""
    starts = [i for i, ln in enumerate(lines) if b"JSON body" in ln]
    return [i for k, i in enumerate(starts) if k == 0 or i - starts[k - 1] > 2]


def split_at_requests(lines: list[bytes], *fractions: float) -> list[list[bytes]]:
    """Cut ``lines`` at request starts near the given fractions of the requests."""
    starts = request_starts(lines)
    cuts = [starts[min(len(starts) - 1, int(f * len(starts)))] for f in fractions]
    bounds = [0, *cuts, len(lines)]
    return [lines[a:b] for a, b in zip(bounds, bounds[1:])]


def header_epoch(line: bytes, year: int) -> float | None:
    m = _HEADER_TIME.search(line)
    if not m:
        return None
    mo, d, h, mi, s = (int(x) for x in m.groups())
    return float(calendar.timegm((year, mo, d, h, mi, s)))


def shift_times(lines: list[bytes], seconds: int) -> list[bytes]:
    """Rewrite every text-format header time by ``seconds`` (year-less,
    wrapping across New Year as the formatter would)."""
    out = []
    for ln in lines:
        def sub(m):
            mo, d, h, mi, s = (int(x) for x in m.groups()[1:])
            t = calendar.timegm((YEAR, mo, d, h, mi, s)) + seconds
            tm = time.gmtime(t)
            return m.group(1) + b"%02d-%02d %02d:%02d:%02d " % (tm.tm_mon, tm.tm_mday, tm.tm_hour,
                                                               tm.tm_min, tm.tm_sec)
        out.append(re.sub(rb"((?:^|\) )(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) )"
                          rb"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ", sub, ln, count=1))
    return out


def written_now(lines: list[bytes], now: float | None = None) -> list[bytes]:
    """The capture as if vLLM were writing it now: for a real ``exporter
    run`` process and a wall-clock Loki server, which refuses entries older
    than a week (the capture's own dates would age out of it)."""
    first = next(t for t in (header_epoch(ln, YEAR) for ln in lines) if t is not None)
    return shift_times(lines, int((time.time() if now is None else now) - first))


_ID = re.compile(rb"\b(?:chatcmpl|cmpl)-([0-9a-f]{16})")


def copies(n: int, *, first: int = 0, lines: list[bytes] | None = None) -> list[list[bytes]]:
    """``n`` copies of the capture, each with its own request ids and 30 s
    later than the previous one (the capture spans 24 s)."""
    lines = capture_lines() if lines is None else lines
    ids = sorted({m.group(1) for ln in lines for m in _ID.finditer(ln)})
    out = []
    for k in range(first, first + n):
        def rename(line: bytes, k=k) -> bytes:
            for old in ids:
                if old in line:
                    line = line.replace(old, b"%04x" % (k + 1) + old[4:])
            return line.replace(b"fixture-req-0001", b"fixture-req-%04x" % (k + 0x100))
        out.append(shift_times([rename(ln) for ln in lines], 30 * k))
    return out


# ------------------------------------------------------------ the reference
_REFERENCE: dict[str, list[str]] = {}


def reference_ids(data: bytes, tmp: Path, extra_files: dict[str, bytes] | None = None) -> list[str]:
    """Request ids of a clean one-pass replay of ``data`` (cached by content)."""
    key = hashlib.sha256(data + repr(sorted((extra_files or {}).items())).encode()).hexdigest()
    if key not in _REFERENCE:
        tmp.mkdir(parents=True, exist_ok=True)
        src = tmp / f"ref-{key[:12]}.log"
        src.write_bytes(data)
        files = [str(src)]
        for name, blob in (extra_files or {}).items():
            p = tmp / f"ref-{key[:12]}-{name}"
            p.write_bytes(blob)
            files.append(str(p))
        args = make_parser().parse_args(
            ["replay", *files, "--archive-dir", str(tmp / f"ref-archive-{key[:12]}"), "--model", MODEL,
             "--merge-grace", "0", "--request-timeout", str(REQUEST_TIMEOUT), "--no-progress"])
        rt, _ = replay_into(build_settings("replay", args, {}), quiet=True)
        rt.archive.close() if hasattr(rt.archive, "close") else None
        _REFERENCE[key] = archive_ids(tmp / f"ref-archive-{key[:12]}")
    return list(_REFERENCE[key])


# ------------------------------------------------------------ observations
def archive_records(archive: Path) -> list[dict]:
    recs = []
    for p in sorted(archive.glob("audit-*.jsonl")):
        recs += [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln]
    return recs


def archive_ids(archive: Path) -> list[str]:
    return [r["request_id"] for r in archive_records(archive)]


def loki_ids(srv: LokiServer) -> list[str]:
    return [json.loads(line)["request_id"] for line in srv.lines()]


def dead_letter_ids(archive: Path) -> list[str]:
    ids = []
    for p in sorted((archive / "dead-letter").glob("loki-*.jsonl")):
        for ln in p.read_text(encoding="utf-8").splitlines():
            row = json.loads(ln)
            ids.append(row.get("request_id") or json.loads(row["archive_line"])["request_id"])
    return ids


def wait_exit(proc, timeout: float, why) -> int:
    """``proc``'s exit code; past ``timeout`` a failure naming the awaited
    event that never came (``why``: text, or a callable giving it)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        err = proc.communicate()[1] or b""
        reason = why() if callable(why) else why
        pytest.fail(f"still running after {timeout:.0f} s: {reason}\n{err.decode(errors='replace')[-2000:]}")


def requests_total(registry) -> float:
    """``vllm_audit_requests_total`` summed over every label set."""
    total = 0.0
    for fam in registry.collect():
        for s in fam.samples:
            if s.name == "vllm_audit_requests_total":
                # cross-check one sample through the public accessor
                assert registry.get_sample_value(s.name, s.labels) == s.value
                total += s.value
    return total


def sample(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def assert_exactly_once(exp: "Exporter", expected: list[str], *, loki: LokiServer | None = None,
                        dead_lettered: set[str] | frozenset = frozenset()) -> None:
    got = archive_ids(exp.archive)
    dupes = sorted({i for i in got if got.count(i) > 1})
    assert not dupes, f"archive holds these more than once: {dupes}"
    assert sorted(got) == sorted(expected), (
        f"archive: missing {sorted(set(expected) - set(got))}, extra {sorted(set(got) - set(expected))}")
    assert len(expected) == len(set(expected))
    if loki is not None:
        in_loki = loki_ids(loki)
        dupes = sorted({i for i in in_loki if in_loki.count(i) > 1})
        assert not dupes, f"Loki holds these more than once after its dedup: {dupes}"
        dead = dead_letter_ids(exp.archive)
        assert sorted(set(dead)) == sorted(dead_lettered), f"dead letters: {sorted(dead)}"
        assert sorted(in_loki + sorted(set(dead))) == sorted(got), (
            f"Loki: missing {sorted(set(got) - set(in_loki) - set(dead))}, "
            f"extra {sorted(set(in_loki) - set(got))}")
        assert not set(in_loki) & set(dead)
    assert exp.rt is not None
    assert requests_total(exp.rt.registry) == len(got)


# ---------------------------------------------------------------- the runtime
class Exporter:
    """One exporter "process" after another over the same directories.

    ``start()`` builds a fresh runtime from disk (checkpoint, archive, Loki
    position), like a process start; ``crash()`` drops it without any commit
    (SIGKILL: buffered archive lines and unsaved positions are gone);
    ``stop()`` is the graceful stop (final commit).
    """

    def __init__(self, tmp_path: Path, clock: FakeClock, *, logs: list[Path] | None = None,
                 loki: LokiServer | None = None, extra: list[str] | None = None,
                 loki_overrides: dict | None = None, fs=None, url: str | None = None):
        self.tmp = tmp_path
        self.clock = clock
        self.log = tmp_path / "vllm.log"
        self.logs = logs or [self.log]
        self.archive = tmp_path / "archive"
        self.loki_server = loki
        self.extra = list(extra or [])
        self.loki_overrides = {"timeout_seconds": 0.5, "backoff_initial_seconds": 0.5,
                               "backoff_max_seconds": 30.0, "batch_wait": 0.0,
                               **(loki_overrides or {})}
        self.url = url  # a Loki URL other than the test server's (DNS, TLS, hang)
        self.fs = fs  # injected into every FileTailer (exporter.tail.position.OsFs)
        self.rt = None
        self.starts = 0

    # -- settings / build ------------------------------------------------------
    def argv(self) -> list[str]:
        argv = ["run"]
        for p in self.logs:
            argv += ["--log", str(p)]
        argv += ["--from-start", "--archive-dir", str(self.archive), "--model", MODEL,
                 "--merge-grace", "0", "--request-timeout", str(REQUEST_TIMEOUT),
                 "--checkpoint-interval", "1", "--web.listen-address", "127.0.0.1:0"]
        if self.url is not None:
            argv += ["--loki-url", self.url]
        elif self.loki_server is not None:
            argv += ["--loki-url", self.loki_server.url]
        return argv + self.extra

    def settings(self):
        return build_settings("run", make_parser().parse_args(self.argv()), {})

    def _build_loki(self, settings, registry, users, health, committed=None):
        # exporter.runtime.build_loki with the fake clock/sleep injected and a
        # short HTTP timeout (LokiSettings fields the CLI does not expose).
        policy = runtime_mod._policy("loki", settings.loki_prompt_policy, settings.loki_output_policy,
                                     settings.hmac_key)
        return LokiPusher(dataclasses.replace(settings.loki, **self.loki_overrides), settings.archive_dir,
                          registry, label_user=users.label, policy=policy, state_dir=settings.state_dir,
                          clock=self.clock, sleep=self.clock.sleep, rng=lambda: 1.0,
                          committed=committed)

    def start(self):
        assert self.rt is None, "already running"
        settings = self.settings()
        patches = [mock.patch.object(runtime_mod, "build_loki", self._build_loki)]
        if self.fs is not None:
            real = runtime_mod.FileTailer
            patches.append(mock.patch.object(
                runtime_mod, "FileTailer", lambda *a, **kw: real(*a, fs=self.fs, **kw)))
        with _all(patches):
            self.rt = runtime_mod.build(settings, live=True, clock=self.clock)
        self.starts += 1
        return self.rt

    # -- driving -------------------------------------------------------------
    @property
    def pipeline(self):
        return self.rt.pipeline

    @property
    def pusher(self):
        return self.rt.loki

    def follow(self, data: bytes) -> None:
        """Set the clock just past the newest header time in ``data`` (the
        year-less header is read in the year that puts it nearest the clock)."""
        year = time.gmtime(self.clock.now).tm_year
        times = []
        for ln in data.splitlines():
            cands = [t for t in (header_epoch(ln, y) for y in (year - 1, year, year + 1)) if t is not None]
            if cands:
                times.append(min(cands, key=lambda t: abs(t - self.clock.now)))
        if times and max(times) + 1 > self.clock.now:
            self.clock.now = max(times) + 1

    def pump(self, max_steps: int = 100) -> int:
        """Step until a step reads nothing (twice: a rotation switch happens at EOF)."""
        total, idle = 0, 0
        for _ in range(max_steps):
            n = self.pipeline.step()
            total += n
            idle = idle + 1 if n == 0 else 0
            if idle >= 2:
                break
        return total

    def commit(self) -> bool:
        return self.pipeline.commit()

    def push(self, max_batches: int = 1000) -> int:
        """Push until the pusher's backlog is empty."""
        n = 0
        for _ in range(max_batches):
            if self.pusher.backlog() == 0:
                return n
            n += self.pusher.run_once()
        raise AssertionError("pusher did not drain its backlog")

    def settle(self) -> None:
        """Everything still held is recorded (clock past --request-timeout),
        committed and (if Loki is configured) pushed."""
        self.pump()
        self.clock.now += REQUEST_TIMEOUT + 5
        self.pump()
        assert self.commit(), "final checkpoint failed"
        if self.pusher is not None:
            self.push()

    def crash(self) -> None:
        """SIGKILL equivalent: no flush, no checkpoint, fds closed by the OS."""
        rt, self.rt = self.rt, None
        for s in rt.pipeline.sources:
            s.tailer.close()
        if rt.loki is not None:
            rt.loki.close()

    def stop(self) -> None:
        """Graceful stop: the final commit of the service's pipeline loop."""
        self.pipeline.commit()
        self.crash()

    def restart(self, graceful: bool = False):
        self.stop() if graceful else self.crash()
        return self.start()

    def tailer_stats(self, i: int = 0):
        return self.pipeline.sources[i].tailer.stats


@contextmanager
def _all(patches):
    for p in patches:
        p.start()
    try:
        yield
    finally:
        for p in reversed(patches):
            p.stop()


class Writer:
    """vLLM's log writer: an fd on one inode, optionally without O_APPEND
    (the stale-writer case), written in chunks."""

    def __init__(self, path: Path, append: bool = True):
        import os
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
        self.fd = os.open(self.path, flags, 0o644)
        if not append:
            os.lseek(self.fd, 0, os.SEEK_END)
        self.written: list[bytes] = []

    def write(self, lines: list[bytes] | bytes) -> bytes:
        import os
        data = lines if isinstance(lines, bytes) else b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.written.append(data)
        return data

    def reopen(self, append: bool = True) -> None:
        """The writer moves on to a new file at its path (after a rotation)."""
        self.close()
        self.__init__(self.path, append)

    def close(self) -> None:
        import os
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def blocking_budget(clock: FakeClock, sleeps: int):
    """A clock hook that raises :class:`Blocked` after ``sleeps`` more sleeps."""
    start = len(clock.sleeps)

    def hook():
        if len(clock.sleeps) - start >= sleeps:
            clock.hooks.remove(hook)
            raise Blocked()
    clock.hooks.append(hook)
    return hook


def forget_dedup(srv: LokiServer) -> None:
    """Loki loses its dedup state (ingester restart / stream idle longer than
    chunk_idle_period): what it stored stays, but a resend is stored again.
    Harness-side: tests/loki_server.py has no such mode; its dedup set is
    private state, cleared here without editing the server."""
    with srv._lock:
        srv._state.seen.clear()


def run_in_thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


class HangingServer:
    """Accepts TCP connections and never answers (a hung Loki / proxy)."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.conns = []
        self._stop = threading.Event()
        self._t = run_in_thread(self._accept)

    def _accept(self):
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self._stop.set()
        self._t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()
