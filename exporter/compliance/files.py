"""Archive file naming and the small I/O helpers shared by the archive,
manifests, verify, export and retention.

Layout: ``audit-YYYY-MM-DD.jsonl`` (maybe ``.jsonl.gz`` after retention) and
``audit-YYYY-MM-DD.manifest.json`` per UTC day.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_NAME = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.(jsonl|jsonl\.gz|manifest\.json)$")


def day_of(epoch_seconds: float) -> str:
    """UTC calendar day ``YYYY-MM-DD`` of an epoch time."""
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def data_name(day: str) -> str:
    return f"audit-{day}.jsonl"


def manifest_name(day: str) -> str:
    return f"audit-{day}.manifest.json"


def parse_name(name: str) -> tuple[str, str] | None:
    """``(day, kind)`` with kind ``jsonl``/``jsonl.gz``/``manifest.json``, or None."""
    m = _NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


@dataclass
class DayFiles:
    day: str
    jsonl: Path | None = None
    gz: Path | None = None
    manifest: Path | None = None

    @property
    def data(self) -> Path | None:
        # A crash between retention's rename and unlink leaves both; the
        # plain file is the original, the .gz an identical copy.
        return self.jsonl or self.gz


def list_days(root: Path) -> list[DayFiles]:
    """Archive files grouped by day, oldest first; other files are ignored."""
    days: dict[str, DayFiles] = {}
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    for name in names:
        parsed = parse_name(name)
        if parsed is None:
            continue
        day, kind = parsed
        entry = days.setdefault(day, DayFiles(day))
        attr = {"jsonl": "jsonl", "jsonl.gz": "gz", "manifest.json": "manifest"}[kind]
        setattr(entry, attr, root / name)
    return [days[d] for d in sorted(days)]


def open_binary(path: Path):
    """Open an archive data file for reading, transparently gunzipping."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path: Path) -> Iterator[bytes]:
    """Raw lines including their ``\\n`` (the last one may lack it: torn)."""
    with open_binary(path) as fh:
        yield from fh


DIR_MODE = 0o750  # archive, state and dead-letter directories (docs/compliance.md)


class DirError(Exception):
    """A directory the exporter cannot use; the message is one line naming it."""


def make_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Create ``path`` and its missing parents with ``mode``, set exactly
    (chmod after mkdir, whatever the umask). Existing directories keep theirs."""
    missing = []
    p = Path(path)
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue  # created meanwhile by someone else: leave its mode
        os.chmod(d, mode)


def usable_dir(path: Path, what: str, *, create: bool = False, write: bool = False) -> None:
    """Raise :class:`DirError` (one line, naming ``what``) unless ``path`` is a
    directory that can be listed (and, with ``write``, written: a temp file is
    created and removed, which also catches read-only mounts and immutable
    directories, whoever runs this). With ``create``, a missing one is made."""
    path = Path(path)
    if create and not os.path.lexists(path):
        try:
            make_dir(path)
        except OSError as exc:
            raise DirError(f"{what}: cannot create {path}: {exc.strerror or exc}") from None
    if not path.exists():
        raise DirError(f"{what}: {path}: no such directory")
    if not path.is_dir():
        raise DirError(f"{what}: {path}: not a directory")
    try:
        os.listdir(path)
    except OSError as exc:
        raise DirError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if write:
        try:
            fd, probe = tempfile.mkstemp(prefix=".vllm-audit-write-test-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise DirError(f"{what}: {path} is not writable: {exc.strerror or exc}") from None


def fsync_dir(path: Path) -> None:
    """Make a create/rename/unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write ``data`` to ``path`` via a temp file + rename, durable, ``mode``.

    chmod after create so a permissive umask cannot widen the mode.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
