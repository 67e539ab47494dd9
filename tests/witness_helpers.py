"""Test helpers for the transparency log's outside parties: a small log that
signs real C2SP checkpoints over a real RFC 9162 tree (the exact three
methods the witness side uses of TransparencyLog, docs: helpers'
transparency-interface), and a witness served over HTTP on a free port."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

from exporter.transparency import merkle, note
from exporter.transparency.witness import Witness
from exporter.transparency.witness_http import serve

ORIGIN = "audit.example/test-log"


class FakeLog:
    """add_listener / consistency_proof / add_cosignatures / add_timestamp over leaves in memory."""

    def __init__(self, signer: note.Signer | None = None, origin: str = ORIGIN, salt: bytes = b""):
        self.signer = signer or note.Signer.generate(origin)
        self.origin, self.salt = origin, salt
        self.hashes: list[bytes] = []
        self.listeners = []
        self.cosignatures: dict[str, list[str]] = {}
        self.timestamps: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def append(self, n: int = 1) -> None:
        for _ in range(n):
            self.hashes.append(merkle.leaf_hash(self.salt + len(self.hashes).to_bytes(8, "big")))

    def checkpoint_text(self, size: int | None = None) -> str:
        size = len(self.hashes) if size is None else size
        return note.Checkpoint(self.origin, size, merkle.root(self.hashes[:size])).text()

    def sign(self, size: int | None = None) -> str:
        """Sign a checkpoint and tell the listeners (as the writer does)."""
        signed = note.sign_note(self.checkpoint_text(size), self.signer)
        for fn in self.listeners:
            fn(signed)
        return signed

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if not 0 <= old_size <= new_size <= len(self.hashes):
            raise ValueError(f"sizes {old_size}..{new_size} outside a log of {len(self.hashes)}")
        return merkle.consistency_proof(old_size, new_size, merkle.list_range_root(self.hashes[:new_size]))

    def add_cosignatures(self, checkpoint_text: str, signature_lines: list[str]) -> None:
        with self.changed:
            self.cosignatures.setdefault(checkpoint_text, []).extend(signature_lines)
            self.changed.notify_all()

    def add_timestamp(self, checkpoint_text: str, token: bytes) -> None:
        with self.changed:
            self.timestamps.setdefault(checkpoint_text, []).append(token)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


def body(old: int, proof: list[bytes], signed: str) -> bytes:
    lines = [f"old {old}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + signed).encode("utf-8")


class WitnessServer:
    """A witness on 127.0.0.1:<free port> in a thread; ``stop()`` / ``start()`` again on the same port."""

    def __init__(self, signer: note.Signer, logs: dict, state_dir: Path, clock=None):
        self.signer, self.logs, self.state_dir, self.clock = signer, logs, state_dir, clock
        self.port = 0
        self.server = None

    def start(self) -> "WitnessServer":
        kwargs = {"clock": self.clock} if self.clock else {}
        self.witness = Witness(self.signer, self.logs, self.state_dir, **kwargs)
        self.server = serve(self.witness, "127.0.0.1", self.port, log=lambda msg: None)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def eventually(cond, timeout: float = 60.0) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes (tests wait for events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
