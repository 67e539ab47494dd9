"""The walk of the hash chain: every day file oldest first, every record's
hash recomputed (HMAC-SHA256 with the key, else SHA-256), seq continuity and
``prev_hash`` links within and across files (also across days whose data file
retention deleted, through their manifest), stopping at the FIRST broken link
and classifying it (edited, inserted, deleted, reordered, ...) with one line
of lookahead."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.chain import GENESIS, Chain, digest_kind
from exporter.archive.layout import DayFiles, data_name, iter_lines, list_days

from .manifests import against_manifest, checked_manifest, unexplained_deletion
from .problems import (
    BROKEN_LINK, DELETED, DELETED_FILE, EDITED, INSERTED, MISSING_FILE, MISSING_MANIFEST, REORDERED, TORN,
    TRUNCATED, Problem, Report, VerifyUsageError,
)


@dataclass
class _Line:
    no: int
    raw: bytes
    rec: dict | None  # None: not a sealed record

    @property
    def seq(self):
        return self.rec.get("seq") if self.rec else None


def parse_record(raw: bytes) -> dict | None:
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
        return _Line(self._no, raw, parse_record(raw) if raw.endswith(b"\n") else None)

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
                rec = parse_record(line.raw)
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
            return against_manifest(name, manifest, count, first, last, reader.digest.hexdigest())
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

    def manifest_only(self, day: DayFiles, m: dict) -> Problem | None:
        name = data_name(day.day)
        why = unexplained_deletion(day.day, m)
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
        manifest, problem = checked_manifest(day.manifest, key, first=walk.r.records == 0)
        if problem:
            return problem
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


def first_hash_kind(root: Path) -> str | None:
    """The digest kind of the archive's first readable record (None: none)."""
    for day in list_days(root):
        if day.data is None:
            continue
        try:
            for raw in iter_lines(day.data):
                rec = parse_record(raw)
                if rec:
                    return digest_kind(rec["hash"])
        except (EOFError, OSError, zlib.error):
            return None
    return None
