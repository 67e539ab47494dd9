"""End-to-end lag: a request's lines appended to a live log → its record in
``/metrics`` (and acknowledged by Loki).

Usage::

    .venv/bin/python bench/lag.py                       # 3 modes x 100 requests
    .venv/bin/python bench/lag.py --requests 5 --modes grace0   # smoke

For each mode the exporter runs as a subprocess, ``python -m exporter run
--log LOG --archive-dir D --web.listen-address 127.0.0.1:PORT --loki-url URL
...``, tailing a fresh log. The bench appends one real request at a time
(the ``chat_system`` request of the DEBUG capture: JSON body, details,
Received, Added, output details, output, access line — one ``write``), with
a fresh id, the current UTC time in the headers and a unique ``user``, every
``--interval`` seconds. A poller thread fetches ``/metrics`` every
``--poll`` seconds and notes when ``vllm_audit_requests_total`` first shows
that user; the strict Loki test server (``tests/loki_server.py``) notes when
the push that stored the record was accepted. Lag = that time − write time.

Modes:

* ``default``: the exporter's defaults (``--merge-grace 5``,
  ``--checkpoint-interval 1``, ``--loki-batch-wait 1``). A record waits 5 s of
  log time after its last line for lines of the other source; vLLM's text
  header has whole seconds, so the wait is 4-5 s of wall time by design.
* ``grace0``: ``--merge-grace 0``: the record is made as soon as its
  finishing line is read (tail poll 0.2 s when idle).
* ``tuned``: ``--merge-grace 0 --checkpoint-interval 0.2 --loki-batch-wait 0.2``:
  Loki reads the archive, which is written at each checkpoint (fsync), then
  batches; both waits shortened.

Prints one JSON line with p50/p90/p99/max per mode and sink (seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import make_big_log  # noqa: E402
from make_big_log import CAPTURES  # noqa: E402
from replay_throughput import machine  # noqa: E402

MODES = {
    "default": [],
    "grace0": ["--merge-grace", "0"],
    "tuned": ["--merge-grace", "0", "--checkpoint-interval", "0.2", "--loki-batch-wait", "0.2"],
}
TEMPLATE_ID = "86c037e1719cbffd"  # chat_system in the debug capture
_USER_SERIES = re.compile(r'^vllm_audit_requests_total\{[^}]*user="(lag\d+)"', re.M)
_HEADER_TIME = re.compile(r"(?m)^(\(APIServer pid=\d+\) (?:DEBUG|INFO) )\d\d-\d\d \d\d:\d\d:\d\d")


def request_template() -> str:
    lines = (CAPTURES / "debug" / "vllm.log").read_text(encoding="utf-8").splitlines()
    picked, access = [], None
    for i, ln in enumerate(lines):
        if TEMPLATE_ID in ln:
            picked.append(ln)
            last = i
    for ln in lines[last + 1:]:
        if '"POST /v1/chat/completions' in ln:
            access = ln
            break
    text = "\n".join(picked + ([access] if access else [])) + "\n"
    text = text.replace('"temperature":0.0}', '"temperature":0.0,"user":"@@USER@@"}', 1)
    text = text.replace(TEMPLATE_ID, "@@RID@@")
    return _HEADER_TIME.sub(lambda m: m.group(1) + "@@WHEN@@", text)


STREAM_ID = "86f584de06cc75cb"  # chat_stream in the debug capture: 16 tokens, one delta pair each
_DELTA = re.compile(r"\] Generated response chatcmpl-@@RID@@ \(streaming delta\)")


def stream_template() -> tuple[str, list[str], str]:
    """The chat_stream request as (head, [one chunk per token], tail): the
    head is its JSON body, details, Received and Added lines; each token is
    vLLM's DEBUG details + INFO output delta pair; the tail is the
    streaming-complete pair and the access line."""
    lines = (CAPTURES / "debug" / "vllm.log").read_text(encoding="utf-8").splitlines()
    picked = [i for i, ln in enumerate(lines) if STREAM_ID in ln]
    access = next(ln for ln in lines[picked[-1] + 1:] if '"POST /v1/chat/completions' in ln)
    text = [lines[i] for i in picked]
    text = [ln.replace('"temperature":0.0}', '"temperature":0.0,"user":"@@USER@@"}', 1) for ln in text]
    text = [_HEADER_TIME.sub(lambda m: m.group(1) + "@@WHEN@@", ln.replace(STREAM_ID, "@@RID@@")) for ln in text]
    first_delta = next(i for i, ln in enumerate(text) if _DELTA.search(ln))
    last_delta = max(i for i, ln in enumerate(text) if _DELTA.search(ln))
    head = "\n".join(text[:first_delta]) + "\n"
    deltas = text[first_delta:last_delta + 1]
    tokens = ["\n".join(deltas[i:i + 2]) + "\n" for i in range(0, len(deltas), 2)]
    tail = "\n".join(text[last_delta + 1:] + [access]) + "\n"
    return head, tokens, tail


def write_streams(f, name: str, n: int, rate: float, streams: int) -> dict[int, float]:
    """Write ``n`` streaming requests, ``streams`` at a time, their tokens
    interleaved at ``rate`` tokens per second in all (two lines per token, as
    vLLM logs deltas). Returns request index -> time its last line was written."""
    head, tokens, tail = stream_template()
    written: dict[int, float] = {}
    active: list[list] = []  # [index, next token]
    started = 0
    t0 = time.perf_counter()
    sent = 0
    while started < n or active:
        while len(active) < streams and started < n:
            when = time.strftime("%m-%d %H:%M:%S", time.gmtime())
            f.write(render(head, f"{name[:4]}{started:012x}", f"lag{started:04d}", when))
            active.append([started, 0])
            started += 1
        for slot in list(active):
            i, k = slot
            when = time.strftime("%m-%d %H:%M:%S", time.gmtime())
            rid, user = f"{name[:4]}{i:012x}", f"lag{i:04d}"
            f.write(render(tokens[k], rid, user, when))
            sent += 1
            slot[1] += 1
            if slot[1] == len(tokens):
                f.write(render(tail, rid, user, when))
                f.flush()
                written[i] = time.perf_counter()
                active.remove(slot)
        f.flush()
        ahead = t0 + sent / rate - time.perf_counter()  # keep the token rate, not a sleep per line
        if ahead > 0:
            time.sleep(ahead)
    return written


def write_requests(f, name: str, n: int, interval: float) -> dict[int, float]:
    tpl = request_template()
    written: dict[int, float] = {}
    for i in range(n):
        when = time.strftime("%m-%d %H:%M:%S", time.gmtime())
        f.write(render(tpl, f"{name[:4]}{i:012x}", f"lag{i:04d}", when))
        f.flush()
        written[i] = time.perf_counter()
        time.sleep(interval)
    return written


def render(tpl: str, rid: str, user: str, when: str) -> str:
    return tpl.replace("@@RID@@", rid).replace("@@USER@@", user).replace("@@WHEN@@", when)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[max(0, min(len(v) - 1, int(-(-len(v) * q // 100)) - 1))], 3)


def stats(values: list[float], expected: int) -> dict:
    return {"n": len(values), "missing": expected - len(values), "p50": pct(values, 50),
            "p90": pct(values, 90), "p99": pct(values, 99), "max": round(max(values), 3) if values else None}


def wait_started(proc, url: str, stderr: Path, timeout: float = 60) -> None:
    """Until the exporter ``proc`` answers ``url`` (its /metrics); exit with
    its stderr if it dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"exporter did not start: {stderr.read_text()[-2000:]}")
            time.sleep(0.1)
    time.sleep(0.5)  # the tailer has opened the file (at its end) by now


def run_mode(name: str, args: list[str], workdir: Path, n: int, interval: float, poll: float,
             loki_cls, settle: float, writer=None) -> dict:
    d = workdir / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log = d / "vllm.log"
    log.write_text("")
    port = free_port()
    loki = loki_cls().start() if loki_cls else None
    loki_seen: dict[str, float] = {}
    if loki is not None:
        def on_stored(_n):
            now = time.perf_counter()
            for line in loki.lines():
                try:
                    rid = json.loads(line).get("request_id")
                except ValueError:
                    continue
                loki_seen.setdefault(rid, now)
        loki.on_stored = on_stored
    cmd = [sys.executable, "-m", "exporter", "run", "--log", str(log), "--archive-dir", str(d / "archive"),
           "--web.listen-address", f"127.0.0.1:{port}", *args,
           # every request has its own user: keep each its own series (the
           # poller looks for it), beyond the default label bound of 500
           "--max-users", str(max(500, n + 10))]
    if loki is not None:
        cmd += ["--loki-url", loki.url]
    err = open(d / "exporter.stderr", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_started(proc, url, d / "exporter.stderr")
        metrics_seen: dict[str, float] = {}
        stop = threading.Event()

        def poller():
            while not stop.is_set():
                try:
                    body = urllib.request.urlopen(url, timeout=5).read().decode()
                except OSError:
                    body = ""
                now = time.perf_counter()
                for user in _USER_SERIES.findall(body):
                    metrics_seen.setdefault(user, now)
                stop.wait(poll)
        th = threading.Thread(target=poller, daemon=True)
        th.start()
        with open(log, "a", encoding="utf-8") as f:
            if writer is None:
                written = write_requests(f, name, n, interval)
            else:
                written = writer(f, name, n)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            if len(metrics_seen) >= n and (loki is None or len(loki_seen) >= n):
                break
            time.sleep(0.05)
        stop.set()
        th.join(5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
        if loki is not None:
            loki.stop()
    m_lag = [metrics_seen[f"lag{i:04d}"] - t for i, t in written.items() if f"lag{i:04d}" in metrics_seen]
    l_lag = [loki_seen[f"chatcmpl-{name[:4]}{i:012x}"] - t for i, t in written.items()
             if f"chatcmpl-{name[:4]}{i:012x}" in loki_seen]
    return {"args": args, "metrics": stats(m_lag, n),
            "loki": stats(l_lag, n) if loki is not None else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between two requests")
    p.add_argument("--poll", type=float, default=0.02, help="/metrics poll period (lag resolution)")
    p.add_argument("--modes", default="default,grace0,tuned")
    p.add_argument("--no-loki", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--stream-rate", type=float, default=None, metavar="TOKENS_PER_S",
                   help="instead of one write per request: streaming requests whose delta lines "
                        "(--enable-log-deltas, two lines per token) are written at this many tokens/s in all")
    p.add_argument("--streams", type=int, default=50, help="concurrent streams with --stream-rate")
    a = p.parse_args(argv)
    writer = None
    achieved: dict[str, float] = {}
    if a.stream_rate:
        def writer(f, name, n):
            t = time.perf_counter()
            written = write_streams(f, name, n, a.stream_rate, a.streams)
            # the rate really written (the writer shares the 2 cores too)
            achieved[name] = round(n * len(stream_template()[1]) / (time.perf_counter() - t), 1)
            return written
    loki_cls = None
    if not a.no_loki:
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from loki_server import LokiServer as loki_cls  # noqa: N813
        except ImportError:
            loki_cls = None
    with make_big_log.workdir(a.workdir, "lag-bench-") as workdir:
        out = {"bench": "lag", **machine(), "requests": a.requests, "interval_s": a.interval,
               "stream_rate_tokens_s": a.stream_rate, "streams": a.streams if a.stream_rate else None,
               "poll_s": a.poll, "loki": loki_cls is not None, "target_p99_s": 1.0, "modes": {}}
        for name in a.modes.split(","):
            out["modes"][name] = run_mode(name, MODES[name], workdir, a.requests, a.interval, a.poll,
                                          loki_cls, settle=15.0, writer=writer)
            if name in achieved:
                out["modes"][name]["achieved_tokens_s"] = achieved[name]
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
