"""The contract between the middleware (inside vLLM) and the exporter:
standard library only, imported by both sides.

* the middleware line's type names (its fields: docs/design.md,
  "Middleware line");
* the one RFC 3339 writer (``record.ts`` and the line's times);
* what an OpenAI request body asks for (``params``) and where its prompt
  is (``prompt_of``): the middleware reads the body it saw, the exporter
  the body vLLM logged at DEBUG, with the same rules.
"""

from __future__ import annotations

from datetime import datetime, timezone

LINE_TYPE = "vllm_audit_middleware"
DROPPED_TYPE = "vllm_audit_middleware_dropped"
LINE_VERSION = 1

_JSON_KINDS = ("json_object", "json_schema")


def utc_text(epoch_seconds: float) -> str:
    """RFC 3339, UTC, millisecond precision: ``2026-11-22T10:00:00.123Z``."""
    stamp = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    if stamp.year >= 1000:
        # isoformat is ~1.5x cheaper than strftime (once per record), and the
        # same text: "YYYY-MM-DDTHH:MM:SS.mmm" before its "+00:00".
        return stamp.isoformat(timespec="milliseconds")[:23] + "Z"
    # strftime's %Y does not pad years below 1000 (glibc): kept as it was.
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def params(body) -> dict:
    """``max_tokens`` (``max_completion_tokens`` wins over ``max_tokens``;
    Responses: ``max_output_tokens``), ``temperature``, ``n`` as sent, null
    when absent; ``json_mode`` true for ``json_object``/``json_schema``
    (``response_format``, Responses ``text.format``), false when the body was
    read and asked for neither, null without a body."""
    if not isinstance(body, dict):
        return {"max_tokens": None, "temperature": None, "n": None, "json_mode": None}
    # Read once per request by the exporter: plain lookups, no helper calls.
    fmt = body.get("response_format")
    if fmt is None:
        text = body.get("text")
        if isinstance(text, dict):
            fmt = text.get("format")
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_output_tokens")
    return {"max_tokens": max_tokens, "temperature": body.get("temperature"), "n": body.get("n"),
            "json_mode": (fmt.get("type") if isinstance(fmt, dict) else None) in _JSON_KINDS}


def prompt_of(endpoint: str, body):
    """The client's prompt: ``messages`` (chat), ``prompt`` (completions),
    ``input`` (responses, embeddings)."""
    if not isinstance(body, dict):
        return None
    key = {"chat": "messages", "completion": "prompt"}.get(endpoint, "input")
    return body.get(key)


# -- the stat-logger plugin's line (exporter/statlogger; fields: docs/design.md, "Engine line")
ENGINE_TYPE = "vllm_audit_engine"
ENGINE_STATUS_TYPE = "vllm_audit_engine_status"
ENGINE_VERSION = 1
# Why the plugin wrote no engine line for a finished request (its status
# line's ``problems`` keys; any other key is read as "other").
ENGINE_PROBLEMS = ("no_request_id", "stats_changed", "record_error", "dropped", "render_error")
