"""Hot-path capture of one audited HTTP exchange (stdlib only).

Everything here runs on vLLM's event loop, so it only copies references and
reads clocks; all parsing happens later in the writer thread
(``line``).

Rules:
- ``BoundedBuffer`` keeps the first ``cap`` bytes and, when ``tail`` > 0, the
  last ``tail`` bytes of everything added. What it keeps depends only on the
  concatenated bytes, never on how they were split into chunks, so the audit
  line of a stream does not depend on network chunking.
- A client disconnect counts only when it arrives before the response's final
  body message: uvicorn answers every ``receive()`` after a finished response
  with ``http.disconnect``, which is not an abort.
- A ``send`` that raises marks the exchange aborted; the exception is re-raised
  untouched (it belongs to vLLM / uvicorn).
- The first ``CHUNK_TIMES`` body chunks get a timestamp with their end offset;
  time to first token is mapped from the byte offset of the first content
  event onto these (the first token is always among the first few chunks).
"""

from __future__ import annotations

import asyncio
import time

CHUNK_TIMES = 64
STREAM_TAIL_BYTES = 64 * 1024  # holds the final usage chunk and finish reasons


class BoundedBuffer:
    """First ``cap`` bytes plus the last ``tail`` bytes of a byte stream."""

    __slots__ = ("cap", "tail_cap", "head", "head_len", "tail", "total")

    def __init__(self, cap: int, tail: int = 0) -> None:
        self.cap = cap
        self.tail_cap = tail
        self.head: list[bytes] = []
        self.head_len = 0
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        self.total += n
        room = self.cap - self.head_len
        if n <= room:
            self.head.append(data)  # a reference, no copy
            self.head_len += n
            return
        if room > 0:
            self.head.append(data[:room])
            self.head_len = self.cap
            data = data[room:]
        if self.tail_cap:
            self.tail += data
            # Trim lazily (amortised O(1)); parts() trims to the exact size.
            if len(self.tail) > 2 * self.tail_cap:
                del self.tail[: -self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > self.head_len

    def parts(self) -> tuple[bytes, int, bytes]:
        """``(head, gap, tail)``: gap is the number of bytes lost between them."""
        head = b"".join(self.head)
        tail = bytes(self.tail[-self.tail_cap:]) if self.tail_cap else b""
        gap = self.total - len(head) - len(tail)
        if gap == 0:
            return head + tail, 0, b""
        return head, gap, tail


class Exchange:
    """Raw facts about one request/response, filled in by the ASGI wrappers."""

    __slots__ = (
        "start_wall", "start_perf", "end_perf", "method", "path", "endpoint",
        "client", "request_id", "request_id_generated", "headers", "auth",
        "request", "response", "status_code", "content_type", "chunk_times",
        "response_done", "disconnected", "send_failed", "exception", "_receive", "_send",
    )

    def __init__(self, scope: dict, endpoint: str, max_body: int) -> None:
        self.start_wall = time.time()
        self.start_perf = time.perf_counter()
        self.end_perf: float | None = None
        self.method = scope.get("method")
        self.path = scope.get("path")
        self.endpoint = endpoint
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else None
        self.request_id: str | None = None
        self.request_id_generated = False
        self.headers: dict[bytes, bytes] = {}  # wanted identity headers, raw
        self.auth: bytes | None = None  # raw Authorization value; hashed later, never written
        self.request = BoundedBuffer(max_body)
        self.response = BoundedBuffer(max_body, STREAM_TAIL_BYTES)
        self.status_code: int | None = None
        self.content_type = b""
        self.chunk_times: list[tuple[int, float]] = []
        self.response_done = False
        self.disconnected = False
        self.send_failed = False
        self.exception: str | None = None
        self._receive = None
        self._send = None

    def wrap(self, receive, send):
        self._receive = receive
        self._send = send
        return self.receive, self.send

    async def receive(self):
        message = await self._receive()
        try:
            kind = message.get("type")
            if kind == "http.request":
                self.request.add(message.get("body", b""))
            elif kind == "http.disconnect" and not self.response_done:
                self.disconnected = True
        except Exception:  # noqa: BLE001 - fail open, the message goes on untouched
            pass
        return message

    async def send(self, message) -> None:
        try:
            self._observe(message)
        except Exception:  # noqa: BLE001 - fail open
            pass
        try:
            await self._send(message)
        except BaseException:
            self.send_failed = True
            raise

    def _observe(self, message) -> None:
        kind = message.get("type")
        if kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.response.add(body)
                if len(self.chunk_times) < CHUNK_TIMES:
                    self.chunk_times.append((self.response.total, time.perf_counter()))
            if not message.get("more_body", False):
                self.response_done = True
                self.end_perf = time.perf_counter()
        elif kind == "http.response.start":
            self.status_code = message.get("status")
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type":
                    self.content_type = value
                    break

    def app_raised(self, exc: BaseException) -> None:
        """Note an exception leaving the app (the caller re-raises it)."""
        if isinstance(exc, asyncio.CancelledError):
            self.disconnected = True  # the request's task was cancelled: nobody gets an answer
        else:
            self.exception = f"{type(exc).__name__}: {exc}"[:500]

    def finish(self) -> None:
        if self.end_perf is None:
            self.end_perf = time.perf_counter()

    def size(self) -> int:
        return self.request.head_len + self.response.head_len + len(self.response.tail) + 512
