"""Property tests for the middleware's stream handling.

- Any chunking of the same SSE body gives the same line (timing fields aside),
  with and without truncation of the kept body.
- Arbitrary bytes as request body, JSON body or SSE body never raise and
  always give a JSON-serialisable line.
"""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from exporter.middleware import capture as middleware_capture
from exporter.middleware import AuditMiddleware, MiddlewareConfig
from exporter.middleware.line import render
from exporter.middleware.writer import LineWriter

TIMING = ("received_at", "finished_at", "latency_seconds", "ttft_seconds")
FUZZ = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(body: bytes, chunks: list[bytes], content_type: bytes, *, max_body: int = 1 << 20,
        path: str = "/v1/chat/completions", tail: int = 65536) -> dict:
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_MIDDLEWARE_FILE": "unused",
                                     "VLLM_AUDIT_API_KEY_SALT": "s",
                                     "VLLM_AUDIT_MIDDLEWARE_MAX_BODY": str(max_body)})
    items = []
    writer = LineWriter(None, None, None, start=False)
    writer.submit = lambda item, size: items.append(item)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type)]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive():
        return {"type": "http.request", "body": body}

    async def send(message):
        pass

    mw = AuditMiddleware(app, config=cfg, writer=writer)
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"x-request-id", b"r")]}
    saved, middleware_capture.STREAM_TAIL_BYTES = middleware_capture.STREAM_TAIL_BYTES, tail
    try:
        asyncio.run(mw(scope, receive, send))
    finally:
        middleware_capture.STREAM_TAIL_BYTES = saved
    [item] = items
    line = render(item, cfg)
    json.dumps(line)  # must always serialise
    return line


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@st.composite
def sse_bodies(draw) -> bytes:
    events = [{"id": "chatcmpl-f", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for piece in draw(st.lists(text, max_size=25)):
        index = draw(st.integers(0, 2))
        events.append({"id": "chatcmpl-f", "choices": [{"index": index, "delta": {"content": piece},
                                                        "finish_reason": None}]})
    events.append({"id": "chatcmpl-f", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if draw(st.booleans()):
        events.append({"id": "chatcmpl-f", "choices": [],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})
    sep = draw(st.sampled_from([b"\n\n", b"\r\n\r\n"]))
    body = b"".join(b"data: " + json.dumps(e, ensure_ascii=draw(st.booleans())).encode() + sep
                    for e in events)
    return body + (b"data: [DONE]" + sep if draw(st.booleans()) else b"")


REQUEST = json.dumps({"model": "tiny", "stream": True, "messages": []}).encode()
SSE = b"text/event-stream"


def strip(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in TIMING}


@FUZZ
@given(sse_bodies(), st.lists(st.integers(0, 1 << 16), max_size=30))
def test_any_chunking_gives_the_same_line(body, cuts):
    assert strip(run(REQUEST, split(body, cuts), SSE)) == strip(run(REQUEST, [body], SSE))


@FUZZ
@given(sse_bodies(), st.lists(st.integers(0, 1 << 16), max_size=30), st.integers(20, 400),
       st.integers(10, 300))
def test_chunking_does_not_matter_under_truncation_either(body, cuts, max_body, tail):
    whole = run(REQUEST, [body], SSE, max_body=max_body, tail=tail)
    chunked = run(REQUEST, split(body, cuts), SSE, max_body=max_body, tail=tail)
    assert strip(chunked) == strip(whole)
    assert whole["response_truncated"] == (len(body) > max_body + tail)
    if whole["response_truncated"]:
        assert whole["content_deltas"] is None


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=600),
       st.sampled_from([SSE, b"application/json", b""]),
       st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"]),
       st.integers(1, 700))
def test_garbage_never_raises(request_body, response_body, content_type, path, max_body):
    line = run(request_body, [response_body], content_type, path=path, max_body=max_body)
    assert line["type"] == "vllm_audit_middleware" and line["status"] in (
        "completed", "incomplete", "error")


@FUZZ
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda o: b"data: " + json.dumps(o).encode() + b"\n\n",
              st.recursive(st.none() | st.booleans() | st.integers() | text,
                           lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.sampled_from(
                               ["choices", "delta", "content", "text", "usage", "index", "error",
                                "id", "type", "response", "finish_reason", "message"]), kids,
                               max_size=4), max_leaves=12))), max_size=12),
    st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses"]))
def test_structured_garbage_events_never_raise(chunks, path):
    line = run(REQUEST, chunks, SSE, path=path)
    assert line["status"] in ("completed", "incomplete", "error")
