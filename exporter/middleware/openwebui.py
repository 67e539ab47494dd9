"""Open WebUI's forwarded identity: its signed user JWT and its session
headers (stdlib only; runs in the middleware's writer thread).

Open WebUI 0.12 (``open_webui/utils/headers.py``), with
``ENABLE_FORWARD_USER_INFO_HEADERS=true`` and
``FORWARD_USER_INFO_HEADER_JWT_SECRET`` set, sends one HS256 JWT in
``X-OpenWebUI-User-Jwt`` instead of the plain ``X-OpenWebUI-User-*`` headers:
claims ``sub`` (user id), ``email``, ``name``, ``role``, ``iss: open-webui``,
``iat``, ``exp`` (``iat`` + ``FORWARD_USER_INFO_HEADER_JWT_EXPIRES_SECONDS``,
default 300 s), minted per request. Open WebUI strips the secret before it
signs, so the key here is stripped too.

Rules of :func:`verify`:
- Only ``alg: HS256``; ``none`` and every other algorithm are refused
  before anything else, so a token can never choose how it is checked.
- The signature is compared in constant time (``hmac.compare_digest``)
  before the payload is read at all.
- ``iss`` must be ``open-webui``; ``exp`` is required and honoured with
  ``leeway`` seconds of clock skew; an ``iat``/``nbf`` further than
  ``leeway`` in the future is refused.
- ``now`` is the time the request arrived (injected), not the time the
  writer thread gets to it, so a backlog never expires a good token.
- The result is ``(claims, None)`` or ``(None, reason)``; ``reason`` is one
  of :data:`INVALID_REASONS`. No exception escapes for any input.

The session headers are unsigned even in JWT mode (Open WebUI signs only
the user claims); they are kept only for a request whose identity is
verified or trusted (see ``line.identity``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re

ISSUER = "open-webui"
JWT_HEADER = "x-openwebui-user-jwt"
CLAIMS = ("sub", "email", "name", "role")  # the text claims kept under identity.jwt
# Why a token gave no identity: a closed set, so it can be a metric label.
INVALID_REASONS = ("missing", "malformed", "algorithm", "signature", "issuer", "expired",
                   "not_yet_valid", "claim_missing", "secret_unavailable")
# identity.openwebui field -> header. Chat id is Open WebUI's built-in
# FORWARD_SESSION_INFO_HEADER_CHAT_ID; message id uses the name Open WebUI
# gives it for tool servers (FORWARD_SESSION_INFO_HEADER_MESSAGE_ID); the
# rest are per-connection headers the admin adds with {{...}} templates.
SESSION_HEADERS = (
    ("chat_id", "x-openwebui-chat-id"),
    ("message_id", "x-openwebui-message-id"),
    ("user_message_id", "x-openwebui-user-message-id"),
    ("task", "x-openwebui-task"),
)
MAX_TOKEN = 8192  # Open WebUI's tokens are ~300 bytes; a bigger one is not theirs
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


def _b64(part: bytes) -> bytes | None:
    if _B64URL.fullmatch(part) is None or len(part) % 4 == 1:
        return None
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _json_object(part: bytes) -> dict | None:
    raw = _b64(part)
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


def _number(value) -> bool:
    """A finite JSON number (Python's decoder also accepts NaN and Infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def verify(token: bytes, key: bytes, now: float, leeway: float,
           issuer: str = ISSUER) -> tuple[dict | None, str | None]:
    """``(claims, None)`` for a valid token, else ``(None, reason)``."""
    try:
        return _verify(token, key, now, leeway, issuer)
    except Exception:  # noqa: BLE001 - hostile input must never break the writer
        return None, "malformed"


def _verify(token: bytes, key: bytes, now: float, leeway: float, issuer: str):
    token = token.strip()
    if not token:
        return None, "missing"
    if not key:
        return None, "secret_unavailable"
    parts = token.split(b".")
    if len(token) > MAX_TOKEN or len(parts) != 3:
        return None, "malformed"
    head = _json_object(parts[0])
    if head is None:
        return None, "malformed"
    if head.get("alg") != "HS256":
        return None, "algorithm"
    signature = _b64(parts[2])
    if signature is None:
        return None, "malformed"
    expected = hmac.new(key, parts[0] + b"." + parts[1], hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        return None, "signature"
    claims = _json_object(parts[1])
    if claims is None:
        return None, "malformed"
    if claims.get("iss") != issuer:
        return None, "issuer"
    exp = claims.get("exp")
    if not _number(exp):
        return None, "malformed"
    if now > exp + leeway:
        return None, "expired"
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if not _number(value):
            return None, "malformed"
        if value > now + leeway:
            return None, "not_yet_valid"
    return claims, None


def kept_claims(claims: dict) -> dict:
    """The text claims recorded under ``identity.jwt`` (never the token)."""
    return {k: claims[k] for k in CLAIMS if isinstance(claims.get(k), str)}
