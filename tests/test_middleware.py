"""AuditMiddleware driven by fake ASGI apps; each test asserts the exact line written."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading

import pytest

from exporter.middleware import capture as middleware_capture
from exporter.middleware import DEFAULT_SALT, AuditMiddleware, MiddlewareConfig
from exporter.middleware.line import context_rejection, fallback, render
from exporter.middleware.writer import FileSink, LineWriter

T0 = 1795341600.0  # 2026-11-22T10:00:00Z
CHAT = "/v1/chat/completions"
JSON_CT = [(b"content-type", b"application/json")]
SSE_CT = [(b"content-type", b"text/event-stream; charset=utf-8")]


class FakeClock:
    """Stands in for the ``time`` module inside the capture code; tests advance it."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return T0 + self.now

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemorySink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.data.decode().splitlines()]


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(middleware_capture, "time", fake)
    return fake


def make(app, env=None, *, max_items=100, sink=None):
    """Middleware with a hand-driven writer over a memory sink."""
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_MIDDLEWARE_FILE": "unused",
                                     "VLLM_AUDIT_API_KEY_SALT": "pepper", **(env or {})})
    sink = sink or MemorySink()
    writer = LineWriter(sink, lambda ex: render(ex, cfg), fallback, max_items=max_items,
                        clock=lambda: T0, start=False)
    return AuditMiddleware(app, config=cfg, writer=writer), writer, sink


def call(mw, body: bytes | dict, *, path=CHAT, method="POST", headers=(), after=()):
    """Run one request; ``after`` are receive messages once the body is consumed."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    incoming = [{"type": "http.request", "body": body[:7], "more_body": True},
                {"type": "http.request", "body": body[7:], "more_body": False}, *after]
    sent = []
    scope = {"type": "http", "method": method, "path": path, "client": ("10.0.0.9", 5555),
             "headers": [(k.encode(), v.encode()) for k, v in headers]}

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return scope, sent


def written(writer, sink) -> list[dict]:
    writer.drain()
    return sink.lines()


def json_app(status, payload, clock=None, delay=0.25):
    """Reads the body, waits ``delay`` on the fake clock, answers one JSON body."""
    seen = {}

    async def app(scope, receive, send):
        seen["scope"] = scope
        while (await receive()).get("more_body"):
            pass
        if clock:
            clock.advance(delay)
        await send({"type": "http.response.start", "status": status, "headers": JSON_CT})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
    app.seen = seen
    return app


def sse(*objs) -> list[bytes]:
    return [b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs]


def sse_app(chunks, clock=None, step=0.1, disconnect_after=None):
    """Streams ``chunks``; ``disconnect_after=k`` polls receive after k chunks and stops
    on a disconnect, the way Starlette's StreamingResponse does."""
    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": SSE_CT})
        for i, chunk in enumerate(chunks):
            if disconnect_after == i and (await receive())["type"] == "http.disconnect":
                return
            if clock:
                clock.advance(step)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


def chat_chunk(content=None, finish=None, usage=None, role=None, index=0):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    obj = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "model": "tiny",
           "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        obj = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "model": "tiny",
               "choices": [], "usage": usage}
    return obj


CHAT_BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
             "max_completion_tokens": 16, "max_tokens": 99, "temperature": 0.0, "n": 1,
             "response_format": {"type": "json_object"}}
CHAT_RESPONSE = {"id": "chatcmpl-r1", "object": "chat.completion", "model": "tiny",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def expected(**over) -> dict:
    line = {
        "type": "vllm_audit_middleware", "v": 1,
        "request_id": "rid-1", "request_id_generated": False, "response_id": "chatcmpl-r1",
        "received_at": "2026-11-22T10:00:00.000Z", "finished_at": "2026-11-22T10:00:00.250Z",
        "method": "POST", "path": CHAT, "endpoint": "chat", "client": "10.0.0.9:5555",
        "user": None, "identity": {"headers": {}, "user_field": None, "api_key_hash": None},
        "status_code": 200, "status": "completed", "error": None, "model": "tiny", "stream": False,
        "params": {"max_tokens": 16, "temperature": 0.0, "n": 1, "json_mode": True},
        "prompt": [{"role": "user", "content": "hi"}],
        "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "usage_source": "response", "empty_response": False, "latency_seconds": 0.25,
        "ttft_seconds": None, "aborted": False, "rejected_prompt_tokens": None,
        "content_deltas": None, "request_truncated": False, "response_truncated": False,
        "identity_source": None,
    }
    line.update(over)
    return line


RID = [("x-request-id", "rid-1")]


def test_non_streaming_chat_line(clock):
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE, clock))
    call(mw, CHAT_BODY, headers=RID)
    assert written(writer, sink) == [expected()]


def test_response_passes_through_unchanged_and_scope_is_not_copied_with_client_id(clock):
    app = json_app(200, CHAT_RESPONSE, clock)
    mw, writer, sink = make(app)
    scope, sent = call(mw, CHAT_BODY, headers=RID)
    assert app.seen["scope"] is scope
    assert sent == [{"type": "http.response.start", "status": 200, "headers": JSON_CT},
                    {"type": "http.response.body", "body": json.dumps(CHAT_RESPONSE).encode()}]


def test_missing_request_id_is_injected_and_recorded(clock):
    app = json_app(200, CHAT_RESPONSE, clock)
    mw, writer, sink = make(app)
    scope, _ = call(mw, CHAT_BODY, headers=[("x-openwebui-user-name", "bob")])
    injected = app.seen["scope"]["headers"]
    assert injected[:-1] == scope["headers"] == [(b"x-openwebui-user-name", b"bob")]
    name, value = injected[-1]
    assert name == b"x-request-id" and len(value) == 32 and int(value, 16) >= 0
    assert written(writer, sink) == [expected(
        request_id=value.decode(), request_id_generated=True, user="bob", identity_source="header",
        identity={"headers": {"x-openwebui-user-name": "bob"}, "user_field": None,
                  "api_key_hash": None})]


@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/metrics", "GET"),
                                         (CHAT, "GET"), ("/v1/chat/completions/", "POST"),
                                         ("/tokenize", "POST")])
def test_other_requests_pass_straight_through(path, method):
    calls = []

    async def app(scope, receive, send):
        calls.append((scope, receive, send))

    mw, writer, sink = make(app)
    scope = {"type": "http", "method": method, "path": path, "headers": []}

    async def receive():
        return {}

    async def send(message):
        pass

    asyncio.run(mw(scope, receive, send))
    assert calls == [(scope, receive, send)]
    assert scope["headers"] == [] and len(writer.queue) == 0


def test_stream_with_usage_chunk(clock):
    chunks = sse(chat_chunk("", role="assistant"), chat_chunk("Hel"), chat_chunk("lo"),
                 chat_chunk("", finish="stop"),
                 chat_chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
                 b"[DONE]")
    mw, writer, sink = make(sse_app(chunks, clock))
    call(mw, {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}, headers=RID)
    assert written(writer, sink) == [expected(
        response_id="chatcmpl-abc", stream=True, finished_at="2026-11-22T10:00:00.600Z",
        latency_seconds=0.6, ttft_seconds=0.2, content_deltas=2,
        choices=[{"index": 0, "text": "Hello", "finish_reason": "stop"}],
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})]


def test_stream_without_usage_leaves_tokens_unknown_and_counts_deltas(clock):
    chunks = sse(chat_chunk("", role="assistant"), chat_chunk("a"), chat_chunk("b"),
                 chat_chunk("c", finish="length"), b"[DONE]")
    mw, writer, sink = make(sse_app(chunks, clock))
    call(mw, {**CHAT_BODY, "stream": True}, headers=RID)
    assert written(writer, sink) == [expected(
        response_id="chatcmpl-abc", stream=True, finished_at="2026-11-22T10:00:00.500Z",
        latency_seconds=0.5, ttft_seconds=0.2, content_deltas=3, usage=None, usage_source=None,
        choices=[{"index": 0, "text": "abc", "finish_reason": "length"}])]


def test_stream_without_done_is_incomplete(clock):
    mw, writer, sink = make(sse_app(sse(chat_chunk("a")), clock))
    call(mw, {**CHAT_BODY, "stream": True}, headers=RID)
    [line] = written(writer, sink)
    assert (line["status"], line["empty_response"], line["choices"]) == (
        "incomplete", None, [{"index": 0, "text": "a", "finish_reason": None}])


def test_error_event_inside_a_stream(clock):
    chunks = sse(chat_chunk("a"), {"error": {"message": "engine died", "type": "x", "code": 500}})
    mw, writer, sink = make(sse_app(chunks, clock))
    call(mw, {**CHAT_BODY, "stream": True}, headers=RID)
    [line] = written(writer, sink)
    assert (line["status"], line["error"], line["status_code"]) == ("error", "engine died", 200)


CONTEXT_400 = {"error": {"message": (
    "This model's maximum context length is 512 tokens. However, your prompt contains 600 "
    "input tokens, which exceeds this limit even without any output tokens. Please reduce "
    "the length of the input prompt."), "type": "BadRequestError", "param": "input_tokens",
    "code": 400}}


def test_context_length_400_is_rejected_with_stated_tokens(clock):
    mw, writer, sink = make(json_app(400, CONTEXT_400, clock))
    call(mw, CHAT_BODY, headers=RID)
    assert written(writer, sink) == [expected(
        response_id=None, status_code=400, status="rejected", choices=None, usage=None,
        empty_response=None,
        usage_source=None, error=CONTEXT_400["error"]["message"], rejected_prompt_tokens=600)]


@pytest.mark.parametrize("message,result", [
    ("This model's maximum context length is 512 tokens. However, your prompt contains at "
     "least 513 input tokens, which exceeds", (True, 513)),
    # vLLM 0.28 (tests/fixtures/vllm-0.28.0/middleware/responses.jsonl, chat_over_context)
    ("This model's maximum context length is 512 tokens. However, you requested 8 output tokens "
     "and your prompt contains at least 505 input tokens, for a total of at least 513 tokens.",
     (True, 505)),
    ("This model's maximum context length is 512 tokens. However, you requested 8 output tokens "
     "and your prompt contains 600 input tokens, for a total of 608 tokens.", (True, 600)),
    ("This model's maximum context length is 512 tokens. However, you requested 8 output tokens "
     "and your prompt contains 3000 characters (more than 2016 characters", (True, None)),
    ("This model's maximum context length is 512 tokens. However, your request has 600 input "
     "tokens. Please reduce", (True, 600)),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
     "(4000 in the messages, 1000 in the completion).", (True, 4000)),
    ("The decoder prompt (length 700) is longer than the maximum model length of 512. Make",
     (True, 700)),
    ("The decoder prompt (length 512) plus the number of requested output tokens (at least 1) "
     "is longer than the maximum model length of 512.", (True, 512)),
    ("This model's maximum context length is 512 tokens. However, your prompt contains 9000 "
     "characters (more than 2048 characters, which is", (True, None)),
    ("temperature must be non-negative", (False, None)),
    (None, (False, None)),
])
def test_context_rejection_wordings(message, result):
    assert context_rejection(message) == result


def test_server_error_500(clock):
    payload = {"error": {"message": "EngineCore died", "type": "InternalServerError", "code": 500}}
    mw, writer, sink = make(json_app(500, payload, clock))
    call(mw, CHAT_BODY, headers=RID)
    assert written(writer, sink) == [expected(
        response_id=None, status_code=500, status="error", error="EngineCore died",
        empty_response=None,
        choices=None, usage=None, usage_source=None)]


def test_disconnect_mid_stream_is_aborted(clock):
    chunks = sse(chat_chunk("", role="assistant"), chat_chunk("a"), chat_chunk("b"), b"[DONE]")
    mw, writer, sink = make(sse_app(chunks, clock, disconnect_after=2))
    call(mw, {**CHAT_BODY, "stream": True}, headers=RID, after=[{"type": "http.disconnect"}])
    assert written(writer, sink) == [expected(
        response_id="chatcmpl-abc", stream=True, status="aborted", aborted=True,
        finished_at="2026-11-22T10:00:00.200Z", latency_seconds=0.2, ttft_seconds=0.2,
        content_deltas=1, usage=None, usage_source=None, empty_response=None,
        choices=[{"index": 0, "text": "a", "finish_reason": None}])]


def test_disconnect_after_the_response_is_not_an_abort(clock):
    async def app(scope, receive, send):
        await json_app(200, CHAT_RESPONSE, clock)(scope, receive, send)
        assert (await receive())["type"] == "http.disconnect"  # uvicorn after a finished response

    mw, writer, sink = make(app)
    call(mw, CHAT_BODY, headers=RID)
    assert written(writer, sink) == [expected()]


def test_failing_send_is_aborted_and_the_error_reaches_the_server(clock):
    mw, writer, sink = make(sse_app(sse(chat_chunk("a"), b"[DONE]"), clock))

    async def run():
        async def receive():
            return {"type": "http.request", "body": json.dumps(CHAT_BODY).encode()}

        async def send(message):
            if message["type"] == "http.response.body":
                raise OSError("connection reset")

        await mw({"type": "http", "method": "POST", "path": CHAT, "headers": []}, receive, send)

    with pytest.raises(OSError, match="connection reset"):
        asyncio.run(run())
    [line] = written(writer, sink)
    assert (line["status"], line["aborted"], line["client"]) == ("aborted", True, None)


def test_app_exception_is_reraised_and_recorded(clock):
    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        raise RuntimeError("boom")

    mw, writer, sink = make(app)
    with pytest.raises(RuntimeError, match="boom"):
        call(mw, CHAT_BODY, headers=RID)
    [line] = written(writer, sink)
    assert (line["status"], line["error"], line["status_code"], line["model"]) == (
        "error", "RuntimeError: boom", None, "tiny")


def test_empty_non_streaming_response(clock):
    payload = json.loads(json.dumps(CHAT_RESPONSE))
    payload["choices"][0]["message"]["content"] = ""
    mw, writer, sink = make(json_app(200, payload, clock))
    call(mw, CHAT_BODY, headers=RID)
    assert written(writer, sink) == [expected(
        empty_response=True, choices=[{"index": 0, "text": "", "finish_reason": "stop"}])]


def test_tool_call_with_null_content_is_not_empty(clock):
    payload = json.loads(json.dumps(CHAT_RESPONSE))
    payload["choices"][0]["message"] = {"role": "assistant", "content": None,
                                        "tool_calls": [{"id": "t", "type": "function"}]}
    payload["choices"][0]["finish_reason"] = "tool_calls"
    mw, writer, sink = make(json_app(200, payload, clock))
    call(mw, CHAT_BODY, headers=RID)
    [line] = written(writer, sink)
    assert (line["empty_response"], line["choices"]) == (False, [
        {"index": 0, "text": None, "finish_reason": "tool_calls", "tool_calls": True}])


OWUI = [("x-openwebui-user-name", "Ana"), ("x-openwebui-user-email", "ana@example.org"),
        ("x-openwebui-user-id", "u-1"), ("x-openwebui-chat-id", "c-9"), ("x-other", "no")]
OWUI_HEADERS = {"x-openwebui-user-name": "Ana", "x-openwebui-user-email": "ana@example.org",
                "x-openwebui-user-id": "u-1", "x-openwebui-chat-id": "c-9"}
OWUI_SESSION = {"chat_id": "c-9", "message_id": None, "user_message_id": None, "task": None}


def key_hash(key: str, salt: str = "pepper") -> str:
    return hmac.new(salt.encode(), key.encode(), hashlib.sha256).hexdigest()


def identity_line(env, headers, body=CHAT_BODY):
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE), env)
    call(mw, body, headers=RID + headers)
    [line] = written(writer, sink)
    return line, sink.data.decode()


def test_trusted_headers_give_user_in_configured_order():
    line, _ = identity_line({}, OWUI)
    assert (line["user"], line["identity_source"], line["identity"]) == ("ana@example.org", "header", {
        "headers": OWUI_HEADERS, "user_field": None, "api_key_hash": None, "openwebui": OWUI_SESSION})
    line, _ = identity_line({"VLLM_AUDIT_USER_HEADERS": "X-OpenWebUI-User-Id"}, OWUI)
    assert line["user"] == "u-1"


def test_secret_header_required_when_configured():
    env = {"VLLM_AUDIT_IDENTITY_SECRET": "s3cr3t", "VLLM_AUDIT_IDENTITY_SECRET_HEADER": "X-Proxy-Auth"}
    body = {**CHAT_BODY, "user": "from-body"}
    line, raw = identity_line(env, OWUI + [("x-proxy-auth", "s3cr3t")], body)
    assert (line["user"], line["identity_source"], line["identity"]) == ("ana@example.org", "header_secret", {
        "headers": OWUI_HEADERS, "user_field": "from-body", "api_key_hash": None, "openwebui": OWUI_SESSION})
    assert "s3cr3t" not in raw
    line, raw = identity_line(env, OWUI + [("x-proxy-auth", "guess")], body)
    assert (line["user"], line["identity_source"], line["identity"]) == ("from-body", "user_field", {
        "headers": {}, "user_field": "from-body", "api_key_hash": None,
        "untrusted_headers": OWUI_HEADERS})
    line, _ = identity_line(env, OWUI, body)  # no secret header at all
    assert line["user"] == "from-body" and line["identity"]["headers"] == {}


def test_api_key_hash_is_salted_and_the_key_is_never_written():
    auth = [("authorization", "Bearer sk-live-123")]
    line, raw = identity_line({}, auth)
    assert (line["user"], line["identity_source"]) == ("key:" + key_hash("sk-live-123")[:16], "api_key")
    assert line["identity"] == {"headers": {}, "user_field": None,
                                "api_key_hash": key_hash("sk-live-123")}
    assert "sk-live-123" not in raw
    line, _ = identity_line({"VLLM_AUDIT_API_KEY_SALT": ""}, auth)
    assert line["identity"]["api_key_hash"] == key_hash("sk-live-123", DEFAULT_SALT)
    line, _ = identity_line({}, [("authorization", "Basic Zm9vOmJhcg==")])
    assert (line["user"], line["identity"]["api_key_hash"]) == (None, None)


def test_user_field_beats_key_and_header_beats_user_field():
    body = {**CHAT_BODY, "user": "openai-user"}
    line, _ = identity_line({}, [("authorization", "Bearer k")], body)
    assert line["user"] == "openai-user"
    line, _ = identity_line({}, [("x-openwebui-user-name", "Ana")], body)
    assert line["user"] == "Ana"


def test_queue_overflow_writes_one_dropped_marker(clock):
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE, clock), max_items=2)
    for _ in range(5):
        call(mw, CHAT_BODY, headers=RID)
    assert writer.dropped == 3
    lines = written(writer, sink)
    assert lines[0] == {"type": "vllm_audit_middleware_dropped", "v": 1, "dropped": 3,
                        "at": "2026-11-22T10:00:00.000Z"}
    assert [line["type"] for line in lines[1:]] == ["vllm_audit_middleware"] * 2
    call(mw, CHAT_BODY, headers=RID)
    assert [line["type"] for line in written(writer, sink)[3:]] == ["vllm_audit_middleware"]


class BlockingSink(MemorySink):
    """A disk that hangs: write() blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data: bytes) -> None:
        self.entered.set()
        self.release.wait()
        super().write(data)


def test_blocked_writer_does_not_slow_requests():
    sink = BlockingSink()
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_MIDDLEWARE_FILE": "unused"})
    writer = LineWriter(sink, lambda ex: render(ex, cfg), fallback, max_items=10)
    mw = AuditMiddleware(json_app(200, CHAT_RESPONSE), config=cfg, writer=writer)
    try:
        call(mw, CHAT_BODY)
        assert sink.entered.wait(10)  # the writer thread is now stuck inside write()

        async def many():
            body = json.dumps(CHAT_BODY).encode()
            for _ in range(200):
                sent = []

                async def receive():
                    return {"type": "http.request", "body": body}

                async def send(message, sent=sent):
                    sent.append(message)

                await mw({"type": "http", "method": "POST", "path": CHAT, "headers": []},
                         receive, send)
                assert sent[0]["status"] == 200

        # If a request waited on the writer this would hang; the timeout turns that into a failure.
        asyncio.run(asyncio.wait_for(many(), 10))
        assert writer.dropped == 190 and len(writer.queue) == 10
    finally:
        sink.release.set()
        writer.close(10)
    lines = sink.lines()
    assert [line["type"] for line in lines].count("vllm_audit_middleware") == 11
    assert [line.get("dropped") for line in lines if "dropped" in line] == [190]


def test_internal_failures_fail_open(clock):
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE, clock))

    def broken_submit(item, size):
        raise ValueError("bug")

    writer.submit = broken_submit
    _, sent = call(mw, CHAT_BODY, headers=RID)
    assert sent[0]["status"] == 200 and mw.errors == 1

    mw, writer, sink = make(json_app(200, CHAT_RESPONSE, clock))
    writer.render = lambda ex: 1 / 0
    call(mw, CHAT_BODY, headers=RID)
    [line] = written(writer, sink)
    assert line == {"type": "vllm_audit_middleware", "v": 1, "request_id": "rid-1",
                    "request_id_generated": False, "received_at": line["received_at"],
                    "path": CHAT, "status_code": 200, "status": "error", "error": None,
                    "render_error": "ZeroDivisionError"}


def test_without_file_env_passes_through_and_warns_once(caplog):
    app = json_app(200, CHAT_RESPONSE)
    with caplog.at_level(logging.WARNING, logger="exporter.middleware"):
        mw = AuditMiddleware(app, config=MiddlewareConfig.from_env({}))
    assert [r.getMessage() for r in caplog.records] == [
        "VLLM_AUDIT_MIDDLEWARE_FILE is unset: the audit middleware passes requests through "
        "and writes nothing"]
    scope, _ = call(mw, CHAT_BODY)
    assert app.seen["scope"] is scope and mw.writer is None


def test_truncated_bodies_are_flagged_and_stream_tail_keeps_usage(clock):
    filler = [chat_chunk("x" * 50) for _ in range(40)]
    chunks = sse(chat_chunk("", role="assistant"), *filler, chat_chunk("", finish="stop"),
                 chat_chunk(usage={"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49}),
                 b"[DONE]")
    mw, writer, sink = make(sse_app(chunks, clock), {"VLLM_AUDIT_MIDDLEWARE_MAX_BODY": "2000"})
    monkey_tail = middleware_capture.STREAM_TAIL_BYTES
    try:
        middleware_capture.STREAM_TAIL_BYTES = 1000
        call(mw, {**CHAT_BODY, "stream": True, "pad": "y" * 3000}, headers=RID)
    finally:
        middleware_capture.STREAM_TAIL_BYTES = monkey_tail
    [line] = written(writer, sink)
    assert (line["request_truncated"], line["response_truncated"], line["model"],
            line["content_deltas"], line["status"], line["usage"]) == (
        True, True, None, None, "completed",
        {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49})
    assert line["choices"][0]["finish_reason"] == "stop"
    assert 0 < len(line["choices"][0]["text"]) < 40 * 50


def test_completions_stream_with_two_choices(clock):
    def chunk(i, text, finish=None):
        return {"id": "cmpl-rid-1", "object": "text_completion",
                "choices": [{"index": i, "text": text, "finish_reason": finish}]}

    chunks = sse(chunk(0, "a"), chunk(1, "b"), chunk(1, "c", "stop"), chunk(0, "", "length"),
                 b"[DONE]")
    mw, writer, sink = make(sse_app(chunks, clock))
    call(mw, {"model": "tiny", "prompt": "once", "n": 2, "stream": True},
         path="/v1/completions", headers=RID)
    [line] = written(writer, sink)
    assert (line["endpoint"], line["prompt"], line["response_id"], line["choices"],
            line["params"], line["status"], line["ttft_seconds"]) == (
        "completion", "once", "cmpl-rid-1",
        [{"index": 0, "text": "a", "finish_reason": "length"},
         {"index": 1, "text": "bc", "finish_reason": "stop"}],
        {"max_tokens": None, "temperature": None, "n": 2, "json_mode": False}, "completed", 0.1)


def test_responses_api_and_embeddings(clock):
    resp = {"id": "resp_1", "object": "response", "status": "completed",
            "output": [{"type": "reasoning", "content": []},
                       {"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
            "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}
    mw, writer, sink = make(json_app(200, resp, clock))
    call(mw, {"model": "tiny", "input": "q", "max_output_tokens": 8,
              "text": {"format": {"type": "json_schema"}}}, path="/v1/responses", headers=RID)
    [line] = written(writer, sink)
    assert (line["prompt"], line["choices"], line["usage"], line["params"]) == (
        "q", [{"index": 0, "text": "ok", "finish_reason": None}],
        {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        {"max_tokens": 8, "temperature": None, "n": None, "json_mode": True})
    emb = {"id": "embd-1", "data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    mw, writer, sink = make(json_app(200, emb, clock))
    call(mw, {"model": "tiny", "input": ["a"]}, path="/v1/embeddings", headers=RID)
    [line] = written(writer, sink)
    assert (line["choices"], line["empty_response"], line["status"], line["usage"]) == (
        None, None, "completed", {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": 3})


def test_file_sink_rotates_by_rename(tmp_path):
    path = tmp_path / "mw.jsonl"
    sink = FileSink(str(path), max_bytes=100)
    for i in range(5):
        sink.write(b'{"n":%d,"pad":"%s"}\n' % (i, b"p" * 30))
    sink.close()
    rotated = (tmp_path / "mw.jsonl.1").read_bytes().splitlines()
    current = path.read_bytes().splitlines()
    assert [json.loads(x)["n"] for x in rotated + current] == [2, 3, 4] and len(current) == 1
    assert path.stat().st_mode & 0o777 == 0o640


def test_file_sink_reopens_when_the_file_is_moved_away(tmp_path):
    path = tmp_path / "mw.jsonl"
    sink = FileSink(str(path), max_bytes=1 << 20)
    sink.write(b"1\n")
    path.rename(tmp_path / "elsewhere")
    sink.write(b"2\n")
    sink.close()
    assert path.read_bytes() == b"2\n" and (tmp_path / "elsewhere").read_bytes() == b"1\n"


def test_writer_thread_writes_file_end_to_end(tmp_path, clock):
    path = tmp_path / "mw.jsonl"
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_MIDDLEWARE_FILE": str(path)})
    mw = AuditMiddleware(json_app(200, CHAT_RESPONSE, clock), config=cfg)
    call(mw, CHAT_BODY, headers=RID)
    mw.writer.close(10)
    [line] = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["request_id"] == "rid-1" and line["usage"]["total_tokens"] == 8


def test_lone_surrogates_and_bad_utf8_still_give_valid_json_lines(clock):
    payload = json.loads(json.dumps(CHAT_RESPONSE))
    payload["choices"][0]["message"]["content"] = "\ud800 caf\u00e9 \ufffd"
    mw, writer, sink = make(json_app(200, payload, clock))
    call(mw, {**CHAT_BODY, "user": "\udcff"}, headers=RID + [("x-openwebui-user-name", "Jos\u00e9")])
    [line] = written(writer, sink)  # sink.lines() decodes strict UTF-8
    assert line["choices"][0]["text"] == "\ud800 caf\u00e9 \ufffd"
    assert (line["identity"]["user_field"], line["user"]) == ("\udcff", "Jos\u00e9")


def test_write_errors_are_counted_and_reported_as_dropped(clock):
    class FailingOnce(MemorySink):
        failed = False

        def write(self, data):
            if not self.failed:
                self.failed = True
                raise OSError("disk full")
            super().write(data)

    mw, writer, sink = make(json_app(200, CHAT_RESPONSE, clock), sink=FailingOnce())
    call(mw, CHAT_BODY, headers=RID)
    writer.drain()
    call(mw, CHAT_BODY, headers=RID)
    lines = written(writer, sink)
    assert (writer.write_errors, lines[0]["type"], lines[0]["dropped"], len(lines)) == (
        1, "vllm_audit_middleware_dropped", 1, 2)


def test_empty_header_lists_mean_the_defaults():
    # compose.yaml passes `${VLLM_AUDIT_USER_HEADERS:-}` as "" when .env leaves it unset.
    line, _ = identity_line({"VLLM_AUDIT_USER_HEADERS": "", "VLLM_AUDIT_TRUSTED_HEADERS": " "}, OWUI)
    assert (line["user"], line["identity_source"]) == ("ana@example.org", "header")
    assert line["identity"]["headers"] == OWUI_HEADERS
