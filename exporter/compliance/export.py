"""``vllm-audit-exporter export``: audit records for a time range as CSV or JSONL.

Sources: the local archive (default; ``.jsonl`` and ``.jsonl.gz`` days, days
skipped by their manifest's ``ts_min``/``ts_max``) or Loki ``query_range``
(:mod:`exporter.loki.query`). The time window is on the record's
``ts`` (request received), half-open ``[from, to)``.

The file formats are :mod:`exporter.compliance.export_format`. CSV is
meant for Excel: UTF-8 (optional BOM), RFC 4180 quoting, CRLF, and cells
that Excel would evaluate as a formula get a leading ``'``. A file
export is written to a temp name and renamed when complete, with
``<output>.sha256`` (``sha256sum -c`` format) and, with a key,
``<output>.hmac`` beside it. When the archive has a signed transparency log,
``<output>.proof.json`` beside it holds the signed checkpoint and one Merkle
inclusion proof per exported record (:mod:`exporter.transparency.proof`):
``verify --proof <output>.proof.json --public-key signing.pub`` checks the
export without the archive and without any secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from exporter.chain import HMAC_PREFIX, KeyLoadError, load_key
from exporter.archive import manifest as mf
from exporter.archive.layout import iter_lines, list_days
from exporter.durable import DirError, atomic_file, usable_dir, write_atomic
# neutralise: re-exported, callers import it from here (the CSV-injection rule)
from exporter.compliance.export_format import neutralise, write_records  # noqa: F401
from exporter.cost import Pricing
from exporter.record import parse_ts_or_none

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
class ExportUsageError(ValueError):
    pass


def parse_time(text: str) -> float:
    """RFC 3339 / ISO 8601 (``Z`` or offset), or ``YYYY-MM-DD`` (UTC midnight).
    A time without a zone is taken as UTC (the archive is UTC throughout)."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ExportUsageError(f"invalid time {text!r}: use RFC 3339, e.g. 2026-11-22T10:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _ts(rec: dict) -> float | None:
    return parse_ts_or_none(rec.get("ts"))


# Keys whose values are protocol, not something anyone wrote ("role":"user").
_STRUCTURE_KEYS = frozenset(("role", "type", "id", "tool_call_id"))


def typed_texts(prompt: str, endpoint: str | None = None) -> list[str]:
    """The texts a person (or the model, for earlier turns) wrote in a prompt.

    A chat prompt is the client's messages as JSON text, where a typed quote,
    backslash, newline or tab is escaped (``\\"``, ``\\n``): searching that text
    cannot find what was typed. A prompt that is a JSON array or object is
    decoded and its strings returned (values of protocol keys such as
    ``role`` left out, so ``--grep user`` does not match every chat). Other
    endpoints may have been sent a prompt that merely looks like JSON, so
    their text is kept as well.
    """
    decoded = None
    if prompt[:1] in ("[", "{"):
        try:
            decoded = json.loads(prompt)
        except (ValueError, RecursionError):
            decoded = None
    if not isinstance(decoded, (list, dict)):
        return [prompt]
    out, stack = [], [decoded]
    while stack:  # iterative: the nesting depth is the client's choice
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            stack.extend(reversed(value))
        elif isinstance(value, dict):
            stack.extend(v for k, v in reversed(value.items()) if k not in _STRUCTURE_KEYS)
    if endpoint != "chat":
        out.append(prompt)
    return out


def _texts(rec: dict) -> Iterator[str]:
    if isinstance(rec.get("prompt"), str):
        yield from typed_texts(rec["prompt"], rec.get("endpoint"))
    if isinstance(rec.get("output"), str):
        yield rec["output"]
    for c in rec.get("choices") or ():
        if isinstance(c, dict) and isinstance(c.get("text"), str):
            yield c["text"]


def make_filter(t_from: float, t_to: float, user: str | None, model: str | None, grep: str | None):
    """Predicate on a parsed record (exact user/model, case-insensitive grep
    in prompt/output/choices, on the text as typed: see :func:`typed_texts`)."""
    needle = grep.casefold() if grep else None

    def keep(rec: dict) -> bool:
        ts = _ts(rec)
        if ts is None or not t_from <= ts < t_to:
            return False
        if user is not None and rec.get("user") != user:
            return False
        if model is not None and rec.get("model") != model:
            return False
        return needle is None or any(needle in t.casefold() for t in _texts(rec))

    return keep


def iter_archive(root: Path, t_from: float, t_to: float, warn=None) -> Iterator[dict]:
    """Parsed records of the days that may hold ``[t_from, t_to)``."""
    lo = datetime.fromtimestamp(t_from, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    hi = datetime.fromtimestamp(t_to, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.999Z")
    for day in list_days(root):
        m = None
        if day.manifest is not None:
            try:
                m = mf.read_manifest(day.manifest)
            except (OSError, ValueError):
                m = None  # unreadable manifest: scan the file instead of skipping it
        if m and isinstance(m.get("ts_min"), str) and isinstance(m.get("ts_max"), str):
            # String compare on fixed-width RFC 3339 UTC: coarse, the exact
            # window is applied per record.
            if m["ts_max"] < lo or m["ts_min"] > hi:
                continue
        if day.data is None:
            if warn is not None and m is not None:
                warn(f"export: {day.day} was deleted by retention ({m.get('count')} records not exported)")
            continue
        for raw in iter_lines(day.data):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # verify reports damaged lines; export exports what it can read
            if isinstance(rec, dict):
                yield rec


def _collect(records: Iterable[dict], into: list) -> Iterator[dict]:
    for rec in records:
        into.append(rec)
        yield rec


class _Sink:
    """Text sink that hashes what it writes (signature without re-reading)."""

    def __init__(self, raw, key: bytes | None) -> None:
        self.raw, self.sha = raw, hashlib.sha256()
        self.mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        self.sha.update(data)
        if self.mac is not None:
            self.mac.update(data)
        self.raw.write(data)
        return len(text)


def _write_file(path: Path, records: Iterable[dict], fmt: str, bom: bool, key: bytes | None,
                proven: tuple[Path, list] | None = None,
                pricing: Pricing | None = None) -> int:
    """``proven``: (archive root, list the written records are collected in)
    when the proof file is to be written."""
    # exports hold prompts: same mode as the archive
    with atomic_file(path, 0o640) as raw:
        sink = _Sink(raw, key)
        count = write_records(records, sink, fmt, bom, pricing)
    side = [(path.with_name(path.name + ".sha256"), f"{sink.sha.hexdigest()}  {path.name}\n")]
    if proven is not None:
        from exporter.transparency.proof import bundle, dumps
        doc = bundle(proven[0], proven[1], path, fmt, bom)
        if doc is not None:
            side.append((path.with_name(path.name + ".proof.json"), dumps(doc)))
    if sink.mac is not None:
        side.append((path.with_name(path.name + ".hmac"), f"{HMAC_PREFIX}{sink.mac.hexdigest()}  {path.name}\n"))
    for side_path, text in side:  # each durable too: a checksum without its file proves nothing
        write_atomic(side_path, text.encode("utf-8"), 0o640)
    return count


def export_main(*, ts_from: str, ts_to: str, archive_dir: str | None = None, user: str | None = None,
                model: str | None = None, grep: str | None = None, fmt: str = "csv", bom: bool = False,
                output: str | None = None, source: str = "archive", loki_url: str | None = None,
                loki_selector: str | None = None, loki_org_id: str | None = None, loki=None,
                hmac_key_file: str | None = None, hmac_key_env: str | None = None,
                http_client=None, out=None, err=None, pricing: Pricing | None = None) -> int:
    """CLI entry point for ``export``; returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if fmt not in ("csv", "jsonl"):
            raise ExportUsageError(f"unknown format {fmt!r} (csv or jsonl)")
        t_from, t_to = parse_time(ts_from), parse_time(ts_to)
        if t_to <= t_from:
            raise ExportUsageError("--to must be after --from")
        key = load_key(hmac_key_file, hmac_key_env)
        keep = make_filter(t_from, t_to, user, model, grep)
        if source == "archive":
            if not archive_dir:
                raise ExportUsageError("--archive-dir: no archive directory given")
            try:
                usable_dir(Path(archive_dir), "--archive-dir")
            except DirError as exc:
                raise ExportUsageError(str(exc)) from None
            records = (r for r in iter_archive(Path(archive_dir), t_from, t_to,
                                               warn=lambda m: print(m, file=err)) if keep(r))
        elif source == "loki":
            if not loki_url and loki is None:
                raise ExportUsageError("--source loki needs --loki-url")
            from exporter.loki import query as loki_query
            from exporter.loki.config import LokiSettings
            # ``loki``: the typed settings the CLI built (auth, TLS, tenant).
            conn = loki or LokiSettings(url=loki_url, tenant=loki_org_id)
            records = (r for r in loki_query.records(
                conn, t_from, t_to, user=user, model=model, grep=grep, selector=loki_selector,
                client=http_client) if keep(r))
        else:
            raise ExportUsageError(f"unknown source {source!r} (archive or loki)")
    except (ExportUsageError, KeyLoadError) as exc:
        print(f"export: {exc}", file=err)
        return EXIT_USAGE
    try:
        if output:
            proven = None
            if source == "archive":
                from exporter.archive.layout import list_checkpoint_files
                if list_checkpoint_files(Path(archive_dir)):
                    kept: list = []
                    proven = (Path(archive_dir), kept)
                    records = _collect(records, kept)
            count = _write_file(Path(output), records, fmt, bom, key, proven, pricing)
        else:
            count = write_records(records, out, fmt, bom, pricing)
    except Exception as exc:  # Loki/HTTP/disk failures: one line, no traceback, no secrets
        print(f"export failed: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILED
    print(f"export: {count} record(s)" + (f" -> {output}" if output else ""), file=err)
    return EXIT_OK
