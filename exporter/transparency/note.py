"""C2SP signed notes, checkpoints and cosignatures with Ed25519 keys.

Formats, byte for byte as in the C2SP specs (so third-party tools such as
Go's ``golang.org/x/mod/sumdb/note`` read them):

* signed-note: the text (UTF-8, ends in ``\\n``), one blank line, then one
  line per signature ``— <name> <base64(key id || signature)>``;
  key id = ``SHA-256(name || 0x0A || type || public key)[:4]``;
* verifier key ``<name>+<8 hex key id>+<base64(type || public key)>``;
  signer key ``PRIVATE+KEY+<name>+<key id>+<base64(type || seed)>``;
  type 0x01 is an Ed25519 note signature;
* tlog-checkpoint body: ``<origin>\\n<size>\\n<base64 root>\\n`` then
  optional extension lines;
* tlog-cosignature/v1 (type 0x04): the witness signs
  ``cosignature/v1\\ntime <t>\\n`` + the checkpoint body, and the signature
  bytes are ``key id || uint64 big-endian t || Ed25519 signature``.

Only the public half is needed to verify anything here.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "


class NoteError(ValueError):
    """A malformed note, key or checkpoint (the message says what is wrong)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise NoteError(f"{what} is not base64") from None
    if _b64(raw) != text:
        # Unused padding bits set: the same bytes spelled differently. Refused,
        # so a signed note or proof has exactly one spelling.
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    name: str
    alg: int
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.alg, self.public)

    def text(self) -> str:
        return f"{self.name}+{self.id.hex()}+{_b64(bytes([self.alg]) + self.public)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
            return True
        except InvalidSignature:
            return False


def parse_verifier(text: str) -> Verifier:
    """A verifier key from its one-line text form (as in ``signing.pub``)."""
    parts = text.strip().split("+", 2)  # the base64 part may hold '+'
    if len(parts) != 3:
        raise NoteError("a verifier key is <name>+<key id>+<base64 key>")
    name, hexid, b64 = parts
    _check_name(name)
    raw = _unb64(b64, "verifier key")
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise NoteError("verifier key is not an Ed25519 (0x01) or cosignature/v1 (0x04) key")
    v = Verifier(name, raw[0], raw[1:])
    if v.id.hex() != hexid.lower():
        raise NoteError(f"verifier key id {hexid} does not match its key (expected {v.id.hex()})")
    return v


@dataclass(frozen=True)
class Signer:
    name: str
    alg: int
    seed: bytes

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> "Signer":
        _check_name(name)
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, alg, seed)

    @property
    def verifier(self) -> Verifier:
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, self.alg, pub)

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def text(self) -> str:
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id.hex()}+{_b64(bytes([self.alg]) + self.seed)}"


def parse_signer(text: str) -> Signer:
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError("a signing key is PRIVATE+KEY+<name>+<key id>+<base64 key>")
    name, hexid, b64 = parts[2:]
    _check_name(name)
    raw = _unb64(b64, "signing key")
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise NoteError("signing key is not an Ed25519 key")
    s = Signer(name, raw[0], raw[1:])
    if s.verifier.id.hex() != hexid.lower():
        raise NoteError("signing key id does not match its key")
    return s


# ---- signed notes -----------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    data: bytes  # after the key id: the signature (0x01) or timestamp+signature (0x04)

    def line(self) -> str:
        return f"{_DASH}{self.name} {_b64(self.id + self.data)}\n"


def check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("note text must end in a newline and hold no blank line")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text holds a control character")


def sign_note(text: str, *signers: Signer) -> str:
    """``text`` with one Ed25519 signature line per signer."""
    check_text(text)
    msg = text.encode("utf-8")
    sigs = [Signature(s.name, s.verifier.id, s.sign(msg)) for s in signers]
    return text + "\n" + "".join(sig.line() for sig in sigs)


def split_note(note: str) -> tuple[str, list[Signature]]:
    """The text and the signature lines of a signed note (nothing verified yet)."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("not a signed note: no blank line before the signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    check_text(text)
    if not block.endswith("\n"):
        raise NoteError("signature block must end in a newline")
    sigs = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, _, b64 = line[len(_DASH) :].partition(" ")
        _check_name(name)
        raw = _unb64(b64, "signature")
        if len(raw) < 5:
            raise NoteError("signature too short")
        sigs.append(Signature(name, raw[:4], raw[4:]))
    if not sigs:
        raise NoteError("note has no signatures")
    return text, sigs


def verify_note(note: str, verifier: Verifier) -> str:
    """The note's text, if ``verifier`` signed it (an Ed25519 note signature)."""
    text, sigs = split_note(note)
    for sig in sigs:
        if sig.name == verifier.name and sig.id == verifier.id:
            if verifier.verify(text.encode("utf-8"), sig.data):
                return text
            raise NoteError(f"signature by {verifier.name} does not verify")
    raise NoteError(f"note is not signed by {verifier.name}+{verifier.id.hex()}")


# ---- checkpoints ------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a size and a root hash line")
    origin, size, root = lines[:3]
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        raise NoteError(f"checkpoint size {size!r} is not a decimal number")
    raw = _unb64(root, "checkpoint root hash")
    if len(raw) != 32:
        raise NoteError("checkpoint root hash is not 32 bytes")
    return Checkpoint(origin, int(size), raw, tuple(lines[3:]))


# ---- cosignatures (C2SP tlog-cosignature, cosignature/v1) -------------------

def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode("utf-8")


def cosign(checkpoint_text: str, signer: Signer, timestamp: int) -> Signature:
    if signer.alg != ALG_COSIGNATURE_V1:
        raise NoteError("a witness key must be a cosignature/v1 (0x04) key")
    sig = signer.sign(cosigned_message(checkpoint_text, timestamp))
    return Signature(signer.name, signer.verifier.id, struct.pack(">Q", timestamp) + sig)


def verify_cosignature(checkpoint_text: str, sig: Signature, verifier: Verifier) -> int:
    """The cosignature's timestamp, if ``verifier`` made ``sig`` over this checkpoint."""
    if verifier.alg != ALG_COSIGNATURE_V1:
        raise NoteError(f"{verifier.name} is not a cosignature/v1 key")
    if sig.name != verifier.name or sig.id != verifier.id:
        raise NoteError(f"signature is not by {verifier.name}")
    if len(sig.data) != 8 + 64:
        raise NoteError("cosignature has the wrong length")
    (timestamp,) = struct.unpack(">Q", sig.data[:8])
    if not verifier.verify(cosigned_message(checkpoint_text, timestamp), sig.data[8:]):
        raise NoteError(f"cosignature by {verifier.name} does not verify")
    return timestamp
