"""Durable writes and the directories they go to: one copy of the rules the
"nothing lost" promise rests on (checkpoint, archive, manifests, Loki state,
exports, retention, the user-label key).

* A file is replaced atomically: written to a temp file beside it, fsynced,
  renamed over, and the directory fsynced, so a crash leaves the old or the
  new file, never a torn one; modes are set with chmod after create so a
  permissive umask cannot widen them.
* Directories the exporter makes are 0750 (docs/compliance.md); one that
  cannot be used is a one-line :class:`DirError` naming the flag.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o640
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


def write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data`` at ``fd`` (os.write may write less than asked)
    and fsync it. On an error the caller decides what to cut back."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def append_durable(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Append ``data`` to ``path`` (created with ``mode``) and fsync it; a
    new file's directory entry is made durable too."""
    existed = os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        os.fchmod(fd, mode)
        write_fully(fd, data)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the block ends without an
    exception: written to ``.<name>.tmp`` beside it, fsynced, renamed over
    ``path``, the directory fsynced. On an exception the temp file is removed
    and ``path`` is untouched. For writers that stream (exports, retention's
    gzip); :func:`write_atomic` for bytes in hand.

    chmod after create so a permissive umask cannot widen the mode.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fd = -1  # the file object owns it now
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` via a temp file + rename, durable, ``mode``."""
    with atomic_file(path, mode) as fh:
        fh.write(data)
