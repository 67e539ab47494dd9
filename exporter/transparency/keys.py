"""Signing keys: ``keygen``, reading the key file, and the per-day epoch key.

``keygen --out DIR [--name NAME]`` writes ``DIR/signing.key`` (0600, the Go
``note`` signer format ``PRIVATE+KEY+<name>+<id>+<base64>``) and
``DIR/signing.pub`` (the one-line verifier ``<name>+<id>+<base64>``, what an
auditor is given). ``keygen --witness`` makes a cosignature/v1 key pair for a
witness (the witness helper's side uses it). ``--keep-existing`` makes it an
init step safe to run at every start (compose.yaml's ``signing-key``): an
existing key is left alone and its ``signing.pub`` printed again; a
``signing.pub`` without its key is refused, because a new key would not
verify with the one auditors already pinned.

Forward security: the key in ``--signing-key-file`` signs one epoch (a UTC
day). The first checkpoint of a new day is signed by the old key *and* a
freshly generated one and names the new verifier key in an extension line
(the old key certifies the new one); then the key file is replaced by the new
key, so the old private key is gone from disk and whoever takes the host
later cannot re-sign earlier days. Crash-safe order
(:func:`begin_rotation`, then the certified checkpoint is made durable,
then :func:`finish_rotation`): the new key is first written to
``<file>.next``; a start that finds ``.next`` finishes the rotation only if
the log already holds the certificate for it, else drops it.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from exporter.durable import fsync_dir, make_dir, write_atomic
from exporter.secrets import SecretError, read_secret
from exporter.transparency.note import ALG_COSIGNATURE_V1, ALG_ED25519, NoteError, Signer, parse_signer

KEY_MODE = 0o600


class SigningKeyError(ValueError):
    """A signing key file that cannot be used (one line)."""


def default_name() -> str:
    host = "".join(c for c in socket.gethostname() if not c.isspace() and c != "+") or "localhost"
    return f"{host}-vllm-audit"


def load_signer(path: str | os.PathLike, what: str = "--signing-key-file") -> Signer:
    try:
        data = read_secret(path, what)
        return parse_signer(data.decode("utf-8"))
    except SecretError as exc:
        raise SigningKeyError(str(exc)) from None
    except (UnicodeDecodeError, NoteError) as exc:
        raise SigningKeyError(f"{what}: {path} is not a signing key ({exc})") from None


def _write_key(path: Path, text: str) -> None:
    write_atomic(path, text.encode() + b"\n", KEY_MODE)  # mode KEY_MODE from creation on


def next_path(key_path: Path) -> Path:
    return Path(key_path).with_name(Path(key_path).name + ".next")


def begin_rotation(key_path: Path, name: str) -> Signer:
    """A new epoch key, durable in ``<file>.next`` before anything names it."""
    new = Signer.generate(name)
    _write_key(next_path(key_path), new.text())
    return new


def finish_rotation(key_path: Path) -> None:
    """Replace the key file by the new key: the old private key is erased."""
    os.replace(next_path(key_path), key_path)
    fsync_dir(Path(key_path).parent)


def abort_rotation(key_path: Path) -> None:
    next_path(key_path).unlink(missing_ok=True)
    fsync_dir(Path(key_path).parent)


def keygen(out: Path, name: str | None, *, witness: bool = False) -> tuple[Path, Path]:
    out = Path(out)
    if not out.is_dir():
        make_dir(out)
    signer = Signer.generate(name or default_name(), ALG_COSIGNATURE_V1 if witness else ALG_ED25519)
    key, pub = out / "signing.key", out / "signing.pub"
    if key.exists():
        raise SigningKeyError(f"keygen: {key} exists; refusing to overwrite a signing key")
    # signing.pub first: a crash in between leaves a public key without its
    # key (refused by --keep-existing, nothing signed yet), never a key whose
    # verifier nobody can be given.
    write_atomic(pub, (signer.verifier.text() + "\n").encode(), 0o644)
    _write_key(key, signer.text())
    return key, pub


def _kept(out: Path) -> tuple[Path, Path] | None:
    """(key, pub) when DIR already holds a signing key; None when it holds none."""
    key, pub = out / "signing.key", out / "signing.pub"
    if key.exists():
        return key, pub
    if pub.exists():
        raise SigningKeyError(f"keygen: {pub} exists without {key.name} (removed, or a first "
                              "keygen interrupted): a new key would not verify with a signing.pub "
                              "auditors may hold; move it away to start a new log key")
    return None


def keygen_main(out: str, name: str | None, witness: bool = False, keep_existing: bool = False) -> int:
    try:
        kept = _kept(Path(out)) if keep_existing else None
        if kept:
            key, pub = kept
            print(f"signing key: {key} exists, kept (--keep-existing)")
            if not pub.exists():
                print(f"keygen: {pub} is missing: give auditors the copy taken at the first start",
                      file=sys.stderr)
                return 0
        else:
            key, pub = keygen(Path(out), name, witness=witness)
            print(f"signing key: {key} (keep it secret; give run/replay --signing-key-file {key})")
    except (SigningKeyError, NoteError, OSError) as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 2
    print(f"verifier key: {pub} (give it to auditors: verify --public-key {pub})")
    print(pub.read_text().strip())
    return 0
