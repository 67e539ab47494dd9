"""The one secret-file reader: HMAC keys, Loki passwords and bearer tokens,
for every subcommand (``run``, ``replay``, ``verify``, ``export``,
``retention``) alike.

A secret file's bytes are the secret, except for trailing CR/LF (``echo``,
editors and Kubernetes Secrets add a newline). Nothing else is stripped: a
key ending in spaces is that key everywhere, so the archive ``replay``
wrote verifies with ``verify``. Binary keys are fine. An unreadable or empty
file is an error (one line naming the flag): silently falling back to no
key would weaken the audit trail.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(Exception):
    """A secret file that cannot be used; the message is one line."""


def read_secret(path: str | os.PathLike, what: str) -> bytes:
    """The secret in ``path`` (``what`` names it in errors, e.g. the flag)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise SecretError(f"{what}: {path} is empty")
    return data


def read_secret_text(path: str | os.PathLike, what: str) -> str:
    """A secret that goes into an HTTP header (password, token): UTF-8 text."""
    data = read_secret(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{what}: {path} is not UTF-8 text") from None
