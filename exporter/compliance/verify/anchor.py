"""The end of the archive, anchored outside it: cutting whole records off
the end of the newest file leaves nothing inside the archive to show it, so
verify checks that end against the exporter's checkpoint
(``STATE_DIR/checkpoint.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter import checkpoint as ckpt

from .problems import CHECKPOINT, Problem, VerifyUsageError


@dataclass
class Anchor:
    """What the exporter's checkpoint says about the end of the archive."""

    state: dict | None = None   # its ArchiveWriter.state(): file, size, seq, head_hash
    trusted: bool = False       # keyed with the archive key (or: a keyless archive)
    warning: str | None = None  # why the end cannot be fully checked
    problem: Problem | None = None  # the checkpoint itself was tampered with


def read_anchor(state_dir: Path, key: bytes | None) -> Anchor:
    """The checkpoint as an external anchor for the end of the archive.

    Trusted: ``checkpoint.json`` with a valid envelope, keyed with ``key``
    when the archive is keyed. A keyed envelope that fails its HMAC, or a
    digest that does not match, is tampering (BROKEN). An unkeyed envelope
    in a keyed archive (an exporter older than keyed checkpoints, or a
    rewrite by someone without the key), only ``.prev`` left, or nothing at
    all: the state found (if any) is still checked, but the end of the
    archive is not anchored (a warning). An unreadable file (permissions) is
    a usage error: verify cannot do what was asked.
    """
    name = state_dir / ckpt.CHECKPOINT_NAME
    state, why = ckpt.read_file(str(name), key)
    if state is not None:
        return Anchor(state.get("archive"), trusted=True)
    if why == "bad_digest":
        detail = ("its HMAC does not match (rewritten, or written with another key)" if key is not None
                  else "its digest does not match its content (edited)")
        return Anchor(problem=Problem(CHECKPOINT, str(name), None, None, detail))
    if why == "not_keyed":
        state, _ = ckpt.read_file(str(name), None)
        return Anchor((state or {}).get("archive"), warning=(
            f"{name} is not keyed with the archive key (written by an exporter older than keyed "
            "checkpoints, or replaced by someone without the key): records cut from the end "
            "cannot be ruled out"))
    if why.startswith("journal_corrupt"):  # format 3: a record damaged before the last one
        return Anchor(problem=Problem(CHECKPOINT, str(name), None, None,
                                      f"its journal cannot be replayed: {why}"))
    if why not in ("missing", "empty", "not_json", "bad_format", "needs_key") \
            and not why.startswith("journal_missing"):
        raise VerifyUsageError(f"cannot read {name}: {why}")
    prev, _ = ckpt.read_file(str(name) + ".prev", key)
    if prev is not None:
        reason, _, journal = why.partition(" ")  # "journal_missing (<file>)"
        return Anchor(prev.get("archive"), warning=(
            f"{name} is {reason.replace('_', ' ')}{' ' + journal if journal else ''}; checked against {name.name}.prev, so records "
            "committed after it cannot be checked"))
    where = f"no checkpoint in {state_dir}" if state_dir.is_dir() else f"no state directory {state_dir}"
    return Anchor(warning=f"{where}: records cut from the end of the newest file cannot be ruled out "
                          "(pass --state-dir if the exporter keeps its state elsewhere)")
