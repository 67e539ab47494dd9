"""Measure what the audit middleware adds to a request.

Usage:
    python bench/middleware_overhead.py inprocess [--requests 20000] [--rounds 10]
    python bench/middleware_overhead.py vllm [--batch 40] [--rounds 6] [--concurrency 4] [--control] [--swap]

``inprocess``: a fake ASGI app (one JSON answer, or an 8-chunk SSE stream) is
called directly and through ``AuditMiddleware`` (real writer thread, real file
in a temp dir), alternating rounds in one process. Reports µs per request on
the event loop for each and the difference, plus the writer thread's render +
write cost per line (CPU spent off the request path).

``vllm``: two real vLLM servers on the same tiny model started at once (one
with the middleware, one without); identical batches of non-streaming chat
requests alternate between them. Reports requests/s and median latency each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from exporter.middleware import AuditMiddleware, MiddlewareConfig  # noqa: E402
from exporter.middleware.line import fallback, render  # noqa: E402
from exporter.middleware.writer import FileSink, LineWriter  # noqa: E402

BODY = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
                   "max_tokens": 8, "temperature": 0.0}).encode()
ANSWER = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
CHUNKS = [b'data: {"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'] * 7 + [
    b"data: [DONE]\n\n"]
HEADERS = [(b"content-type", b"application/json"), (b"x-openwebui-user-name", b"ana")]


async def json_app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def sse_app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for chunk in CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drive(app, n: int) -> float:
    """Seconds per request for ``n`` sequential requests through ``app``."""
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "client": ("127.0.0.1", 1), "headers": HEADERS, "asgi": {"spec_version": "2.3"}}
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive():
        return message

    async def send(msg):
        pass

    start = time.perf_counter()
    for _ in range(n):
        await app(scope, receive, send)
    return (time.perf_counter() - start) / n


def inprocess(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mw.jsonl")
        env = {"VLLM_AUDIT_MIDDLEWARE_FILE": path, "VLLM_AUDIT_API_KEY_SALT": "bench",
               "VLLM_AUDIT_MIDDLEWARE_QUEUE": str(10 ** 6),
               "VLLM_AUDIT_MIDDLEWARE_QUEUE_BYTES": str(1 << 34)}
        cfg = MiddlewareConfig.from_env(env)
        for name, app in (("json", json_app), ("sse", sse_app)):
            # 1) Event loop only: the writer thread is not started; its work is
            #    timed separately by draining the queue after each round.
            writer = LineWriter(FileSink(path, 1 << 40), lambda ex: render(ex, cfg), fallback,
                                max_items=10 ** 6, max_bytes=1 << 34, start=False)
            mw = AuditMiddleware(app, config=cfg, writer=writer)
            bare, wrapped, drain = [], [], []
            asyncio.run(drive(mw, 500))  # warm-up
            writer.drain()
            for _ in range(args.rounds):
                bare.append(asyncio.run(drive(app, args.requests)))
                wrapped.append(asyncio.run(drive(mw, args.requests)))
                start = time.perf_counter()
                writer.drain()
                drain.append((time.perf_counter() - start) / args.requests)
            writer.close()
            b, w, d = (statistics.median(x) * 1e6 for x in (bare, wrapped, drain))
            print(f"{name}: bare {b:.2f} µs/req; with middleware {w:.2f} µs/req on the event loop "
                  f"(+{w - b:.2f} µs); writer thread {d:.2f} µs/line (render + write, off the "
                  f"request path); total CPU added {w - b + d:.2f} µs/req")
            # 2) As deployed: writer thread running concurrently (GIL shared).
            mw = AuditMiddleware(app, config=cfg)
            live = [asyncio.run(drive(mw, args.requests)) for _ in range(args.rounds)]
            mw.writer.close(120)
            print(f"{name}: with the writer thread running: {statistics.median(live) * 1e6:.2f} "
                  f"µs/req, lines {mw.writer.written}, dropped {mw.writer.dropped}")
            os.unlink(path)


def post(url: str) -> float:
    import urllib.request
    req = urllib.request.Request(url + "/v1/chat/completions", data=BODY,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()
    return time.perf_counter() - start


def batch(url: str, n: int, pool: ThreadPoolExecutor) -> tuple[float, list[float]]:
    start = time.perf_counter()
    latencies = list(pool.map(lambda _: post(url), range(n)))
    return time.perf_counter() - start, latencies


def _session(args, tmp: str, audited_first: bool, results: dict) -> int:
    """Start two servers on the same model, one with the middleware; run
    alternating batches; add to ``results``. ``audited_first`` decides which of
    the two (started first / second) carries the middleware, so a run with
    ``--swap`` cancels any bias of one server slot against the other."""
    from vllm_proc import DEFAULT_MODEL_DIR, VllmServer
    tag = "a" if audited_first else "b"
    env = {"VLLM_AUDIT_MIDDLEWARE_FILE": os.path.join(tmp, f"mw-{tag}.jsonl"),
           "VLLM_AUDIT_API_KEY_SALT": "bench"}
    mw = None if args.control else "exporter.middleware.AuditMiddleware"
    first = VllmServer(DEFAULT_MODEL_DIR, Path(tmp) / f"first-{tag}.log",
                       env=env if audited_first else None, middleware=mw if audited_first else None)
    second = VllmServer(DEFAULT_MODEL_DIR, Path(tmp) / f"second-{tag}.log",
                        env=None if audited_first else env, middleware=None if audited_first else mw)
    audited, plain = (first, second) if audited_first else (second, first)
    threads = [threading.Thread(target=s.start) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            for srv in (plain, audited):
                batch(srv.base_url, args.batch // 2, pool)  # warm-up
            for i in range(args.rounds):
                order = (("plain", plain), ("audited", audited))
                for name, srv in (order if i % 2 == 0 else order[::-1]):
                    took, lats = batch(srv.base_url, args.batch, pool)
                    results[name][0].append(args.batch / took)
                    results[name][1].extend(lats)
        mw_file = Path(env["VLLM_AUDIT_MIDDLEWARE_FILE"])
        return sum(1 for _ in open(mw_file)) if mw_file.exists() else 0
    finally:
        for srv in (first, second):
            srv.stop()


def vllm(args) -> None:
    # --control puts the middleware on neither server (A/A): the difference it
    # reports is the noise floor of this two-server set-up.
    results = {"plain": ([], []), "audited": ([], [])}
    lines = 0
    with tempfile.TemporaryDirectory() as tmp:
        for audited_first in ((False, True) if args.swap else (False,)):
            lines += _session(args, tmp, audited_first, results)
    for name, (rps, lats) in results.items():
        print(f"{name}: {statistics.median(rps):.1f} req/s (median of {len(rps)} batches), "
              f"median latency {statistics.median(lats) * 1000:.2f} ms over {len(lats)} requests")
    p, a = (statistics.median(results[k][0]) for k in ("plain", "audited"))
    lp, la = (statistics.median(results[k][1]) * 1000 for k in ("plain", "audited"))
    print(f"audited/plain throughput {a / p:.3f}, added median latency {la - lp:+.2f} ms, "
          f"middleware lines {lines}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("inprocess")
    a.add_argument("--requests", type=int, default=20000)
    a.add_argument("--rounds", type=int, default=10)
    b = sub.add_parser("vllm")
    b.add_argument("--batch", type=int, default=40)
    b.add_argument("--rounds", type=int, default=6)
    b.add_argument("--concurrency", type=int, default=4)
    b.add_argument("--control", action="store_true", help="no middleware on either server")
    b.add_argument("--swap", action="store_true",
                   help="two sessions, the middleware on the other server slot in the second")
    args = parser.parse_args()
    inprocess(args) if args.mode == "inprocess" else vllm(args)


if __name__ == "__main__":
    main()
