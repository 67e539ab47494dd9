"""RFC 3161 trusted time over checkpoints, with ``openssl ts`` doing the ASN.1.

A witness cosignature says "no later than" in the witness's clock; a token
from a time-stamping authority (a company CA's TSA, or a public one) says
so in a clock the host's admin does not control, and a verifier checks it
with the TSA's certificate alone. At least every ``--tsa-interval`` seconds
(default hourly) the newest checkpoint's text (its UTF-8 bytes, without
signatures) is time-stamped:

* the TimeStampReq is built by ``openssl ts -query -sha256 -cert`` (SHA-256
  imprint, a random nonce, the TSA's certificate requested in the token),
  POSTed as ``application/timestamp-query``;
* the TimeStampResp is checked against that request (status granted, same
  imprint and nonce, signature): with ``--tsa-ca-file`` against that trust
  anchor, else at least against the certificate the token carries;
* the TimeStampToken (DER CMS, ``-token_out``) is handed to the log
  (``add_timestamp``), which keeps it with the checkpoint.

:func:`verify_token` is what ``verify`` calls: the token's UNIX time if it
is a valid token over ``data`` chaining to ``cert_file`` (a CA, or the TSA's
own certificate: ``-partial_chain``). A TSA that is down or refuses costs a
counter and a retry with backoff (:mod:`.latest`), never a record.
"""

from __future__ import annotations

import calendar
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from prometheus_client import Counter, Gauge

from . import note
from .latest import LatestWorker, Target

FAILURE_REASONS = ("unreachable", "http", "bad_response", "store")
MAX_RESPONSE = 1024 * 1024
_TIME = re.compile(r"^Time stamp: (\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.\d+)? (\d{4}) GMT$", re.M)
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                                       "Oct", "Nov", "Dec"), start=1)}


class TsaError(Exception):
    """A token that does not verify, or a TSA that did not give one (one line)."""


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str) -> str:
    exe = shutil.which("openssl")
    if exe is None:
        raise TsaError("openssl is not installed (needed for RFC 3161 timestamps)")
    proc = subprocess.run([exe, "ts", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        detail = [x for x in (proc.stderr + proc.stdout).splitlines()
                  if x.strip() and not x.startswith("Using configuration")]
        raise TsaError(f"openssl ts {args[0]}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


def token_time(token: bytes) -> int:
    """The genTime of a DER TimeStampToken (whole seconds), unverified."""
    with tempfile.TemporaryDirectory(prefix="vllm-audit-tsa-") as tmp:
        path = Path(tmp) / "token.der"
        path.write_bytes(token)
        m = _TIME.search(_openssl("-reply", "-in", str(path), "-token_in", "-text"))
    if not m or m.group(1) not in _MONTHS:
        raise TsaError("token has no readable time stamp")
    mon, day, hh, mm, ss, year = m.groups()
    return calendar.timegm((int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss)))


def verify_token(token: bytes, data: bytes, cert_file: str) -> int:
    """The token's UNIX time if it is a valid RFC 3161 token over ``data``
    by a TSA certified by ``cert_file``; :class:`TsaError` otherwise."""
    with tempfile.TemporaryDirectory(prefix="vllm-audit-tsa-") as tmp:
        tok, dat = Path(tmp) / "token.der", Path(tmp) / "data"
        tok.write_bytes(token)
        dat.write_bytes(data)
        out = _openssl("-verify", "-data", str(dat), "-in", str(tok), "-token_in", "-CAfile", str(cert_file),
                       "-untrusted", str(cert_file), "-partial_chain")
        if "Verification: OK" not in out:
            raise TsaError("token does not verify")
    return token_time(token)


def request_token(url: str, data: bytes, *, timeout: float = 30.0, ca_file: str | None = None) -> bytes:
    """A DER TimeStampToken over ``data`` from the TSA at ``url``, checked against the request."""
    with tempfile.TemporaryDirectory(prefix="vllm-audit-tsa-") as tmp:
        d = Path(tmp)
        (d / "data").write_bytes(data)
        _openssl("-query", "-data", str(d / "data"), "-sha256", "-cert", "-out", str(d / "q.tsq"))
        req = urllib.request.Request(url, data=(d / "q.tsq").read_bytes(), method="POST",
                                     headers={"Content-Type": "application/timestamp-query"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                (d / "r.tsr").write_bytes(resp.read(MAX_RESPONSE))
        except urllib.error.HTTPError as exc:
            raise _Failed("http", f"TSA answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Failed("unreachable", str(getattr(exc, "reason", exc))) from None
        try:
            _openssl("-reply", "-in", str(d / "r.tsr"), "-token_out", "-out", str(d / "token.der"))
            if ca_file is None:  # no trust anchor here: at least the certificate the token carries
                ca_file = str(d / "embedded.pem")
                subprocess.run([shutil.which("openssl") or "openssl", "pkcs7", "-inform", "DER", "-in", str(d / "token.der"),
                                "-print_certs", "-out", ca_file], capture_output=True, check=True, timeout=60)
            out = _openssl("-verify", "-queryfile", str(d / "q.tsq"), "-in", str(d / "r.tsr"),
                           "-CAfile", str(ca_file), "-untrusted", str(ca_file), "-partial_chain")
            if "Verification: OK" not in out:
                raise TsaError("response does not verify")
        except (TsaError, subprocess.CalledProcessError) as exc:
            raise _Failed("bad_response", str(exc)) from None
        return (d / "token.der").read_bytes()


class _Failed(TsaError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class TsaStamper:
    """Time-stamp the newest checkpoint when the last token is ``interval`` old."""

    def __init__(self, url: str, on_token: Callable[[str, bytes], None], registry, *,
                 interval: float = 3600.0, ca_file: str | None = None, timeout: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic, initial_backoff: float = 1.0,
                 max_backoff: float = 300.0):
        self.url, self.on_token, self.interval, self.ca_file, self.timeout = url, on_token, interval, ca_file, timeout
        self.monotonic = monotonic
        self._last_ok: float | None = None
        self.requests = Counter("vllm_audit_tsa_requests", "RFC 3161 timestamp requests sent.", registry=registry)
        self.tokens = Counter("vllm_audit_tsa_tokens", "RFC 3161 tokens received, checked and kept.",
                              registry=registry)
        self.failures = Counter("vllm_audit_tsa_failures", "Failed timestamp requests, by reason (retried).",
                                ["reason"], registry=registry)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.last = Gauge("vllm_audit_tsa_last_timestamp_seconds",
                          "Time in the newest RFC 3161 token (the TSA's clock).", registry=registry)
        self._worker = LatestWorker("tsa", [Target("tsa", self._attempt)], initial_backoff=initial_backoff,
                                    max_backoff=max_backoff)

    def submit(self, note_text: str) -> None:
        # While a stamp is outstanding every newer checkpoint replaces it; otherwise
        # only once the last token is an interval old.
        if self._last_ok is not None and not self._worker.pending() \
                and self.monotonic() - self._last_ok < self.interval:
            return
        self._worker.submit(note_text)

    def pending(self) -> bool:
        return self._worker.pending()

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)

    def _attempt(self, signed: str) -> bool:
        text = note.split_note(signed)[0]
        self.requests.inc()
        try:
            token = request_token(self.url, text.encode("utf-8"), timeout=self.timeout, ca_file=self.ca_file)
            stamp = token_time(token)
            try:
                self.on_token(text, token)
            except Exception as exc:
                raise _Failed("store", f"cannot keep the token: {exc}") from None
        except _Failed as exc:
            self.failures.labels(exc.reason).inc()
            return False
        except TsaError:
            self.failures.labels("bad_response").inc()
            return False
        self._last_ok = self.monotonic()
        self.tokens.inc()
        self.last.set(stamp)
        return True
