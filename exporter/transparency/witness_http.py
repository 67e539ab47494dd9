"""The witness over HTTP: ``POST /add-checkpoint`` and the monitoring API.

Stdlib ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive (the spec asks
witnesses to support it); the protocol and its state are
:class:`exporter.transparency.witness.Witness`. ``GET /<sha256(origin)
hex>/checkpoint`` serves the latest cosigned checkpoint of a log, with the
log's signatures and this witness's cosignature (tlog-witness "Monitor
Retrieval Mechanism"); 404 for a log it never cosigned.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .witness import MAX_BODY, Witness, WitnessError, origin_hash


def make_handler(witness: Witness, log: Callable[[str], None]):
    by_hash = {origin_hash(o): o for o in witness.logs}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the spec recommends
        timeout = 30  # seconds a connection may idle or dribble: a slow client cannot hold a thread forever
        server_version = "vllm-audit-witness"

        def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path != "/add-checkpoint":
                return self._send(404, "not found\n")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                return self._send(411, "Content-Length required\n")
            if int(length) > MAX_BODY:
                self.close_connection = True
                return self._send(413, "request body too large\n")
            body = self.rfile.read(int(length))
            try:
                line = witness.add_checkpoint(body)
            except WitnessError as exc:
                log(f"add-checkpoint {exc.status}: {exc}")
                return self._send(exc.status, exc.body, exc.content_type)
            except OSError as exc:  # the state could not be made durable: no cosignature without it
                log(f"add-checkpoint 503: cannot persist the state: {exc}")
                return self._send(503, "cannot persist the witness state\n")
            log(f"add-checkpoint 200: cosigned {line.split(' ', 2)[1]}")
            self._send(200, line)

        def do_GET(self):  # noqa: N802
            parts = self.path.strip("/").split("/")
            origin = by_hash.get(parts[0]) if len(parts) == 2 and parts[1] == "checkpoint" else None
            latest = witness.latest(origin) if origin else None
            if latest is None:
                return self._send(404, "not found\n")
            self._send(200, latest)

        def log_message(self, format, *args):  # one line per request is done above
            pass

    return Handler


def serve(witness: Witness, host: str, port: int, *, ready: Callable[[ThreadingHTTPServer], None] | None = None,
          log: Callable[[str], None] | None = None) -> ThreadingHTTPServer:
    """An HTTP server for ``witness`` (not started: call ``serve_forever``)."""
    def stderr(msg: str) -> None:
        print(f"witness: {msg}", file=sys.stderr, flush=True)

    server = ThreadingHTTPServer((host, port), make_handler(witness, log or stderr))
    server.daemon_threads = True
    if ready:
        ready(server)
    return server
