"""Type checks for JSON that came from outside: the middleware line and the
client's JSON body that vLLM logs at DEBUG. Pure, no I/O.

Anyone who can call vLLM chooses what these objects hold, so nothing
downstream may assume a type. The rules:

* Each field the exporter reads has one declared type. A field of another
  type is dropped (read as absent, so the record says ``null``) and named
  in ``bad``; the rest of the line is still used. Unknown keys are dropped
  too: in-flight state (checkpointed as JSON) holds only checked data.
* Text is kept losslessly but made encodable: JSON may carry a lone
  surrogate (``"\\ud800"``), which no UTF-8 writer accepts. Each one becomes
  the six characters ``\\ud800`` and the line is marked ``escaped`` (the
  record gets the flag ``unencodable_text``).
* The prompt (any JSON shape, any depth the JSON decoder accepted) is
  turned into its compact JSON text here, once, so no deep structure is
  ever walked or re-encoded later.
"""

from __future__ import annotations

import json
import math
import re

from exporter.record import IDENTITY_INVALID_REASONS, IDENTITY_SOURCES, STATUSES

# Parse-error reasons for lines that were used but had fields dropped or text
# escaped; counted per line in vllm_audit_parse_errors_total.
CHECK_PROBLEMS = ("middleware_invalid_field", "body_invalid_field", "engine_invalid_field",
                  "unencodable_text")


def findings(field_reason: str, bad: list[str], escaped: bool) -> tuple[list[str], list[str]]:
    """``(parse-error reasons, record flags)`` for one checked object."""
    problems = ([field_reason] if bad else []) + (["unencodable_text"] if escaped else [])
    flags = (["invalid_field"] if bad else []) + (["unencodable_text"] if escaped else [])
    return problems, flags


_SURROGATE = re.compile("[\ud800-\udfff]")
_PROMPT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _escape(m: re.Match) -> str:
    return "\\u%04x" % ord(m.group())


def clean_text(value: str) -> tuple[str, bool]:
    """``(text, changed)``: lone surrogates written as ``\\udXXX``."""
    if _SURROGATE.search(value) is None:
        return value, False
    return _SURROGATE.sub(_escape, value), True


def finite(value: int | float) -> bool:
    """``math.isfinite``, but False, not OverflowError, for an int beyond
    any float (a client's ``"max_tokens": 1000…0`` of 400 digits): raising
    here dropped the whole line, so a request could erase its own record."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class _Checker:
    """Collects what was dropped or escaped while one object is checked."""

    __slots__ = ("bad", "escaped")

    def __init__(self) -> None:
        self.bad: list[str] = []
        self.escaped = False

    def text(self, name: str, value):
        if value is None:
            return None
        if not isinstance(value, str):
            self.bad.append(name)
            return None
        out, changed = clean_text(value)
        self.escaped |= changed
        return out

    def integer(self, name: str, value, minimum: int | None = 0):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            self.bad.append(name)
            return None
        return value

    def number(self, name: str, value, minimum: float | None = 0.0):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value) \
                or (minimum is not None and value < minimum):
            self.bad.append(name)
            return None
        return value

    def boolean(self, name: str, value):
        if value is None:
            return None
        if not isinstance(value, bool):
            self.bad.append(name)
            return None
        return value

    def mapping(self, name: str, value) -> dict | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad.append(name)
            return None
        return value

    def headers(self, name: str, value) -> dict | None:
        value = self.mapping(name, value)
        if value is None:
            return None
        out = {}
        for k, v in value.items():
            k, _ = clean_text(k) if isinstance(k, str) else (str(k), False)
            v = self.text(f"{name}.value", v)
            if v is not None:
                out[k] = v
        return out

    def prompt(self, value):
        if value is None:
            return None
        if isinstance(value, str):
            return self.text("prompt", value)
        try:
            return self.text("prompt", _PROMPT_ENCODER(value))
        except (ValueError, RecursionError):  # nesting the encoder refuses
            self.bad.append("prompt")
            return None


_TEXT_FIELDS = ("response_id", "received_at", "finished_at", "method", "path", "endpoint", "client",
                "user", "status", "error", "model", "usage_source", "render_error", "identity_source")
_BOOL_FIELDS = ("request_id_generated", "stream", "empty_response", "aborted", "request_truncated",
                "response_truncated")
_INT_FIELDS = ("v", "status_code", "rejected_prompt_tokens", "content_deltas")


def check_middleware_line(obj: dict) -> tuple[dict, list[str], bool]:
    """``(line with only checked fields, names of dropped fields, escaped)``.

    ``request_id`` is checked by the caller (a line without one is unusable).
    """
    c = _Checker()
    out: dict = {}
    # Input key order is kept (the line reads as written); absent stays absent.
    for name, value in obj.items():
        check = _LINE_CHECKS.get(name)
        if check is not None:
            out[name] = check(c, name, value)
    for name, allowed in (("status", STATUSES), ("identity_source", IDENTITY_SOURCES)):
        if out.get(name) is not None and out[name] not in allowed:
            c.bad.append(name)
            out[name] = None
    return out, c.bad, c.escaped


_JWT_CLAIMS = ("sub", "email", "name", "role")
_OPENWEBUI_FIELDS = ("chat_id", "message_id", "user_message_id", "task")


def _texts(c: _Checker, name: str, value, keys: tuple[str, ...]) -> dict | None:
    """A mapping of known text fields; other keys are dropped."""
    value = c.mapping(name, value)
    if value is None:
        return None
    return {k: c.text(f"{name}.{k}", value[k]) for k in keys if k in value}


def _identity(c: _Checker, name: str, value) -> dict | None:
    value = c.mapping("identity", value)
    if value is None:
        return None
    out = {}
    for key in ("headers", "user_field", "api_key_hash", "untrusted_headers"):
        if key in value:
            check = c.headers if key.endswith("headers") else c.text
            out[key] = check(f"identity.{key}", value[key])
    if "jwt" in value:
        out["jwt"] = _texts(c, "identity.jwt", value["jwt"], _JWT_CLAIMS)
    if "openwebui" in value:
        out["openwebui"] = _texts(c, "identity.openwebui", value["openwebui"], _OPENWEBUI_FIELDS)
    if "invalid_reason" in value:
        reason = c.text("identity.invalid_reason", value["invalid_reason"])
        if reason is not None and reason not in IDENTITY_INVALID_REASONS:
            c.bad.append("identity.invalid_reason")
            reason = "malformed"  # still invalid: a bad reason must not erase the finding
        out["invalid_reason"] = reason
    return out


def _params(c: _Checker, name: str, value) -> dict | None:
    value = c.mapping("params", value)
    if value is None:
        return None
    return {"max_tokens": c.integer("params.max_tokens", value.get("max_tokens")),
            "temperature": c.number("params.temperature", value.get("temperature")),
            "n": c.integer("params.n", value.get("n"), 1),
            "json_mode": c.boolean("params.json_mode", value.get("json_mode"))}


def _usage(c: _Checker, name: str, value) -> dict | None:
    value = c.mapping("usage", value)
    if value is None:
        return None
    return {k: c.integer(f"usage.{k}", value.get(k))
            for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in value}


def _choices(c: _Checker, name: str, value) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list):
        c.bad.append("choices")
        return None
    out = []
    for i, ch in enumerate(value):
        if not isinstance(ch, dict):
            c.bad.append("choices[]")
            continue
        index = c.integer("choices.index", ch.get("index"))
        item = {"index": i if index is None else index, "text": c.text("choices.text", ch.get("text")),
                "finish_reason": c.text("choices.finish_reason", ch.get("finish_reason"))}
        if ch.get("tool_calls"):
            item["tool_calls"] = True
        out.append(item)
    return out


def _typed(method: str):
    return lambda c, name, value: getattr(c, method)(name, value)


def _prompt(c: _Checker, name: str, value):
    return c.prompt(value)


_LINE_CHECKS = {"type": lambda c, name, value: value, "request_id": _typed("text"),
                **{n: _typed("text") for n in _TEXT_FIELDS}, **{n: _typed("boolean") for n in _BOOL_FIELDS},
                **{n: _typed("integer") for n in _INT_FIELDS}, "latency_seconds": _typed("number"),
                "ttft_seconds": _typed("number"), "prompt": _prompt, "identity": _identity, "params": _params,
                "usage": _usage, "choices": _choices}


# -- the client's JSON body (vLLM's DEBUG "JSON body" line) ---------------------------

_TEXT, _BOOLEAN, _INTEGER, _NUMBER = _Checker.text, _Checker.boolean, _Checker.integer, _Checker.number
# (field, check, label): built once, not per body (one body per request at DEBUG)
_BODY_CHECKS = tuple((name, check, f"body.{name}") for name, check in (
    ("model", _Checker.text), ("user", _Checker.text), ("stream", _Checker.boolean),
    ("temperature", _Checker.number), ("max_completion_tokens", _Checker.integer),
    ("max_tokens", _Checker.integer), ("max_output_tokens", _Checker.integer)))


def check_body(body: dict) -> tuple[dict, list[str], bool]:
    """The fields of a client's request body the record uses, checked:
    ``model``, ``user``, ``stream`` and the sampling parameters."""
    c = _Checker()
    out = {}
    for name, check, label in _BODY_CHECKS:
        if name in body:
            value = body[name]
            # What the check keeps as it is, without the call: ASCII text
            # (no surrogate to escape), a finite non-negative float or int,
            # a bool. Anything else goes through the check.
            cls = value.__class__
            if cls is str and check is _TEXT and value.isascii() or cls is bool and check is _BOOLEAN \
                    or cls is int and check is _INTEGER and value >= 0 \
                    or cls is float and check is _NUMBER and 0.0 <= value < math.inf:
                out[name] = value
            else:
                out[name] = check(c, label, value)
    if "n" in body:
        out["n"] = c.integer("body.n", body["n"], 1)
    fmt = body.get("response_format")
    if fmt is None and isinstance(body.get("text"), dict):  # Responses API: text.format
        fmt = body["text"].get("format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        out["response_format"] = {"type": kind if isinstance(kind, str) else None}
    return out, c.bad, c.escaped
