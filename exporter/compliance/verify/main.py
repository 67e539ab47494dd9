"""``vllm-audit-exporter verify DIR``: the key loaded, the directories
checked, the checkpoint read as the anchor, the walk run, and its one line of
verdict (``OK``, ``BROKEN``, ``WARNING``) printed with the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.chain import KeyLoadError, load_key
from exporter.durable import DirError, usable_dir

from .anchor import Anchor, read_anchor
from .problems import EXIT_BROKEN, EXIT_OK, EXIT_UNANCHORED, EXIT_USAGE, VerifyUsageError
from .walk import first_hash_kind, verify_archive


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
        if key is None and first_hash_kind(root) == "hmac-sha256":
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
