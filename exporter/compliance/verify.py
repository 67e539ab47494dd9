"""``vllm-audit-exporter verify DIR``: check the archive's chain and manifests.

Walks the day files oldest first, recomputes every record's hash, checks seq
continuity and ``prev_hash`` links within and across files (also across days
whose data file retention deleted, through their manifest), and compares
closed days to their manifests. Stops at the FIRST broken link and names it.

The end of the newest file is checked against the exporter's checkpoint
(``STATE_DIR/checkpoint.json``, see :func:`read_anchor`): cutting whole
records off the end leaves nothing inside the archive to show it. A day
whose data file is gone is accepted only when its manifest holds the record
that a retention run wrote before deleting it (keyed like the manifest).

Exit codes: 0 intact, 1 broken (tampered, truncated, missing, a deletion no
retention run recorded, a checkpoint that fails its HMAC), 2 cannot verify
(no archive, unreadable key or directory, keyed archive without a key), 3
the chain is intact but its end cannot be checked (no checkpoint, or one
that cannot be trusted): records cut from the end are not ruled out.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from exporter import checkpoint as ckpt
from exporter.chain import GENESIS, Chain, KeyLoadError, digest_kind, load_key
from exporter.archive import manifest as mf
from exporter.archive.layout import DayFiles, data_name, iter_lines, list_days
from exporter.durable import DirError, usable_dir

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_UNANCHORED = 0, 1, 2, 3

# Problem kinds (stable strings, documented in docs/compliance.md).
EDITED, DELETED, INSERTED, REORDERED, BROKEN_LINK = "edited", "deleted", "inserted", "reordered", "broken_link"
TRUNCATED, TORN, MISSING_FILE, MISSING_MANIFEST = "truncated", "torn_line", "missing_file", "missing_manifest"
MANIFEST_MISMATCH, UNREADABLE = "manifest_mismatch", "unreadable"
DELETED_FILE, CHECKPOINT = "deleted_file", "checkpoint"


class VerifyUsageError(Exception):
    """The archive cannot be verified as asked (exit code 2)."""


@dataclass
class Problem:
    kind: str
    file: str
    line: int | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = self.file + (f" line {self.line}" if self.line else "")
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{where}{seq}: {self.kind}: {self.detail}"


@dataclass
class Report:
    problem: Problem | None = None
    files: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    chain: str | None = None
    retained_days: list[str] = field(default_factory=list)
    # Why the end of the archive could not be checked (exit 3); empty when
    # a trusted checkpoint anchored it.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Line:
    no: int
    raw: bytes
    rec: dict | None  # None: not a sealed record

    @property
    def seq(self):
        return self.rec.get("seq") if self.rec else None


def _parse(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or not isinstance(rec.get("hash"), str):
        return None
    return rec


class _Reader:
    """Lines of one file with one line of lookahead (for classification)."""

    def __init__(self, path: Path) -> None:
        self._it: Iterator[bytes] = iter_lines(path)
        self._no = 0
        self._peeked: _Line | None = None
        self.digest = hashlib.sha256()

    def _read(self) -> _Line | None:
        raw = next(self._it, None)
        if raw is None:
            return None
        self._no += 1
        self.digest.update(raw)
        return _Line(self._no, raw, _parse(raw) if raw.endswith(b"\n") else None)

    def next(self) -> _Line | None:
        if self._peeked is not None:
            line, self._peeked = self._peeked, None
            return line
        return self._read()

    def peek(self) -> _Line | None:
        if self._peeked is None:
            self._peeked = self._read()
        return self._peeked


class _Walk:
    def __init__(self, chain: Chain, report: Report) -> None:
        self.chain, self.r = chain, report
        self.exp, self.head = 1, GENESIS
        self.seen_hash: dict[int, str] = {}
        self.want: set[int] = set()

    def _advance(self, seq: int, h: str) -> None:
        if seq in self.want:
            self.seen_hash[seq] = h
        self.exp, self.head = seq + 1, h

    def data_file(self, day: DayFiles, manifest: dict | None) -> Problem | None:
        path, name = day.data, day.data.name
        reader = _Reader(path)
        count, first, last = 0, None, None
        while (line := reader.next()) is not None:
            count += 1
            if not line.raw.endswith(b"\n"):
                rec = _parse(line.raw)
                seq = rec.get("seq") if rec else None
                if manifest is not None:
                    return Problem(TRUNCATED, name, line.no, seq, "file ends mid-line; its manifest says "
                                   f"it ends at seq {manifest.get('last_seq')}")
                return Problem(TORN, name, line.no, seq, "last line is incomplete (writer crashed mid-write; "
                               "the exporter drops it on restart)")
            problem = self._line(line, reader, name)
            if problem:
                return problem
            first = first or line.rec
            last = line.rec
            self._advance(line.rec["seq"], line.rec["hash"])
            self.r.records += 1
        if manifest is not None:
            return self._against_manifest(name, manifest, count, first, last, reader.digest.hexdigest())
        return None

    def _line(self, line: _Line, reader: _Reader, name: str) -> Problem | None:
        rec = line.rec
        if rec is None:
            return Problem(EDITED, name, line.no, None, "line is not a sealed JSON record")
        if self.r.chain is None:
            self.r.chain = digest_kind(rec["hash"])
        hash_ok = self.chain.verify_record(rec)
        if hash_ok and rec["seq"] == self.exp and rec.get("prev_hash") == self.head:
            return None
        seq, nxt = rec["seq"], reader.peek()
        if hash_ok and seq > self.exp:
            return self._gap(line, reader, name, seq)
        if nxt is not None and nxt.rec and nxt.seq == self.exp and nxt.rec.get("prev_hash") == self.head:
            return Problem(INSERTED, name, line.no, seq, f"record is not part of the chain; the next line "
                           f"continues from seq {self.exp - 1}")
        if not hash_ok:
            detail = "record content does not match its hash"
            if digest_kind(rec["hash"]) != self.chain.kind:
                detail = f"hash is {digest_kind(rec['hash'])}, expected {self.chain.kind}"
                if self.chain.kind == "hmac-sha256":
                    detail += " (unkeyed hash in a keyed chain)"
            elif self.r.records == 0:
                detail += " (first record checked: wrong HMAC key?)"
            return Problem(EDITED, name, line.no, seq, detail)
        if seq == self.exp:
            return Problem(BROKEN_LINK, name, line.no, seq, "prev_hash does not match the previous "
                           "record's hash (record replaced or taken from another chain)")
        return Problem(REORDERED, name, line.no, seq, f"seq {seq} appears after seq {self.exp - 1}")

    def _gap(self, line: _Line, reader: _Reader, name: str, seq: int) -> Problem:
        """A genuine record ahead of the expected seq: moved, deleted or a missing file."""
        while (later := reader.next()) is not None:
            if later.seq == self.exp:
                return Problem(REORDERED, name, line.no, seq, f"expected seq {self.exp}, which appears "
                               f"later at line {later.no}")
        gap = f"seq {self.exp}..{seq - 1}" if seq - 1 > self.exp else f"seq {self.exp}"
        if line.no == 1:
            return Problem(MISSING_FILE, name, 1, seq, f"{gap} missing before this file (a day file "
                           "deleted without its manifest, or records cut from the previous file)")
        return Problem(DELETED, name, line.no, seq, f"{gap} missing ({seq - self.exp} record(s) deleted)")

    def _against_manifest(self, name, m, count, first, last, sha) -> Problem | None:
        last_seq = last["seq"] if last else None
        if isinstance(m.get("last_seq"), int) and (last_seq or 0) < m["last_seq"]:
            return Problem(TRUNCATED, name, count or None, last_seq, f"file ends at seq {last_seq}, "
                           f"its manifest says {m['last_seq']} ({m.get('count')} lines)")
        actual = {"file": name.removesuffix(".gz"), "count": count,
                  "first_seq": first and first["seq"], "last_seq": last_seq,
                  "first_prev_hash": first and first.get("prev_hash"), "first_hash": first and first["hash"],
                  "last_hash": last and last["hash"], "sha256": sha}
        for key, value in actual.items():
            if m.get(key) != value:
                return Problem(MANIFEST_MISMATCH, name, None, None, f"manifest {key}={m.get(key)!r}, "
                               f"file has {value!r}")
        return None

    def manifest_only(self, day: DayFiles, m: dict) -> Problem | None:
        name = data_name(day.day)
        why = _unexplained_deletion(day.day, m)
        if why:
            return Problem(DELETED_FILE, name, None, m.get("first_seq"), why)
        if m.get("first_seq") != self.exp or m.get("first_prev_hash") != self.head:
            kind = MISSING_FILE if isinstance(m.get("first_seq"), int) and m["first_seq"] > self.exp else BROKEN_LINK
            return Problem(kind, name, None, m.get("first_seq"), f"file deleted by retention; its manifest "
                           f"does not continue the chain from seq {self.exp - 1}")
        self._advance(m["last_seq"], m["last_hash"])
        self.r.retained_days.append(day.day)
        self.r.records += int(m.get("count") or 0)
        return None


def _unexplained_deletion(day: str, m: dict) -> str | None:
    """Why the manifest does not account for its day's missing data file
    (None: a retention run recorded deleting it, consistently)."""
    rec = m.get(mf.RETENTION_FIELD)
    if not isinstance(rec, dict):
        return ("data file is gone but its manifest holds no retention record (deleted by hand "
                "or by an attacker, or by an exporter that did not yet record its deletions)")
    at, days = rec.get("at"), rec.get("delete_after_days")
    try:
        when = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    except ValueError:
        when = None
    if rec.get("deleted") not in (data_name(day), data_name(day) + ".gz") or when is None \
            or not isinstance(days, int) or days < 1:
        return f"data file is gone and its manifest's retention record is malformed: {rec!r}"
    if day >= (when - timedelta(days=days)).astimezone(timezone.utc).strftime("%Y-%m-%d"):
        return (f"data file is gone, but retention at {at} with delete_after_days={days} would not "
                "have deleted this day")
    return None


def verify_archive(root: Path, key: bytes | None, *, expected_state: dict | None = None) -> Report:
    """Verify the archive at ``root``; ``expected_state`` is an optional
    external anchor (the checkpoint's ``ArchiveWriter.state()``) that also
    catches a cut at the very end of the newest file."""
    root = Path(root)
    days = list_days(root)
    if not root.is_dir() or not days:
        raise VerifyUsageError(f"no archive files in {root}")
    chain = Chain(key)
    report = Report()
    walk = _Walk(chain, report)
    if expected_state and isinstance(expected_state.get("seq"), int):
        walk.want.add(expected_state["seq"])
    for i, day in enumerate(days):
        report.problem = _check_day(walk, day, is_newest=i == len(days) - 1, key=key)
        if report.problem:
            return report
    report.first_seq = 1 if walk.exp > 1 else None
    report.last_seq = walk.exp - 1 if walk.exp > 1 else None
    report.chain = report.chain or chain.kind
    if expected_state and isinstance(expected_state.get("seq"), int) and expected_state["seq"] > 0:
        seq = expected_state["seq"]
        if walk.exp - 1 < seq:
            report.problem = Problem(TRUNCATED, expected_state.get("file") or "?", None, report.last_seq,
                                     f"archive ends at seq {walk.exp - 1}, the checkpoint committed seq {seq}")
        elif seq in walk.seen_hash and walk.seen_hash[seq] != expected_state.get("head_hash"):
            report.problem = Problem(EDITED, expected_state.get("file") or "?", None, seq,
                                     "record differs from the checkpointed chain head")
    return report


def _check_day(walk: _Walk, day: DayFiles, *, is_newest: bool, key: bytes | None) -> Problem | None:
    manifest = None
    if day.manifest is not None:
        try:
            manifest = mf.read_manifest(day.manifest)
        except (OSError, ValueError) as exc:
            return Problem(MANIFEST_MISMATCH, day.manifest.name, None, None, f"unreadable manifest: {exc}")
        if not mf.hmac_ok(manifest, key):
            hint = " (edited, or wrong HMAC key)" if walk.r.records == 0 else " (edited)"
            return Problem(MANIFEST_MISMATCH, day.manifest.name, None, None, "manifest hmac invalid" + hint)
    if day.data is None:
        return walk.manifest_only(day, manifest)
    walk.r.files += 1
    if manifest is None and not is_newest:
        # The writer seals a day before it opens the next: a closed day
        # without a manifest means the manifest was removed.
        pass_problem = Problem(MISSING_MANIFEST, day.data.name, None, None, "closed day has no manifest")
    else:
        pass_problem = None
    try:
        problem = walk.data_file(day, manifest)
    except (EOFError, OSError, zlib.error) as exc:
        return Problem(TRUNCATED, day.data.name, None, None, f"cannot read file: {exc}")
    return problem or pass_problem


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
    if why not in ("missing", "empty", "not_json", "bad_format", "needs_key"):
        raise VerifyUsageError(f"cannot read {name}: {why}")
    prev, _ = ckpt.read_file(str(name) + ".prev", key)
    if prev is not None:
        return Anchor(prev.get("archive"), warning=(
            f"{name} is {why.replace('_', ' ')}; checked against {name.name}.prev, so records "
            "committed after it cannot be checked"))
    where = f"no checkpoint in {state_dir}" if state_dir.is_dir() else f"no state directory {state_dir}"
    return Anchor(warning=f"{where}: records cut from the end of the newest file cannot be ruled out "
                          "(pass --state-dir if the exporter keeps its state elsewhere)")


def verify_main(archive_dir: str, *, hmac_key_file: str | None = None, hmac_key_env: str | None = None,
                expected_state: dict | None = None, state_dir: str | None = None, out=None,
                err=None) -> int:
    """CLI entry point for ``verify DIR [--hmac-key-file F] [--state-dir S]``;
    returns the exit code. ``expected_state`` (an archive state the caller
    trusts) replaces reading the checkpoint from ``state_dir`` (default
    ``DIR/.state``)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        key = load_key(hmac_key_file, hmac_key_env)
        root = Path(archive_dir)
        _usable_dir(root, "DIR")
        if key is None and _first_hash_kind(root) == "hmac-sha256":
            raise VerifyUsageError("archive is HMAC-chained: pass --hmac-key-file or set VLLM_AUDIT_HMAC_KEY")
        if expected_state is not None:
            anchor = Anchor(expected_state, trusted=True)
        else:
            sdir = Path(state_dir) if state_dir else root / ".state"
            if sdir.exists():
                _usable_dir(sdir, "--state-dir")
            anchor = read_anchor(sdir, key)
        report = verify_archive(root, key, expected_state=anchor.state)
    except (KeyLoadError, VerifyUsageError) as exc:
        print(f"verify: {exc}", file=err)
        return EXIT_USAGE
    if report.problem is None and anchor.problem is not None:
        report.problem = anchor.problem
    if report.problem is not None:
        print(f"BROKEN: {report.problem}", file=out)
        return EXIT_BROKEN
    gaps = f", {len(report.retained_days)} day(s) deleted by retention (manifests kept)" if report.retained_days else ""
    seqs = f"seq {report.first_seq}..{report.last_seq}" if report.last_seq else "no records"
    print(f"OK: {report.files} file(s){gaps}, {report.records} record(s), {seqs}, chain {report.chain}", file=out)
    if not anchor.trusted:
        report.warnings.append(anchor.warning or "the end of the archive is not anchored")
        for warning in report.warnings:
            print(f"WARNING: {warning}", file=out)
        return EXIT_UNANCHORED
    return EXIT_OK


def _usable_dir(path: Path, what: str) -> None:
    """A directory verify can list, else a one-line usage error."""
    try:
        usable_dir(path, what)
    except DirError as exc:
        raise VerifyUsageError(str(exc)) from None


def _first_hash_kind(root: Path) -> str | None:
    for day in list_days(root):
        if day.data is None:
            continue
        try:
            for raw in iter_lines(day.data):
                rec = _parse(raw)
                if rec:
                    return digest_kind(rec["hash"])
        except (EOFError, OSError, zlib.error):
            return None
    return None
