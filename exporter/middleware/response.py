"""Parse a captured OpenAI-style response body: JSON or SSE stream (pure, stdlib only).

``parse_response(endpoint, content_type, head, gap, tail)`` returns a
``Response`` with what the body says. Rules:
- Never raises on any input; garbage yields ``None`` fields and counts in
  ``garbage`` (events that were not JSON objects).
- Streams: events are blank-line separated blocks; ``data:`` lines of one
  block are joined with newlines; ``data: [DONE]`` ends an OpenAI stream.
  When bytes were lost in the middle (``gap`` > 0) the partial event at the end
  of ``head`` and the partial one at the start of ``tail`` are skipped; the
  output text then misses the gap and ``content_deltas`` is ``None``.
- Usage comes only from a ``usage`` object in the body or a stream chunk (the
  last one wins); otherwise it stays ``None``: a count of deltas is recorded
  separately (``content_deltas``) and is never passed off as token usage.
- ``first_content_end``: byte offset just past the first event that carries
  content (text, reasoning or tool-call delta), for time to first token.
- Errors: a JSON body ``{"error": {"message": …}}`` / ``{"error": "…"}`` /
  ``{"message": …}`` / FastAPI ``{"detail": …}``, or an ``error`` event in a
  stream, gives ``error``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_USAGE_TAIL = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')
_ID_HEAD = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,200})"')


@dataclass
class Response:
    response_id: str | None = None
    choices: dict = field(default_factory=dict)  # index -> {"text": [...], "finish_reason", "tool_calls"}
    usage: dict | None = None
    error: str | None = None
    done: bool = False  # [DONE] or response.completed seen, or a complete JSON body
    content_deltas: int | None = None
    first_content_end: int | None = None
    garbage: int = 0

    def choice_list(self) -> list[dict] | None:
        if not self.choices:
            return None
        out = []
        for index in sorted(self.choices):
            acc = self.choices[index]
            text = acc["text"]
            item = {"index": index, "text": None if text is None else "".join(text),
                    "finish_reason": acc["finish_reason"]}
            if acc["tool_calls"]:
                item["tool_calls"] = True
            out.append(item)
        return out


def error_message(body) -> str | None:
    """The human-readable message of an OpenAI / vLLM / FastAPI error body."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    if isinstance(body.get("message"), str):
        return body["message"]
    if "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)[:2000]
    return None


def normalize_usage(usage) -> dict | None:
    """OpenAI chat/completions or Responses (``input_tokens``) usage → one shape."""
    if not isinstance(usage, dict):
        return None

    def count(*names):
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return {"prompt_tokens": count("prompt_tokens", "input_tokens"),
            "completion_tokens": count("completion_tokens", "output_tokens"),
            "total_tokens": count("total_tokens")}


def _choice(resp: Response, index) -> dict:
    if not isinstance(index, int) or isinstance(index, bool):
        index = 0
    acc = resp.choices.get(index)
    if acc is None:
        acc = resp.choices[index] = {"text": [], "finish_reason": None, "tool_calls": False}
    return acc


def _apply_json_body(resp: Response, endpoint: str, body) -> None:
    """A complete non-streaming response body."""
    if not isinstance(body, dict):
        resp.garbage += 1
        return
    resp.error = error_message(body)
    if isinstance(body.get("id"), str):
        resp.response_id = body["id"]
    resp.usage = normalize_usage(body.get("usage"))
    if endpoint == "responses":
        texts, has_output = [], False
        for item in body.get("output") or ():
            if isinstance(item, dict) and item.get("type") == "message":
                has_output = True
                for part in item.get("content") or ():
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        texts.append(part["text"])
            elif isinstance(item, dict) and item.get("type") == "function_call":
                _choice(resp, 0)["tool_calls"] = True
        if has_output or resp.choices:
            _choice(resp, 0)["text"] = texts
        return
    for ch in body.get("choices") or ():
        if not isinstance(ch, dict):
            continue
        acc = _choice(resp, ch.get("index", 0))
        if endpoint == "chat":
            msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
            content = msg.get("content")
            acc["text"] = [content] if isinstance(content, str) else None
            acc["tool_calls"] = bool(msg.get("tool_calls"))
        else:
            text = ch.get("text")
            acc["text"] = [text] if isinstance(text, str) else None
        if isinstance(ch.get("finish_reason"), str):
            acc["finish_reason"] = ch["finish_reason"]


def _apply_event(resp: Response, endpoint: str, obj, end: int) -> None:
    """One SSE ``data:`` payload (already JSON-decoded)."""
    if not isinstance(obj, dict):
        resp.garbage += 1
        return
    if "error" in obj:
        resp.error = error_message(obj) or resp.error
    if resp.response_id is None and isinstance(obj.get("id"), str):
        resp.response_id = obj["id"]
    if obj.get("usage") is not None:
        resp.usage = normalize_usage(obj["usage"])
    carried = False
    if endpoint == "responses":
        kind = obj.get("type")
        if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            _choice(resp, 0)["text"].append(obj["delta"])
            carried = bool(obj["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            inner = obj.get("response") if isinstance(obj.get("response"), dict) else {}
            if isinstance(inner.get("id"), str):
                resp.response_id = inner["id"]
            if inner.get("usage") is not None:
                resp.usage = normalize_usage(inner["usage"])
            resp.done = kind == "response.completed"
        elif kind == "response.created" and isinstance(obj.get("response"), dict):
            rid = obj["response"].get("id")
            resp.response_id = rid if isinstance(rid, str) else resp.response_id
    else:
        for ch in obj.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            acc = _choice(resp, ch.get("index", 0))
            if endpoint == "chat":
                delta = ch.get("delta") if isinstance(ch.get("delta"), dict) else {}
                text = delta.get("content")
                if delta.get("tool_calls"):
                    acc["tool_calls"] = carried = True
                if delta.get("reasoning_content") or delta.get("reasoning"):
                    carried = True
            else:
                text = ch.get("text")
            if isinstance(text, str) and text:
                acc["text"].append(text)
                carried = True
            if isinstance(ch.get("finish_reason"), str):
                acc["finish_reason"] = ch["finish_reason"]
    if carried:
        if resp.content_deltas is not None:
            resp.content_deltas += 1
        if resp.first_content_end is None:
            resp.first_content_end = end


def sse_events(data: bytes, base: int = 0, skip_first: bool = False,
               skip_last: bool = False) -> list[tuple[str, int]]:
    """``(payload, end_offset)`` per event with data lines; offsets count from ``base``."""
    blocks = data.replace(b"\r\n", b"\n").split(b"\n\n")
    out, pos = [], base
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        pos += len(block) + 2
        if (skip_first and i == 0) or (skip_last and i == last):
            continue
        lines = [ln[5:] for ln in block.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            payload = b"\n".join(ln[1:] if ln.startswith(b" ") else ln for ln in lines)
            out.append((payload.decode("utf-8", "replace"), min(pos, base + len(data))))
    return out


def parse_stream(endpoint: str, head: bytes, gap: int, tail: bytes) -> Response:
    resp = Response(content_deltas=0 if gap == 0 else None)
    events = sse_events(head, skip_last=gap > 0)
    if gap:
        events += sse_events(tail, base=len(head) + gap, skip_first=True)
    for payload, end in events:
        if payload.strip() == "[DONE]":
            resp.done = True
            continue
        try:
            obj = json.loads(payload)
        except ValueError:
            resp.garbage += 1
            continue
        _apply_event(resp, endpoint, obj, end)
    return resp


def parse_response(endpoint: str, content_type: bytes, head: bytes, gap: int,
                   tail: bytes) -> Response:
    """Dispatch on content type; never raises."""
    try:
        if b"text/event-stream" in content_type.lower():
            return parse_stream(endpoint, head, gap, tail)
        resp = Response()
        if gap:
            # Truncated JSON: keep what survives the cut (id first, usage last).
            match = _ID_HEAD.match(head)
            resp.response_id = match.group(1).decode("utf-8", "replace") if match else None
            found = _USAGE_TAIL.findall(tail)
            if found:
                resp.usage = normalize_usage(json.loads(found[-1]))
            return resp
        if head:
            _apply_json_body(resp, endpoint, json.loads(head))
            resp.done = True
        return resp
    except Exception:  # noqa: BLE001 - garbage in, unknowns out
        return Response(garbage=1)
