"""Turn a captured ``Exchange`` into the middleware JSON line (stdlib only).

Runs in the writer thread, off vLLM's event loop. The line's keys and their
meaning are the contract in docs/design.md ("Middleware line"); keys after
``rejected_prompt_tokens`` are additions.

Rules:
- ``status``: ``aborted`` when the client went away before the response was
  complete (disconnect, failing send); else ``error`` when the app raised;
  else ``rejected`` for an HTTP 400 whose message is vLLM's context-length
  refusal; else ``error`` for any other 4xx/5xx or an error event in a 2xx
  stream; else ``completed`` when the response ended properly (complete
  body, ``[DONE]`` / ``response.completed`` for streams); else ``incomplete``.
- ``rejected_prompt_tokens`` is the prompt size vLLM states in its refusal;
  ``null`` when the refusal counts characters, not tokens.
- ``user``: first present ``user_headers`` value when the identity headers are
  trusted, else the body's ``user`` string, else ``key:<16 hex>`` from the
  bearer key's hash, else ``null``; ``identity_source`` says which
  (``header``, ``header_secret``, ``user_field``, ``api_key``, null).
- Identity headers are trusted when no shared secret is configured, or when
  the secret header's value equals the secret (``hmac.compare_digest``).
  Untrusted values go to ``identity.untrusted_headers``, never into ``user``.
- With an Open WebUI JWT secret (``openwebui.verify``), ``user`` is the
  configured claim of a valid token (``identity_source: jwt``, the text
  claims in ``identity.jwt``). Without a token, only headers behind the
  shared secret may stand in; otherwise, and for any bad token, ``user`` is
  null and ``identity.invalid_reason`` says why: never the body's ``user``
  or the shared API key. The token is never written.
- ``identity.openwebui``: Open WebUI's chat/message id and task headers
  (``openwebui.SESSION_HEADERS``) of a trusted request, absent when none.
- ``api_key_hash`` = hex HMAC-SHA256(key=salt, msg=bearer key); the key and the
  secret are never written.
- ``params``: as the client sent them (``max_completion_tokens`` wins over
  ``max_tokens``; Responses: ``max_output_tokens``); absent → ``null``;
  ``json_mode`` is true for ``json_object`` / ``json_schema`` and false when the
  body was read and asked for neither.
- ``empty_response``: only for ``completed`` generations: every choice's text
  is empty and none made tool calls. ``null`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from exporter.wire import DROPPED_TYPE, LINE_TYPE, LINE_VERSION, params, prompt_of, utc_text

from .openwebui import SESSION_HEADERS, kept_claims, verify
from .response import parse_response


# vLLM 0.32 (renderers/params.py, v1/engine/input_processor.py) and older wordings;
# 0.28-0.31 name the requested output tokens first (seen in the real 0.28 capture).
_CONTEXT_PATTERNS = (
    re.compile(r"maximum context length is \d+ tokens\. However, (?:you requested \d+ output "
               r"tokens and )?your prompt contains (?:at least )?(\d+) input tokens"),
    re.compile(r"maximum context length is \d+ tokens\. However, your request has (\d+) input tokens"),
    re.compile(r"maximum context length is \d+ tokens\. However, you requested \d+ tokens \((\d+) in the messages"),
    re.compile(r"prompt \(length (\d+)\) (?:plus the number of requested output tokens \(at least 1\) )?"
               r"is longer than the maximum model length"),
)
_CONTEXT_ANY = re.compile(r"maximum context length|longer than the maximum model length")


def context_rejection(message: str | None) -> tuple[bool, int | None]:
    """``(is_context_length_refusal, stated prompt tokens or None)``."""
    if not message or not _CONTEXT_ANY.search(message):
        return False, None
    for pattern in _CONTEXT_PATTERNS:
        match = pattern.search(message)
        if match:
            return True, int(match.group(1))
    return True, None


def api_key_hash(salt: bytes, auth: bytes | None) -> str | None:
    if not auth:
        return None
    scheme, _, key = auth.decode("latin-1").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return hmac.new(salt, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def identity(cfg, headers: dict, auth: bytes | None, body, now: float) -> tuple[dict, str | None, str | None]:
    """``(identity object, resolved user, identity_source)``; ``now`` is when
    the request arrived (a JWT's ``exp`` is judged against it)."""
    hidden = (cfg.secret_header, cfg.jwt_header)  # never written, even if listed as trusted
    present = {}
    for raw, value in headers.items():
        name = raw.decode("latin-1")
        if name in cfg.trusted_headers and raw not in hidden:
            present[name] = _text(value)
    secret_ok = None
    if cfg.secret is not None:
        secret_ok = hmac.compare_digest(headers.get(cfg.secret_header, b""), cfg.secret)
    user_field = body.get("user") if isinstance(body, dict) else None
    user_field = user_field if isinstance(user_field, str) and user_field else None
    key_hash = api_key_hash(cfg.salt, auth)
    ident = {"headers": {}, "user_field": user_field, "api_key_hash": key_hash}
    user = source = claims = reason = None
    if cfg.jwt_secret is None:
        trusted = secret_ok is not False
    else:
        # JWT mode: the signed token is the identity. Only a missing token may
        # be replaced, and only by headers behind the shared secret; a bad
        # token never falls back to a weaker identity (the shared API key
        # would merge every Open WebUI user into one).
        token = headers.get(cfg.jwt_header, b"")
        claims, reason = verify(token, cfg.jwt_secret, now, cfg.jwt_leeway)
        trusted = claims is not None or (reason == "missing" and secret_ok is True)
        if claims is not None:
            ident["jwt"] = kept_claims(claims)
            value = claims.get(cfg.jwt_user_claim)
            if isinstance(value, str) and value:
                user, source = value, "jwt"
            else:
                reason = "claim_missing"
    if trusted:
        ident["headers"] = present
        if source is None and (cfg.jwt_secret is None or reason == "missing"):
            user = next((present[h] for h in cfg.user_headers if present.get(h)), None)
            source = ("header" if secret_ok is None else "header_secret") if user else None
        # Open WebUI fills a template it has no value for with "": unknown, so null.
        session = {field: _text(headers[h.encode()]) or None if h.encode() in headers else None
                   for field, h in SESSION_HEADERS}
        if any(v is not None for v in session.values()):
            ident["openwebui"] = session
    elif present:
        ident["untrusted_headers"] = present
    if cfg.jwt_secret is not None and user is None:
        ident["invalid_reason"] = reason or "missing"
    elif user is None:
        if user_field:
            user, source = user_field, "user_field"
        elif key_hash:
            user, source = f"key:{key_hash[:16]}", "api_key"
    return ident, user, source


def render(ex, cfg) -> dict:
    """The middleware line for one finished exchange."""
    body = None
    if not ex.request.truncated:
        try:
            body = json.loads(b"".join(ex.request.head) or b"null")
        except ValueError:
            body = None
    head, gap, tail = ex.response.parts()
    is_stream = b"text/event-stream" in ex.content_type.lower()
    resp = parse_response(ex.endpoint, ex.content_type, head, gap, tail)
    ident, user, source = identity(cfg, ex.headers, ex.auth, body, ex.start_wall)
    code = ex.status_code
    aborted = ex.disconnected or ex.send_failed
    rejected, rejected_tokens = (False, None)
    error = resp.error
    if aborted:
        status = "aborted"
    elif ex.exception:
        status, error = "error", error or ex.exception
    elif code is not None and code >= 400:
        if code == 400:
            rejected, rejected_tokens = context_rejection(error)
        status = "rejected" if rejected else "error"
    elif resp.error:
        status = "error"
    elif ex.response_done and (resp.done or not is_stream):
        status = "completed"
    else:
        status = "incomplete"
    choices = resp.choice_list() if ex.endpoint != "embeddings" else None
    empty = None
    if status == "completed" and choices:
        empty = all(not c["text"] and not c.get("tool_calls") for c in choices)
    ttft = None
    if resp.first_content_end is not None:
        at = next((t for end, t in ex.chunk_times if end >= resp.first_content_end), None)
        ttft = round(at - ex.start_perf, 6) if at is not None else None
    latency = max(0.0, ex.end_perf - ex.start_perf) if ex.end_perf else None
    stream = body.get("stream") if isinstance(body, dict) else None
    return {
        "type": LINE_TYPE, "v": LINE_VERSION,
        "request_id": ex.request_id, "request_id_generated": ex.request_id_generated,
        "response_id": resp.response_id,
        "received_at": utc_text(ex.start_wall),
        "finished_at": utc_text(ex.start_wall + latency) if latency is not None else None,
        "method": ex.method, "path": ex.path, "endpoint": ex.endpoint,
        "client": ex.client, "user": user, "identity": ident,
        "status_code": code, "status": status, "error": error,
        "model": body.get("model") if isinstance(body, dict) else None,
        "stream": stream if isinstance(stream, bool) else (False if isinstance(body, dict) else None),
        "params": params(body),
        "prompt": prompt_of(ex.endpoint, body),
        "choices": choices,
        "usage": resp.usage, "usage_source": "response" if resp.usage else None,
        "empty_response": empty,
        "latency_seconds": round(latency, 6) if latency is not None else None,
        "ttft_seconds": ttft,
        "aborted": aborted, "rejected_prompt_tokens": rejected_tokens,
        # additions
        "content_deltas": resp.content_deltas if is_stream else None,
        "request_truncated": ex.request.truncated,
        "response_truncated": gap > 0,
        "identity_source": source,
    }


def fallback(ex, exc: BaseException) -> dict:
    """Minimal line when ``render`` itself failed: the request still shows up."""
    return {"type": LINE_TYPE, "v": LINE_VERSION, "request_id": getattr(ex, "request_id", None),
            "request_id_generated": getattr(ex, "request_id_generated", None),
            "received_at": utc_text(getattr(ex, "start_wall", 0.0)),
            "path": getattr(ex, "path", None), "status_code": getattr(ex, "status_code", None),
            "status": "error", "error": None, "render_error": type(exc).__name__}


def dropped_line(count: int, wall: float) -> dict:
    return {"type": DROPPED_TYPE, "v": LINE_VERSION, "dropped": count, "at": utc_text(wall)}
