"""A strict Loki push-API test server (real HTTP on 127.0.0.1).

Validates every push the way Loki's distributor does (grafana/loki
pkg/distributor, pkg/validation; see reference/reliability.md section 3):
JSON shape, gzip, label syntax and count, nanosecond *string* timestamps,
line size, too old / too new / too far behind relative to its own (injectable)
clock, structured metadata shape and size. Invalid streams/entries are
dropped and the valid ones stored, answering 400 -- like real Loki, a 400 does
not mean "nothing stored". Stored entries are deduplicated on
(stream, ts, line, metadata), Loki's rule.

Fault modes: ``fail_next`` (429/500/260/401/... without storing),
``refuse_connections`` (listening socket and open connections closed until
the clock passes; ``tick()`` reopens), ``timeout_next`` (store, then never
answer in time), ``on_stored`` hook (e.g. SIGKILL the client mid-stream).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
NS = 1_000_000_000


@dataclass
class PushRequest:
    headers: dict
    gzip: bool
    status: int
    entries: int
    body: dict | None = None


@dataclass
class _State:
    streams: dict = field(default_factory=dict)  # frozenset(labels) -> list[(ts, line, sm)]
    seen: set = field(default_factory=set)
    newest: dict = field(default_factory=dict)  # stream -> newest ts
    received: int = 0  # entries accepted incl. duplicates
    requests: list = field(default_factory=list)
    faults: list = field(default_factory=list)  # [(status, body)]
    timeouts: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeLoki/3"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def setup(self):
        super().setup()
        self.server.loki._track(self.connection)

    def _send(self, status: int, body: bytes = b"", ctype="text/plain; charset=utf-8"):
        try:
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)
        except OSError:
            pass  # client gave up (timeout fault)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/ready":
            return self._send(200, b"ready")
        if url.path == "/loki/api/v1/query_range":
            loki, h = self.server.loki, {k.lower(): v for k, v in self.headers.items()}
            # Queries go through the same auth and tenant checks as pushes.
            if loki.authorization is not None and h.get("authorization") != loki.authorization:
                return self._send(401, b"unauthorized")
            if loki.tenant is not None and h.get("x-scope-orgid") != loki.tenant:
                return self._send(401, b"no org id")
            status, body = loki._query(parse_qs(url.query))
            return self._send(status, body, "application/json")
        self._send(404, b"404 page not found")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if urlsplit(self.path).path != "/loki/api/v1/push":
            return self._send(404, b"404 page not found")
        status, body = self.server.loki._push(dict(self.headers.items()), raw)
        if status == "timeout":
            self.server.loki._release.wait(5.0)
            self.close_connection = True
            return
        self._send(status, body.encode())


class LokiServer:
    def __init__(self, *, clock=time.time, tenant: str | None = None,
                 authorization: str | None = None, max_line_size: int = 256 * 1024,
                 max_age: float = 7 * 86400, grace: float = 600, window: float = 3600,
                 max_labels: int = 15, max_sm_bytes: int = 64 * 1024):
        self.clock = clock
        self.tenant, self.authorization = tenant, authorization
        self.max_line_size, self.max_labels, self.max_sm_bytes = max_line_size, max_labels, max_sm_bytes
        self.max_age, self.grace, self.window = max_age, grace, window
        self.on_stored = None  # callable(request_number) after a push stored entries
        self._state = _State()
        self._lock = threading.Lock()
        self._conns: set = set()
        self._release = threading.Event()
        self._httpd = None
        self._thread = None
        self._down_until: float | None = None
        self.port = 0
        self.host = "127.0.0.1"  # the stack runner's stand-in listens on 0.0.0.0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "LokiServer":
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.loki = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def _close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:  # kill keep-alive connections too: "Loki is down"
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._release.set()
        self._close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _track(self, conn) -> None:
        with self._lock:
            self._conns.add(conn)

    # -- faults ---------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, body: str = "") -> None:
        with self._lock:
            self._state.faults.extend([(status, body)] * times)

    def timeout_next(self, times: int = 1) -> None:
        """Store the next pushes, then do not answer (the client times out)."""
        with self._lock:
            self._state.timeouts += times

    def refuse_connections(self, seconds: float) -> None:
        self._down_until = self.clock() + seconds
        self._close()

    def tick(self) -> None:
        """Reopen after ``refuse_connections`` once the clock has passed."""
        if self._down_until is not None and self.clock() >= self._down_until:
            self._down_until = None
            self.start()

    # -- inspection -----------------------------------------------------------

    def streams(self) -> dict:
        with self._lock:
            return {k: list(v) for k, v in self._state.streams.items()}

    def lines(self) -> list[str]:
        return [e[1] for v in self.streams().values() for e in v]

    def entries(self) -> list[tuple]:
        return [(dict(k), *e) for k, v in self.streams().items() for e in v]

    @property
    def received(self) -> int:
        return self._state.received

    @property
    def requests(self) -> list[PushRequest]:
        with self._lock:
            return list(self._state.requests)

    # -- push -----------------------------------------------------------------

    def _push(self, headers: dict, raw: bytes):
        h = {k.lower(): v for k, v in headers.items()}
        is_gzip = h.get("content-encoding", "") == "gzip"
        req = PushRequest(headers=h, gzip=is_gzip, status=0, entries=0)
        with self._lock:
            self._state.requests.append(req)
        status, text = self._push_inner(h, raw, req)
        req.status = status if isinstance(status, int) else 0
        return status, text

    def _push_inner(self, h: dict, raw: bytes, req: PushRequest):
        if self.authorization is not None and h.get("authorization") != self.authorization:
            return 401, "unauthorized"
        if self.tenant is not None and h.get("x-scope-orgid") != self.tenant:
            return 401, "no org id"
        with self._lock:
            fault = self._state.faults.pop(0) if self._state.faults else None
        if fault:
            return fault[0], fault[1] or f"injected {fault[0]}"
        if not h.get("content-type", "").startswith("application/json"):
            return 415, "unsupported content type"
        if req.gzip:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                return 400, "error parsing push request: bad gzip"
        try:
            body = json.loads(raw, object_pairs_hook=_no_dup_keys)
            streams = _parse_shape(body)
        except (ValueError, TypeError, KeyError) as exc:
            return 400, f"error parsing push request: {exc}"
        req.body = body
        errors, stored = [], 0
        now_ns = int(self.clock() * NS)
        with self._lock:
            for labels, values in streams:
                err = self._label_error(labels)
                if err:
                    errors.append(err)
                    continue
                key = frozenset(labels.items())
                for ts, line, sm in values:
                    err = self._entry_error(key, labels, ts, line, sm, now_ns)
                    if err:
                        errors.append(err)
                        continue
                    self._store(key, ts, line, sm)
                    stored += 1
            req.entries = stored
        if stored and self.on_stored is not None:
            # The hook may call timeout_next() to make THIS push hang: a test
            # can then act on what was stored, not on a request count.
            self.on_stored(len(self._state.requests))
        with self._lock:
            timeout = self._state.timeouts > 0
            if timeout:
                self._state.timeouts -= 1
        if timeout:
            return "timeout", ""
        if errors:
            return 400, "\n".join(errors[:20])
        return 204, ""

    def _label_error(self, labels: dict) -> str | None:
        shown = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        if not labels:
            return "error at least one label pair is required per stream"
        count = len(labels) + (0 if "service_name" in labels else 1)  # Loki adds service_name
        if count > self.max_labels:
            return f"stream '{shown}' has {count} label names; limit {self.max_labels}"
        for k, v in labels.items():
            if not LABEL_NAME.match(k) or k.startswith("__"):
                return f"error parsing labels {shown}: invalid label name {k!r}"
            if len(k) > 1024 or len(v.encode()) > 2048:
                return f"stream '{shown}' has label value too long"
            if not v:
                return f"stream '{shown}' has an empty label value for {k}"
        return None

    def _entry_error(self, key, labels, ts, line, sm, now_ns) -> str | None:
        shown = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        size = len(line.encode("utf-8"))
        if size > self.max_line_size:
            return (f"Max entry size '{self.max_line_size}' bytes exceeded for stream '{shown}' "
                    f"while adding an entry with length '{size}' bytes")
        if ts < now_ns - int(self.max_age * NS):
            return f"entry for stream '{shown}' has timestamp too old: {ts}"
        if ts > now_ns + int(self.grace * NS):
            return f"entry for stream '{shown}' has timestamp too new: {ts}"
        newest = self._state.newest.get(key)
        if newest is not None and ts < newest - int(self.window * NS):
            return f"entry too far behind, entry timestamp is: {ts}, stream '{shown}'"
        if sm and sum(len(k) + len(v.encode()) for k, v in sm) > self.max_sm_bytes:
            return f"stream '{shown}' structured metadata too large"
        return None

    def _store(self, key, ts, line, sm) -> None:
        self._state.received += 1
        ident = (key, ts, line, sm)
        if ident in self._state.seen:
            return  # Loki's dedup: same stream, timestamp, line, metadata
        self._state.seen.add(ident)
        self._state.streams.setdefault(key, []).append((ts, line, sm))
        self._state.newest[key] = max(ts, self._state.newest.get(key, ts))

    # -- query ----------------------------------------------------------------

    def _query(self, params: dict):
        q = (params.get("query") or [""])[0]
        m = re.fullmatch(r"\s*\{(.*)\}\s*", q)
        if not m:
            return 400, json.dumps({"status": "error", "error": "only {k=\"v\"} selectors"}).encode()
        matchers = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"', m.group(1)))
        start = int((params.get("start") or ["0"])[0])
        end = int((params.get("end") or [str(2**63 - 1)])[0])
        limit = int((params.get("limit") or ["100"])[0])
        backward = (params.get("direction") or ["backward"])[0] == "backward"
        result = []
        for key, values in self.streams().items():
            labels = dict(key)
            if any(labels.get(k) != v for k, v in matchers.items()):
                continue
            vals = sorted((v for v in values if start <= v[0] < end), key=lambda v: v[0],
                          reverse=backward)[:limit]
            if vals:
                result.append({"stream": labels, "values": [[str(t), line] for t, line, _ in vals]})
        body = {"status": "success", "data": {"resultType": "streams", "result": result}}
        return 200, json.dumps(body).encode()


def _no_dup_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in object")
    return dict(pairs)


def _parse_shape(body) -> list:
    """Loki's JSON push shape, or ValueError (the whole request fails)."""
    if not isinstance(body, dict) or not isinstance(body.get("streams"), list):
        raise ValueError("missing streams")
    out = []
    for s in body["streams"]:
        if not isinstance(s, dict) or not isinstance(s.get("stream"), dict) \
                or not isinstance(s.get("values"), list):
            raise ValueError("stream must have stream{} and values[]")
        labels = s["stream"]
        if not all(isinstance(v, str) for v in labels.values()):
            raise ValueError("label values must be strings")
        values = []
        for v in s["values"]:
            if not isinstance(v, list) or len(v) not in (2, 3):
                raise ValueError("value must be [ts, line] or [ts, line, {metadata}]")
            ts, line = v[0], v[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise ValueError(f"timestamp must be a string of nanoseconds, got {ts!r}")
            if not isinstance(line, str):
                raise ValueError("line must be a string")
            sm = ()
            if len(v) == 3:
                if not isinstance(v[2], dict) or not all(
                        isinstance(k, str) and isinstance(x, str) for k, x in v[2].items()):
                    raise ValueError("structured metadata must be an object of strings")
                sm = tuple(sorted(v[2].items()))
            values.append((int(ts), line, sm))
        out.append((labels, values))
    return out


# -- test support shared by tests/test_loki_*.py ------------------------------


class FakeClock:
    """Injected clock + sleep: sleeping advances time and runs hooks (e.g.
    ``server.tick``), so outages of minutes take microseconds."""

    def __init__(self, start: float):
        self.now = start
        self.sleeps: list[float] = []
        self.hooks: list = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for hook in list(self.hooks):
            hook()


def archive_line(seq: int, ts: str, **fields) -> str:
    from exporter.record import dumps_line, new_record

    rec = new_record()
    rec.update(ts=ts, request_id=f"chatcmpl-{seq}", model="tiny", user="alice",
               status="completed", prompt=f"prompt {seq}", output=f"output {seq}")
    rec.update(fields)
    rec.update(seq=seq, prev_hash="0" * 64, hash=f"{seq:064x}")
    return dumps_line(rec) + "\n"


def write_archive(directory, day: str, lines: list[str], mode: str = "a") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"audit-{day}.jsonl", mode, encoding="utf-8") as f:
        f.write("".join(lines))
