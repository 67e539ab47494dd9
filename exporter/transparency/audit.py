"""``verify DIR --public-key FILE``: check the transparency log with public keys only.

No secret is needed, and holding the host's secrets (the HMAC key, today's
signing key) is not enough to pass it with a rewritten history:

1. every archived record is recomputed into its leaf (with its salt from the
   tree file) and must equal leaf ``seq - 1``; seqs must run 1, 2, ... without
   gaps (a day deleted by retention is skipped through its manifest's record
   of the deletion); the tree must have no leaf without a record;
2. every signed checkpoint must verify against *its own* epoch's key: the
   walk starts at the key given (``signing.pub``) and moves to the next epoch
   only through a checkpoint that the current key signed and that names the
   new key (and seals the previous day's checkpoint file by its SHA-256),
   so a key stolen later cannot re-sign an earlier day (CVE-2023-31439);
3. each checkpoint's root must be the root of the first ``size`` leaves,
   sizes never shrink and the origin never changes (consecutive checkpoints
   recomputed from the same leaves are consistent by construction);
4. with ``--witness-key``: every cosignature by a known witness must verify,
   and a checkpoint must carry ``--min-witnesses`` of them (the newest such
   is the witnessed size; records after it are reported, not failed);
5. RFC 3161 tokens over checkpoints verify against ``--tsa-cert``
   (:func:`exporter.transparency.tsa.verify_token`);
6. the signing times (``vllm-audit-time``) of consecutive checkpoints are at
   most ``--max-gap`` seconds apart (a stopped exporter signs no heartbeat);
7. a day's manifest, if it records the tree (``tree_size``/``tree_root``),
   agrees with the tree.

The first problem named is the first broken record or checkpoint.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from exporter.archive import manifest as mf
from exporter.archive.layout import iter_lines, list_days, tree_path
from exporter.transparency import leaf_line
from exporter.transparency.audit_checkpoints import check_checkpoints
from exporter.transparency.audit_report import Problem, Report  # noqa: F401  (Problem: part of the API)
from exporter.transparency.leaf import record_leaf
from exporter.transparency.note import NoteError, Verifier, parse_verifier
from exporter.transparency.tree import ENTRY, TreeReader

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


class _Entries:
    """The tree file's entries as a read-only sequence, read in chunks (an
    archive of millions of records is verified in constant memory)."""

    CHUNK = 8192

    def __init__(self, reader: TreeReader, n: int, part: slice = slice(None)) -> None:
        self.reader, self.n, self.part = reader, n, part
        self._lo, self._chunk = -1, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < self.n:
            raise IndexError(i)
        lo = i - i % self.CHUNK
        if lo != self._lo:
            self._chunk = self.reader.read(lo, min(lo + self.CHUNK, self.n), self.part)
            self._lo = lo
        return self._chunk[i - lo]

    def span(self, lo: int, hi: int):
        """Entries ``lo..hi-1`` (an iterator, read a chunk at a time)."""
        for a in range(lo, hi, self.CHUNK):
            yield from self.reader.read(a, min(a + self.CHUNK, hi), self.part)


def _records(root: Path, salts_leaves, report: Report) -> None:
    n = len(salts_leaves)
    expected = 1
    last_name = None
    for day in list_days(root):
        if day.data is None:
            m = _manifest(day)
            ret = (m or {}).get(mf.RETENTION_FIELD)
            if m and isinstance(ret, dict) and isinstance(m.get("last_seq"), int):
                report.retained_days.append(day.day)
                expected = m["last_seq"] + 1  # their leaves stay in the tree
                continue
            if m is not None or day.manifest is None:
                report.problem("missing_file", day.day, "the day's records are gone and no retention run "
                               "recorded deleting them", expected)
                return
            continue
        name = last_name = day.data.name
        for line_no, raw in enumerate(iter_lines(day.data), 1):
            # Fast path: the leaf from the line's bytes, trusted only to
            # accept (leaf_line.py says why that is sound); anything else is
            # decided, and its problem named, by the definition below.
            if expected <= n:
                entry = salts_leaves[expected - 1]
                if leaf_line.verify_line(raw, entry[:16], entry[16:]) == expected:
                    report.records += 1
                    expected += 1
                    continue
            where = f"{name} line {line_no}"
            try:
                rec = json.loads(raw)
                seq = rec["seq"]
            except (ValueError, KeyError, TypeError):
                report.problem("unreadable", where, "not an archive record", expected)
                return
            if not isinstance(seq, int) or seq < expected:
                report.problem("inserted", where, f"seq {seq!r} where seq {expected} belongs: a record "
                               "inserted, duplicated or moved", expected)
                return
            if seq > expected:
                report.problem("deleted", where, f"records seq {expected}..{seq - 1} are missing "
                               f"(deleted, or reordered)", expected)
                return
            if seq > n:
                report.problem("not_in_tree", where, f"the tree has {n} leaves: this record was never "
                               "logged (inserted?)", seq)
                return
            entry = salts_leaves[seq - 1]
            if record_leaf(rec, entry[:16]) != entry[16:]:
                report.problem("edited", where, "the record does not match its Merkle leaf "
                               f"{seq - 1} (edited)", seq)
                return
            report.records += 1
            expected += 1
    if expected - 1 < n:
        end = f"end of {last_name}" if last_name else "archive"
        report.problem("deleted", end, f"the archive ends at seq {expected - 1} but the tree has "
                       f"{n} leaves: records seq {expected}..{n} were deleted", expected)


def _manifest(day) -> dict | None:
    if day.manifest is None:
        return None
    try:
        return mf.read_manifest(day.manifest)
    except (OSError, ValueError):
        return None


def _manifests(root: Path, reader: TreeReader, n: int, report: Report) -> None:
    for day in list_days(root):
        m = _manifest(day)
        if not m or not isinstance(m.get("tree_size"), int) or not isinstance(m.get("tree_root"), str):
            continue
        size = m["tree_size"]
        if size > n or base64.b64encode(reader.root(size)).decode() != m["tree_root"]:
            report.problem("manifest_mismatch", day.manifest.name, f"the tree of {size} records recorded "
                           "when the day was sealed is not the tree on disk")
            return


def audit(root: Path, genesis: Verifier, *, witnesses: list[Verifier] = (), min_witnesses: int = 0,
          max_gap: float | None = None, tsa_cert: str | None = None, now: float | None = None) -> Report:
    report = Report()
    root = Path(root)
    path = tree_path(root)
    reader = TreeReader(path)
    if path.exists() and path.stat().st_size % ENTRY:
        report.problem("unreadable", str(path.relative_to(root)), "the tree file ends in a torn entry")
        return report
    n = reader.size()
    report.tree_size = n
    entries, leaves = _Entries(reader, n), _Entries(reader, n, slice(16, None))
    _records(root, entries, report)
    check_checkpoints(root, genesis, leaves, reader, list(witnesses), min_witnesses, max_gap, tsa_cert, report,
                      now=time.time() if now is None else now)
    _manifests(root, reader, n, report)
    return report


def render(report: Report) -> str:
    lines = []
    if report.ok:
        w = f", witnessed up to {report.witnessed_size}" if report.witnessed_size is not None else ""
        lines.append(f"OK: {report.records} record(s) in a tree of {report.tree_size}, "
                     f"{report.checkpoints} signed checkpoint(s) ({report.first_time} .. {report.last_time}), "
                     f"{len(report.epochs)} key epoch(s), signed size {report.signed_size}{w}")
    else:
        lines.append(f"BROKEN: {report.problems[0]}")
        lines += [f"also: {p}" for p in report.problems[1:]]
    lines += [f"WARNING: {w}" for w in report.warnings]
    return "\n".join(lines)


def load_verifier(path: str, what: str, *, alg: int | None = None) -> Verifier:
    try:
        v = parse_verifier(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, NoteError) as exc:
        raise ValueError(f"{what}: {path} is not a verifier key ({exc})") from None
    if alg is not None and v.alg != alg:
        raise ValueError(f"{what}: {path} is not a {'witness (cosignature/v1)' if alg == 4 else 'log'} key")
    return v


def audit_main(archive_dir: str | None, *, public_key: str, witness_keys: list[str] = (),
               min_witnesses: int | None = None, max_gap: float | None = None, tsa_cert: str | None = None,
               fmt: str = "text", out=None, err=None) -> int:
    import sys
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if not archive_dir:
            raise ValueError("give the archive DIR (or --proof FILE)")
        root = Path(archive_dir)
        if not root.is_dir():
            raise ValueError(f"DIR: {root}: no such directory")
        genesis = load_verifier(public_key, "--public-key", alg=1)
        witnesses = [load_verifier(w, "--witness-key", alg=4) for w in witness_keys or ()]
        if min_witnesses is None:
            min_witnesses = 1 if witnesses else 0
        if min_witnesses < 0 or min_witnesses > len(witnesses):
            raise ValueError(f"--min-witnesses {min_witnesses}: give at least that many --witness-key files")
        if max_gap is not None and max_gap <= 0:
            raise ValueError(f"--max-gap: must be > 0, got {max_gap:g}")
    except ValueError as exc:
        print(f"verify: {exc}", file=err)
        return EXIT_USAGE
    report = audit(root, genesis, witnesses=witnesses, min_witnesses=min_witnesses, max_gap=max_gap,
                   tsa_cert=tsa_cert)
    if fmt == "json":
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False), file=out)
    else:
        print(render(report), file=out)
    return EXIT_OK if report.ok else EXIT_BROKEN
