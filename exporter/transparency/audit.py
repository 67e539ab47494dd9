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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from exporter.archive import manifest as mf
from exporter.archive.layout import iter_lines, list_checkpoint_files, list_days, tree_path
from exporter.transparency import merkle
from exporter.transparency.leaf import record_leaf
from exporter.transparency.log import EXT_EPOCH, EXT_SEAL, EXT_TIME, extensions
from exporter.transparency.note import (NoteError, Verifier, parse_checkpoint, parse_verifier, split_note,
                                        verify_cosignature, verify_note)
from exporter.transparency.store import file_sha256, read_entries
from exporter.transparency.tree import ENTRY, TreeReader

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def _utc(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Problem:
    kind: str
    where: str
    detail: str
    seq: int | None = None

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.where}{seq}: {self.kind}: {self.detail}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: int = 0
    tree_size: int = 0
    checkpoints: int = 0
    signed_size: int | None = None
    signed_root: str | None = None
    first_time: str | None = None
    last_time: str | None = None
    epochs: list[dict] = field(default_factory=list)
    witnessed_size: int | None = None
    witnesses: dict[str, int] = field(default_factory=dict)  # witness name -> checkpoints cosigned
    timestamps: int = 0
    gaps: list[dict] = field(default_factory=list)
    retained_days: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, where: str, detail: str, seq: int | None = None) -> None:
        self.problems.append(Problem(kind, where, detail, seq))

    def to_json(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["first_problem"] = str(self.problems[0]) if self.problems else None
        return out


def _records(root: Path, salts_leaves: list[bytes], report: Report) -> None:
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


class _Roots:
    """Root of the first ``size`` leaves, computed incrementally for growing sizes."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.frontier = merkle.Frontier()

    def root(self, size: int) -> bytes:
        if size < self.frontier.size:
            return merkle.root(self.leaves[:size])
        while self.frontier.size < size:
            self.frontier.append(self.leaves[self.frontier.size])
        return self.frontier.root()


def _checkpoints(root: Path, genesis: Verifier, leaves: list[bytes], witnesses: list[Verifier],
                 min_witnesses: int, max_gap: float | None, tsa_cert: str | None, report: Report) -> None:
    files = list_checkpoint_files(root)
    if not files:
        report.problem("no_checkpoint", "tlog", "no signed checkpoint: nothing proves the archive")
        return
    roots = _Roots(leaves)
    key, key_day = genesis, files[0][0]  # the first key signs the first day
    keys_seen: dict[str, Verifier] = {genesis.text(): genesis}
    report.epochs.append({"from": None, "key": genesis.text()})
    origin = None
    prev_size, prev_t, prev_where = 0, None, None
    matched_size = 0  # largest size whose signed root matched the tree
    signed: list[tuple[str, object, str]] = []  # (text, checkpoint, where)
    cosigs: dict[str, list[str]] = {}
    tokens: list[tuple[str, bytes, str]] = []
    sealed: set[str] = set()
    days = [d for d, _ in files]
    for day, path in files:
        for line_no, entry, _ in read_entries(path):
            where = f"{path.name} line {line_no}"
            kind = entry.get("kind") if entry else None
            if kind == "cosignatures" and isinstance(entry.get("checkpoint"), str):
                cosigs.setdefault(entry["checkpoint"], []).extend(x for x in entry.get("lines") or () if isinstance(x, str))
                continue
            if kind == "timestamp" and isinstance(entry.get("checkpoint"), str):
                try:
                    tokens.append((entry["checkpoint"], base64.b64decode(entry["token"], validate=True), where))
                except (ValueError, TypeError, KeyError):
                    report.problem("timestamp", where, "timestamp token is not base64")
                continue
            if kind == "epoch":
                continue
            if kind != "checkpoint" or not isinstance(entry.get("note"), str):
                report.problem("unreadable", where, "not a checkpoint store entry")
                return
            note = entry["note"]
            try:
                text, sigs = split_note(note)
                cp = parse_checkpoint(text)
            except NoteError as exc:
                report.problem("bad_checkpoint", where, str(exc))
                return
            ext = extensions(cp)
            if EXT_EPOCH in ext:
                try:
                    verify_note(note, key)
                    e_day, e_key = ext[EXT_EPOCH][0].split(" ", 1)
                    new = parse_verifier(e_key)
                    verify_note(note, new)
                except (NoteError, ValueError) as exc:
                    report.problem("bad_epoch", where, f"new epoch key not certified by the previous epoch's "
                                   f"key {key.text()}: {exc}")
                    return
                if e_day != day:
                    report.problem("bad_epoch", where, f"epoch {e_day} certified in the file of {day}")
                    return
                for seal in ext.get(EXT_SEAL, []):
                    s_day, _, digest = seal.partition(" ")
                    s_path = dict(files).get(s_day)
                    if s_path is None or file_sha256(s_path) != digest:
                        report.problem("seal", f"checkpoints-{s_day}.jsonl", "the day's checkpoint file is not "
                                       f"the one sealed in {where} (edited, appended to or deleted)")
                        return
                    sealed.add(s_day)
                key, key_day = new, e_day
                keys_seen[new.text()] = new
                report.epochs.append({"from": e_day, "key": new.text()})
            else:
                try:
                    verify_note(note, key)
                except NoteError:
                    other = next((k for t, k in keys_seen.items() if k != key and _signed_by(note, k)), None)
                    why = (f"signed by another epoch's key {other.text()}, not its own {key.text()}" if other
                           else f"not signed by its epoch's key {key.text()}")
                    report.problem("bad_signature", where, why)
                    return
            if key_day is not None and key_day != day:
                report.problem("bad_epoch", where, f"checkpoint in the file of {day} signed by the key of {key_day}")
                return
            if origin is None:
                origin = cp.origin
            elif cp.origin != origin:
                report.problem("origin", where, f"origin {cp.origin!r} after {origin!r}")
                return
            if cp.size < prev_size:
                report.problem("rollback", where, f"tree size {cp.size} after {prev_size} ({prev_where}): "
                               "the history was cut back")
                return
            if cp.size > len(leaves):
                report.problem("deleted", where, f"signed tree size {cp.size} but the tree file has "
                               f"{len(leaves)} leaves: newest records deleted", len(leaves) + 1)
                return
            if roots.root(cp.size) != cp.root:
                lo = matched_size + 1
                report.problem("tree_mismatch", where, f"the tree of {cp.size} records is not the one signed "
                               f"here: records seq {lo}..{cp.size} were rewritten after signing", lo)
                return
            matched_size = cp.size
            t = None
            try:
                t = int(ext.get(EXT_TIME, [""])[0])
            except ValueError:
                report.problem("bad_checkpoint", where, "no signing time line")
                return
            if prev_t is not None and t < prev_t:
                report.problem("time", where, f"signed at {_utc(t)}, before the previous checkpoint ({_utc(prev_t)})")
                return
            if prev_t is not None and max_gap is not None and t - prev_t > max_gap:
                report.gaps.append({"from": _utc(prev_t), "to": _utc(t), "seconds": t - prev_t,
                                    "after": prev_where, "checkpoint": where})
            report.first_time = report.first_time or _utc(t)
            report.last_time = _utc(t)
            prev_size, prev_t, prev_where = cp.size, t, where
            report.checkpoints += 1
            report.signed_size, report.signed_root = cp.size, base64.b64encode(cp.root).decode()
            signed.append((text, cp, where))
    for d in days[:-1]:
        if d not in sealed:
            report.problem("seal", f"checkpoints-{d}.jsonl", "a closed day's checkpoint file that no later "
                           "epoch sealed")
            return
    for gap in report.gaps:
        report.problem("gap", gap["checkpoint"], f"no checkpoint from {gap['from']} to {gap['to']} "
                       f"({gap['seconds']} s > --max-gap {max_gap:g} s): the exporter was not signing")
    if report.signed_size is not None and report.signed_size < len(leaves):
        report.warnings.append(f"records seq {report.signed_size + 1}..{len(leaves)} are after the newest "
                               "signed checkpoint")
    _witnesses(signed, cosigs, witnesses, min_witnesses, report)
    _timestamps(signed, tokens, tsa_cert, report)


def _signed_by(note: str, key: Verifier) -> bool:
    try:
        verify_note(note, key)
        return True
    except NoteError:
        return False


def _witnesses(signed, cosigs, witnesses: list[Verifier], min_witnesses: int, report: Report) -> None:
    if not witnesses:
        return
    by_name = {w.name: w for w in witnesses}
    for text, cp, where in signed:
        good = set()
        for line in cosigs.get(text, []):
            try:
                _, sigs = split_note("x\n\n" + line)
            except NoteError:
                continue
            for sig in sigs:
                w = by_name.get(sig.name)
                if w is None or sig.id != w.id:
                    continue  # someone else's cosignature: ignored, as C2SP says
                try:
                    verify_cosignature(text, sig, w)
                    good.add(w.name)
                except NoteError as exc:
                    report.problem("bad_cosignature", where, str(exc))
                    return
        for name in good:
            report.witnesses[name] = report.witnesses.get(name, 0) + 1
        if len(good) >= max(min_witnesses, 1):
            report.witnessed_size = cp.size
    if min_witnesses and report.witnessed_size is None:
        report.problem("quorum", "tlog", f"no checkpoint is cosigned by {min_witnesses} of the given "
                       "witnesses: nothing outside this host vouches for the history")
    elif report.witnessed_size is not None and report.signed_size is not None \
            and report.witnessed_size < report.signed_size:
        report.warnings.append(f"records seq {report.witnessed_size + 1}..{report.signed_size} are signed but "
                               "not yet cosigned by the witness quorum")


def _timestamps(signed, tokens, tsa_cert: str | None, report: Report) -> None:
    if not tokens:
        return
    if tsa_cert is None:
        report.warnings.append(f"{len(tokens)} RFC 3161 timestamp token(s) not checked (no --tsa-cert)")
        return
    try:
        from exporter.transparency.tsa import TsaError, verify_token
    except ImportError:
        report.warnings.append(f"{len(tokens)} timestamp token(s) not checked: exporter.transparency.tsa "
                               "is not installed")
        return
    texts = {text for text, _, _ in signed}
    for text, token, where in tokens:
        if text not in texts:
            report.problem("timestamp", where, "timestamp over a checkpoint this log never signed")
            return
        try:
            verify_token(token, text.encode("utf-8"), tsa_cert)
        except TsaError as exc:
            report.problem("timestamp", where, f"RFC 3161 token does not verify: {exc}")
            return
        report.timestamps += 1


def _manifests(root: Path, leaves: list[bytes], report: Report) -> None:
    for day in list_days(root):
        m = _manifest(day)
        if not m or not isinstance(m.get("tree_size"), int) or not isinstance(m.get("tree_root"), str):
            continue
        size = m["tree_size"]
        if size > len(leaves) or base64.b64encode(merkle.root(leaves[:size])).decode() != m["tree_root"]:
            report.problem("manifest_mismatch", day.manifest.name, f"the tree of {size} records recorded "
                           "when the day was sealed is not the tree on disk")
            return


def audit(root: Path, genesis: Verifier, *, witnesses: list[Verifier] = (), min_witnesses: int = 0,
          max_gap: float | None = None, tsa_cert: str | None = None) -> Report:
    report = Report()
    root = Path(root)
    path = tree_path(root)
    reader = TreeReader(path)
    if path.exists() and path.stat().st_size % ENTRY:
        report.problem("unreadable", str(path.relative_to(root)), "the tree file ends in a torn entry")
        return report
    entries = reader.entries(0, reader.size()) if path.exists() else []
    report.tree_size = len(entries)
    leaves = [e[16:] for e in entries]
    _records(root, entries, report)
    _checkpoints(root, genesis, leaves, list(witnesses), min_witnesses, max_gap, tsa_cert, report)
    _manifests(root, leaves, report)
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
