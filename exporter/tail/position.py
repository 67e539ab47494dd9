"""File identity and resumable positions for :mod:`exporter.tail`.

A saved position is a JSON object (all keys always present)::

    {"v": 1, "path": "/var/log/vllm.log",   # the followed path (--log)
     "file": "/var/log/vllm.log.1",         # where the file was last seen
     "dev": 2049, "ino": 131, "offset": 5120,
     "head_len": 1024, "head": "<hex>",     # digest of the first head_len bytes
     "tail": "<hex>",                        # digest of the min(32, offset) bytes before offset
     "draining": true}                       # the file had been rotated away from path

``dev`` and ``ino`` are ``None`` while no file has been seen yet (the path
did not exist); such a position means "read the file from 0 once it appears".

Rules:

* A path plus an offset is not an identity (Promtail cannot see truncation
  while it was down). A file matches a position when its size is at least
  ``offset`` and both digests match: the head (Alloy's 1 KiB signature) and
  the 32 bytes just before the offset (Fluent Bit's offset marker). The head
  covers ``min(1024, offset)`` bytes, i.e. only bytes already read, so it is
  stable while the file grows. (dev, inode) is only used to *find* the file;
  inodes are reused, so it never proves identity on its own.
* Rotated siblings are the regular files in the same directory named
  ``<name>.<anything>``, except compressed ones (``.gz``, ``.bz2``, ``.xz``,
  ``.zst``, ``.lz4``, ``.z``), whose bytes differ from what was read.
* Rotation order follows Python's ``RotatingFileHandler`` and logrotate
  without ``dateext``: ``<name>.N`` is older than ``<name>.N-1``. After
  draining ``<name>.k`` the next file is ``<name>.k-1`` (read from 0), down to
  ``<name>`` itself. With any other naming (dateext), only the file holding
  the saved position is drained; files rotated in between while we were not
  looking cannot be ordered and are not read (a documented loss).

The digests are BLAKE2b-64: collision-resistant enough to tell log files
apart and cheap enough to compute for every line.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat as stat_mod

HEAD_BYTES = 1024
TAIL_BYTES = 32
VERSION = 1
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class OsFs:
    """The file-system calls the tailer (and the pruner) makes; tests inject
    failures by overriding one method (as root, chmod cannot deny a read)."""

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)  # follows symlinks: a retargeted link is a new file

    def open(self, path: str):
        return open(path, "rb", buffering=0)

    def fstat(self, f) -> os.stat_result:
        return os.fstat(f.fileno())

    def pread(self, f, n: int, offset: int) -> bytes:
        return os.pread(f.fileno(), n, offset)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def unlink(self, path: str) -> None:  # only exporter.tail.prune deletes
        os.unlink(path)


def new_position(path: str) -> dict:
    """The position of a tailer that has not seen any file yet."""
    return {"v": VERSION, "path": path, "file": None, "dev": None, "ino": None,
            "offset": 0, "head_len": 0, "head": digest(b""), "tail": digest(b""),
            "draining": False}


def build_position(where: tuple, offset: int, head_len: int, head: str, tail: bytes) -> dict:
    """``where`` = (path, file, dev, ino, draining); ``tail``: bytes before offset."""
    path, file, dev, ino, draining = where
    n = min(TAIL_BYTES, offset)
    return {"v": VERSION, "path": path, "file": file, "dev": dev, "ino": ino,
            "offset": offset, "head_len": head_len, "head": head,
            "tail": digest(tail[-n:] if n else b""), "draining": draining}


def validate(pos: object, path: str) -> dict | None:
    """Return ``pos`` if it is a well-formed position for ``path``, else None."""
    if not isinstance(pos, dict) or pos.get("v") != VERSION:
        return None
    if pos.get("path") != path:
        return None  # --log changed: the saved offset belongs to another file
    ints = ("offset", "head_len")
    if any(not isinstance(pos.get(k), int) or pos[k] < 0 for k in ints):
        return None
    if pos["head_len"] != min(HEAD_BYTES, pos["offset"]):
        return None
    if not all(isinstance(pos.get(k), str) for k in ("head", "tail")):
        return None
    if (pos.get("dev") is None) != (pos.get("ino") is None):
        return None
    return pos


def fingerprint_ok(fs: OsFs, f, size: int, pos: dict) -> bool:
    """True when the open file ``f`` holds the bytes ``pos`` was taken from."""
    off = pos["offset"]
    if size < off:
        return False
    head = fs.pread(f, pos["head_len"], 0)
    if len(head) != pos["head_len"] or digest(head) != pos["head"]:
        return False
    n = min(TAIL_BYTES, off)
    tail = fs.pread(f, n, off - n)
    return len(tail) == n and digest(tail) == pos["tail"]


def siblings(fs: OsFs, path: str) -> list[tuple[str, os.stat_result]]:
    """Rotated siblings of ``path`` (see the module rules), with their stat."""
    d, base = os.path.split(path)
    try:
        names = fs.listdir(d or ".")
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if not name.startswith(base + ".") or name.lower().endswith(_COMPRESSED):
            continue
        full = os.path.join(d, name)
        try:
            st = fs.stat(full)
        except OSError:
            continue
        if stat_mod.S_ISREG(st.st_mode):
            out.append((full, st))
    return out


def _suffix(path: str, name: str) -> int | None:
    m = re.fullmatch(re.escape(path) + r"\.(\d+)", name)
    return int(m.group(1)) if m else None


def where_is(fs: OsFs, path: str, ident: tuple[int, int], hint: str | None = None) -> str | None:
    """The name under which the file ``ident`` = (dev, ino) lives now."""
    for name in (hint, path):
        if name:
            try:
                st = fs.stat(name)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == ident:
                return name
    for name, st in siblings(fs, path):
        if (st.st_dev, st.st_ino) == ident:
            return name
    return None


def next_after(fs: OsFs, path: str, name: str | None) -> str:
    """The file to read after the rotated file now called ``name``."""
    k = _suffix(path, name) if name else None
    while k is not None and k > 1:
        k -= 1
        cand = f"{path}.{k}"
        try:
            if stat_mod.S_ISREG(fs.stat(cand).st_mode):
                return cand
        except OSError:
            continue
    return path


def _matches(fs: OsFs, name: str, pos: dict, strict: bool = False) -> bool:
    """Strict: only "missing" means no; an unreadable file raises (retry later)."""
    try:
        with fs.open(name) as f:
            return fingerprint_ok(fs, f, fs.fstat(f).st_size, pos)
    except FileNotFoundError:
        return False
    except OSError:
        if strict:
            raise
        return False


def locate(fs: OsFs, path: str, pos: dict) -> tuple[str | None, str]:
    """Find the file that holds ``pos``; returns ``(name, how)``.

    ``how`` is ``"same"`` (found by (dev, inode), fingerprint matches),
    ``"copy"`` (another file matches the fingerprint: a copytruncate copy, or
    an atomic replace that kept the content), ``"changed"`` (the inode is
    there but its bytes differ: truncated and regrown, or the inode was
    reused; name is None) or ``"gone"`` (not found; name is None).
    """
    ident = (pos["dev"], pos["ino"])
    name = where_is(fs, path, ident, pos.get("file"))
    if name and _matches(fs, name, pos, strict=True):
        return name, "same"
    if pos["offset"] > 0:  # offset 0 matches any file: no evidence
        for cand in [path] + [n for n, _ in siblings(fs, path)]:
            if cand != name and _matches(fs, cand, pos):
                return cand, "copy"
    return None, ("changed" if name else "gone")
