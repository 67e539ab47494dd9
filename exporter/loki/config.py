"""Loki shipping settings: one frozen object the CLI builds.

No environment access here: ``exporter/settings.py`` (the CLI) owns flags and
``VLLM_AUDIT_LOKI_*`` variables and hands us plain values. :func:`read_secret`
is offered so the ``*_FILE`` variants are read the same way everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from exporter.secrets import read_secret_text

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Loki's default max_line_size is 256 KB; leave headroom so a server with the
# default limit never sees a line at the edge (proxies, JSON escaping).
DEFAULT_MAX_LINE_BYTES = 256 * 1024 - 4 * 1024
_SECRET_FIELDS = ("password", "bearer_token")


@dataclass(frozen=True)
class LokiSettings:
    url: str  # base URL (http://loki:3100) or the full .../loki/api/v1/push
    tenant: str | None = None  # X-Scope-OrgID
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure: bool = False  # skip TLS verification
    timeout_seconds: float = 10.0
    batch_bytes: int = 1024 * 1024
    batch_wait: float = 1.0
    structured_metadata: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    service_name: str = "vllm-audit"
    job: str | None = None  # optional extra `job` label
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    poll_interval_seconds: float = 0.1

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("Loki URL must start with http:// or https://")
        if "@" in urlsplit(self.url).netloc:
            # Credentials in the URL would end up in error messages and logs.
            raise ValueError("Loki URL must not contain credentials; use username/password")
        if self.bearer_token and (self.username or self.password):
            raise ValueError("Loki: set either basic auth or a bearer token, not both")
        if bool(self.username) != bool(self.password):
            raise ValueError("Loki: basic auth needs both username and password")
        if self.client_key_file and not self.client_cert_file:
            raise ValueError("Loki: client key given without client certificate")
        if self.tenant is not None and (not self.tenant or len(self.tenant.encode()) > 150):
            raise ValueError("Loki tenant id must be 1..150 bytes")  # Loki's limit
        if self.timeout_seconds <= 0 or self.batch_wait < 0:
            raise ValueError("Loki timeout must be > 0 and batch wait >= 0")
        if self.batch_bytes < 1024:
            raise ValueError("Loki batch_bytes must be at least 1024")
        if self.max_line_bytes < 4096:
            raise ValueError("Loki max_line_bytes must be at least 4096")
        if not self.service_name:
            raise ValueError("Loki service_name must not be empty")

    @property
    def push_url(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/loki/api/v1/push"):
            return base
        return base + "/loki/api/v1/push"

    def __repr__(self) -> str:
        # Secrets must never reach logs, tracebacks or /health via repr().
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"LokiSettings({', '.join(parts)})"

    __str__ = __repr__


def read_secret(value: str | None, file: str | None) -> str | None:
    """A secret from its variable or from its ``*_FILE`` (the file wins; read
    by :func:`exporter.secrets.read_secret_text`, like every secret)."""
    if file:
        return read_secret_text(file, "Loki secret file")
    return value or None


def valid_label_name(name: str) -> bool:
    return bool(_LABEL_NAME.match(name)) and not name.startswith("__")
