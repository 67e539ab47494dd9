"""``verify --public-key``, the log side: signed checkpoints walked epoch by
epoch from the key given, their roots against the tree, seals of closed days,
witness cosignatures and quorum, RFC 3161 tokens, heartbeat gaps (see
:mod:`exporter.transparency.audit` for the list of checks)."""

from __future__ import annotations

import base64
from pathlib import Path

from exporter.archive.layout import list_checkpoint_files
from exporter.transparency import merkle
from exporter.transparency.audit_report import Report, _utc
from exporter.transparency.log import EXT_EPOCH, EXT_SEAL, EXT_TIME, extensions
from exporter.transparency.note import (NoteError, Verifier, parse_checkpoint, parse_verifier, split_note,
                                        verify_cosignature, verify_note)
from exporter.transparency.store import file_sha256, read_entries


class _Roots:
    """Root of the first ``size`` leaves, computed incrementally for growing sizes."""

    def __init__(self, leaves, reader) -> None:
        self.leaves, self.reader = leaves, reader
        self.frontier = merkle.Frontier()

    def root(self, size: int) -> bytes:
        if size < self.frontier.size:  # only a rolled-back size
            return self.reader.root(size)
        f = self.frontier
        if f.size < size:
            span = getattr(self.leaves, "span", None)  # audit._Entries: read in bulk
            f.extend(span(f.size, size) if span else self.leaves[f.size:size])
        return f.root()


def check_checkpoints(root: Path, genesis: Verifier, leaves, reader, witnesses: list[Verifier],
                      min_witnesses: int, max_gap: float | None, tsa_cert: str | None, report: Report,
                      now: float | None = None) -> None:
    """``leaves``: the tree's leaf hashes (a sequence), ``reader`` the tree
    file for roots of earlier sizes; ``now``: when the newest checkpoint's
    age is judged against ``max_gap``."""
    files = list_checkpoint_files(root)
    if not files:
        report.problem("no_checkpoint", "tlog", "no signed checkpoint: nothing proves the archive")
        return
    roots = _Roots(leaves, reader)
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
    if max_gap is not None and now is not None and prev_t is not None and now - prev_t > max_gap:
        # Not a failure: a copy of an archive is often verified long after.
        report.warnings.append(f"the newest checkpoint was signed at {_utc(prev_t)}, {int(now - prev_t)} s "
                               f"ago (> --max-gap): if the exporter should be running, it is not signing")
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
