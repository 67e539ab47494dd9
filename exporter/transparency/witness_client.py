"""Submit the log's checkpoints to C2SP tlog-witnesses; keep their cosignatures.

``WitnessPool.submit(note)`` is called in the log writer's thread with each
newly signed checkpoint and returns at once; one worker thread
(:mod:`.latest`) POSTs the newest checkpoint to every witness that has not
cosigned it, with ``old <size>`` = the size that witness last cosigned and
the log's consistency proof from there. The first request after a start
says ``old 0``; a witness that knows the log answers 409 with its size, and
the request is repeated at once from that size. A witness that is down,
slow or refusing costs nothing but a counter and a retry with backoff: the
records and the checkpoints are the log's, never waiting on a witness, and
a later cosignature covers every earlier checkpoint.

One exception to "latest wins": a checkpoint that starts a key epoch (a
``vllm-audit-epoch`` line, exporter.transparency.keys) is delivered to every
witness before any later one, since the next checkpoints are signed by the
new key only and a witness learns that key from this one.

Only cosignatures that verify against the configured witness key are kept
(``on_cosigned(checkpoint_text, lines)``); anything else in an answer is
ignored, as the spec requires.

Metrics (label ``witness`` = the witness key's name)::

    vllm_audit_witness_requests_total        add-checkpoint requests sent
    vllm_audit_witness_cosignatures_total    checkpoints cosigned (and kept)
    vllm_audit_witness_failures_total{reason} unreachable, timeout, conflict,
        rejected, server_error, bad_response, proof, store
    vllm_audit_witness_cosigned_size         tree size of the last cosigned checkpoint
    vllm_audit_witness_cosigned_timestamp_seconds  its cosignature's time
    vllm_audit_witness_up                    1 if the last attempt succeeded
    vllm_audit_witness_clock_skew_seconds    cosignature time minus our clock (``clock``)
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from prometheus_client import Counter, Gauge

from . import note
from .latest import LatestWorker, Target

FAILURE_REASONS = ("unreachable", "timeout", "conflict", "rejected", "server_error", "bad_response",
                   "proof", "store")
MAX_ANSWER = 64 * 1024


@dataclass
class _Witness:
    url: str
    key: note.Verifier
    size: int | None = None  # what it last cosigned (None: not known yet, ask with old 0)
    epochs: int = 0  # epoch-starting checkpoints delivered


class _Failed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class WitnessPool:
    def __init__(self, witnesses: list[tuple[str, note.Verifier]],
                 consistency_proof: Callable[[int, int], list[bytes]],
                 on_cosigned: Callable[[str, list[str]], None], registry, clock: Callable[[], float] = time.time,
                 *, timeout: float = 10.0, initial_backoff: float = 1.0, max_backoff: float = 300.0):
        self.consistency_proof, self.on_cosigned, self.clock, self.timeout = \
            consistency_proof, on_cosigned, clock, timeout
        label = ["witness"]
        self.requests = Counter("vllm_audit_witness_requests", "add-checkpoint requests sent to a witness.",
                                label, registry=registry)
        self.cosignatures = Counter("vllm_audit_witness_cosignatures",
                                    "Checkpoints a witness cosigned (cosignature verified and kept).",
                                    label, registry=registry)
        self.failures = Counter("vllm_audit_witness_failures",
                                "Failed witness submissions, by reason (retried with backoff).",
                                ["witness", "reason"], registry=registry)
        self.size = Gauge("vllm_audit_witness_cosigned_size",
                          "Tree size of the latest checkpoint the witness cosigned.", label, registry=registry)
        self.time = Gauge("vllm_audit_witness_cosigned_timestamp_seconds",
                          "Time in the witness's latest cosignature.", label, registry=registry)
        self.up = Gauge("vllm_audit_witness_up", "1 if the last submission to the witness succeeded.",
                        label, registry=registry)
        self.skew = Gauge("vllm_audit_witness_clock_skew_seconds",
                          "Witness cosignature time minus this host's clock at receipt (a witness clock "
                          "far off makes its cosignatures weak evidence of time).", label, registry=registry)
        self._witnesses = [_Witness(url.rstrip("/"), key) for url, key in witnesses]
        self._epochs: list[str] = []  # epoch-starting checkpoints, in order (few: one a day)
        self._lock = threading.Lock()
        targets = []
        for w in self._witnesses:
            for c in (self.requests, self.cosignatures, self.size, self.time, self.up, self.skew):
                c.labels(w.key.name)
            for reason in FAILURE_REASONS:
                self.failures.labels(w.key.name, reason)
            targets.append(Target(w.key.name, lambda signed, w=w: self._attempt(w, signed)))
        self._worker = LatestWorker("witness-pool", targets, initial_backoff=initial_backoff,
                                    max_backoff=max_backoff)

    def submit(self, note_text: str) -> None:
        if "\nvllm-audit-epoch " in note_text.partition("\n\n")[0]:
            with self._lock:
                self._epochs.append(note_text)
        self._worker.submit(note_text)

    def pending(self) -> bool:
        return self._worker.pending()

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)

    # -- one witness, one checkpoint ----------------------------------------

    def _attempt(self, w: _Witness, latest: str) -> bool:
        with self._lock:
            epochs = self._epochs[w.epochs:]
        for signed in epochs:
            try:
                behind = w.size is not None and note.parse_checkpoint(note.split_note(signed)[0]).size < w.size
            except note.NoteError:
                behind = True
            if not behind and signed != latest and not self._deliver(w, signed):
                return False
            w.epochs += 1
        return self._deliver(w, latest)

    def _deliver(self, w: _Witness, signed: str) -> bool:
        name = w.key.name
        try:
            text = note.split_note(signed)[0]
            cp = note.parse_checkpoint(text)
            lines = self._cosign(w, signed, cp)
            try:
                self.on_cosigned(text, lines)
            except Exception as exc:  # e.g. disk full: the witness has it, ask again later
                raise _Failed("store", f"cannot keep the cosignature: {exc}") from None
        except _Failed as exc:
            self.failures.labels(name, exc.reason).inc()
            self.up.labels(name).set(0)
            return False
        ts = note.verify_cosignature(text, note.split_note(text + "\n" + lines[0])[1][0], w.key)
        self.cosignatures.labels(name).inc()
        self.size.labels(name).set(cp.size)
        self.time.labels(name).set(ts)
        self.skew.labels(name).set(ts - self.clock())
        self.up.labels(name).set(1)
        return True

    def _cosign(self, w: _Witness, signed: str, cp: note.Checkpoint) -> list[str]:
        for _ in range(3):  # a 409 names the size to prove from: repeat at once from there
            old = w.size if w.size is not None else 0
            if old > cp.size:
                raise _Failed("conflict", f"witness has size {old}, beyond this checkpoint's {cp.size}")
            try:
                proof = self.consistency_proof(old, cp.size) if old else []
            except ValueError as exc:
                raise _Failed("proof", str(exc)) from None
            body = "".join(f"{line}\n" for line in [f"old {old}", *(base64.b64encode(h).decode() for h in proof)])
            status, ctype, answer = self._post(w, (body + "\n" + signed).encode("utf-8"))
            if status == 409 and (ctype or "").split(";")[0].strip() == "text/x.tlog.size":
                size = answer.strip()
                if not size.isdigit() or not answer.endswith("\n"):
                    raise _Failed("bad_response", f"409 with size {answer[:40]!r}")
                w.size = int(size)
                continue
            if status == 200:
                lines = self._verified(w, cp, answer)
                w.size = cp.size
                return lines
            if 400 <= status < 500:
                raise _Failed("rejected" if status != 409 else "conflict", f"{status}: {answer[:200].strip()}")
            raise _Failed("server_error", f"{status}: {answer[:200].strip()}")
        raise _Failed("conflict", "witness keeps answering 409")

    def _verified(self, w: _Witness, cp: note.Checkpoint, answer: str) -> list[str]:
        text = cp.text()
        try:
            _, sigs = note.split_note(text + "\n" + answer)
        except note.NoteError as exc:
            raise _Failed("bad_response", f"200 but not signature lines: {exc}") from None
        good = []
        for sig in sigs:
            if (sig.name, sig.id) != (w.key.name, w.key.id):
                continue  # other keys' lines: ignored (tlog-witness)
            try:
                note.verify_cosignature(text, sig, w.key)
            except note.NoteError as exc:
                raise _Failed("bad_response", str(exc)) from None
            good.append(sig.line())
        if not good:
            raise _Failed("bad_response", "no cosignature by the configured witness key")
        return good

    def _post(self, w: _Witness, data: bytes) -> tuple[int, str | None, str]:
        self.requests.labels(w.key.name).inc()
        req = urllib.request.Request(w.url + "/add-checkpoint", data=data, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.headers.get("Content-Type"), _text(resp.read(MAX_ANSWER))
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type"), _text(exc.read(MAX_ANSWER))
        except (socket.timeout, TimeoutError):
            raise _Failed("timeout", f"no answer within {self.timeout}s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            kind = "timeout" if isinstance(reason, (socket.timeout, TimeoutError)) else "unreachable"
            raise _Failed(kind, str(reason)) from None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
