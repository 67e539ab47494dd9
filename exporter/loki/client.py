"""One HTTP push to Loki and the classification of its outcome.

Only ``204 No Content`` is success: Loki answers 204, and with
``block_ingestion_until`` it answers 260 (or even 200) while dropping the
data, so any other status is a failure. Auth headers are set per request so an
injected ``httpx.Client`` (tests) gets them too. Secrets never appear in
messages: only the status and the first bytes of Loki's body are kept.
"""

from __future__ import annotations

import base64
import gzip
import ssl
from dataclasses import dataclass

import httpx

from exporter import __version__

from .config import LokiSettings

MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class PushResult:
    ok: bool
    status: int | None
    reason: str  # "" on success, else a push_failures_total{reason} value
    message: str


# What the pusher does with each failure reason.
RETRY_REASONS = ("connection", "timeout", "tls", "rate_limited", "server_error",
                 "unexpected_status", "auth", "client_error")
SPLIT_REASONS = ("bad_request", "too_large")  # bisect; a single entry -> dead letter
FAILURE_REASONS = RETRY_REASONS + SPLIT_REASONS


def classify(status: int) -> str:
    if status == 204:
        return ""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    if status == 400:
        return "bad_request"
    if status == 413:
        return "too_large"
    if status >= 500:
        return "server_error"
    if 400 <= status < 500:
        return "client_error"  # 404 wrong URL, 405, ...: configuration, keep retrying
    return "unexpected_status"  # 200, 260 "ingestion blocked", 3xx


def _verify(settings: LokiSettings) -> ssl.SSLContext | bool:
    if settings.insecure:
        return False
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.client_cert_file:
        ctx.load_cert_chain(settings.client_cert_file, settings.client_key_file)
    return ctx


def build_http_client(settings: LokiSettings) -> httpx.Client:
    return httpx.Client(
        verify=_verify(settings),
        timeout=httpx.Timeout(settings.timeout_seconds),
        follow_redirects=False,  # a redirect would resend the body elsewhere
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
    )


def auth_headers(settings: LokiSettings) -> dict[str, str]:
    headers = {}
    if settings.tenant:
        headers["X-Scope-OrgID"] = settings.tenant
    if settings.bearer_token:
        headers["Authorization"] = f"Bearer {settings.bearer_token}"
    elif settings.username:
        token = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


class LokiClient:
    def __init__(self, settings: LokiSettings, client: httpx.Client | None = None):
        self._url = settings.push_url
        self._own = client is None
        self._client = client if client is not None else build_http_client(settings)
        self._timeout = settings.timeout_seconds
        self._headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"vllm-audit-exporter/{__version__}",
            **auth_headers(settings),
        }

    def __repr__(self) -> str:
        return f"LokiClient(url={self._url!r})"  # headers hold secrets

    def push(self, body: bytes) -> PushResult:
        # mtime=0: the compressed body is deterministic too (easier debugging).
        data = gzip.compress(body, compresslevel=5, mtime=0)
        try:
            resp = self._client.post(self._url, content=data, headers=self._headers,
                                     timeout=self._timeout)
        except httpx.TimeoutException as exc:
            return PushResult(False, None, "timeout", type(exc).__name__)
        except httpx.ConnectError as exc:
            reason = "tls" if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) \
                or "SSL" in str(exc) or "CERTIFICATE" in str(exc) else "connection"
            return PushResult(False, None, reason, f"{type(exc).__name__}: {str(exc)[:MAX_MESSAGE]}")
        except httpx.TransportError as exc:
            return PushResult(False, None, "connection",
                              f"{type(exc).__name__}: {str(exc)[:MAX_MESSAGE]}")
        reason = classify(resp.status_code)
        if not reason:
            return PushResult(True, 204, "", "")
        text = resp.content[:MAX_MESSAGE].decode("utf-8", "replace").strip()
        return PushResult(False, resp.status_code, reason, text)

    def close(self) -> None:
        if self._own:
            self._client.close()
