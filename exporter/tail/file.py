"""``tail -F`` line source with exact, resumable positions.

The pipeline is single-threaded: it calls :meth:`FileTailer.poll` in a loop,
processes the lines and checkpoints ``line.pos`` of the last line it fully
processed. Handing that dict back as ``position=`` resumes right after that
line. Identity and position format: :mod:`exporter.tail.position`.

Rules:

* **Lines.** A line ends at ``\\n``; the text drops it and one ``\\r``
  before it (vLLM's multi-line formatter writes ``\\r\\n``). Text is decoded
  per whole line, so a multibyte character split across reads is intact;
  invalid UTF-8 becomes U+FFFD (counted). Empty lines are emitted (the parser
  ignores them), so every byte of the file is accounted for.
* **Partial last line.** Never emitted while its file is live: its bytes stay
  buffered and the position stays at its start, so after a restart it is read
  again and emitted exactly once, when complete. It *is* emitted, with
  ``partial=True``, when its file can no longer grow for us: we switched away
  after a rotation or delete, or the file was truncated under it.
* **Long lines.** A line longer than ``max_line_bytes`` (default 16 MiB, so
  a 128k-token prompt-id list comes through intact) is emitted once, its
  text cut to ``max_line_bytes`` at a character boundary, ``truncated=True``,
  ``nbytes`` the full length; reading goes on at the next line. Memory stays
  bounded by ``max_line_bytes + read_size``.
* **NUL bytes.** A writer without ``O_APPEND`` keeps writing at its old
  offset after a copytruncate, leaving a run of NULs (a sparse hole). NUL
  runs at a line start are skipped, NULs inside a line are dropped from the
  text; both are counted (``nul_bytes``). Offsets still count them.
* **Start.** A valid ``position`` wins; else ``from_start`` reads from 0;
  else reading starts at the end, after the last complete line (a partial
  line being written is read whole once complete; with no newline in the
  last 1 MiB the fragment up to the next newline is skipped). If the file
  cannot be opened at construction (missing, permission denied), it is read
  from 0 once it can be: all of it was written after we started.
* **Resume.** The saved file is found by (dev, inode) under its last name,
  the path or a rotated sibling, and accepted only if its fingerprint still
  matches; else a sibling or the path with a matching fingerprint (a
  copytruncate copy, an atomic replace that kept the content) is read from
  the offset. Otherwise the path is read from 0 and the loss is counted:
  ``truncations`` when the inode is there with other bytes (truncated and
  regrown, or reused), ``lost_files`` when it is gone.
* **Rotation** (path now names another file or nothing: rename, delete,
  atomic replace, symlink retarget). The old fd is kept and drained to EOF.
  The switch happens at EOF of the old file once the next file exists and is
  not empty, so a writer still appending to the old inode is followed until
  it moves on; writes to the old inode after that are lost. The next file is
  ``<path>.k-1`` when the old file is now ``<path>.k`` (several rotations
  between two polls), else the path, read from 0 unless it holds exactly our
  bytes up to the offset (atomic replace with the same content: read on from
  the offset). A file that is deleted and not recreated stays open.
* **Truncation** (size below the read offset, or the 32 bytes before it
  changed). Lines already read are still emitted; then a rotated sibling whose
  fingerprint matches the read offset (the copytruncate copy) is drained from
  there, then the path is read from 0. copytruncate still loses what was
  written between the copy and the truncation and not read before it: an
  unavoidable window (Promtail, Fluent Bit and Vector document the same).

* **Unreadable path** (missing, permission denied): ``up`` is False, other
  errors than "missing" count ``open_errors``, and every poll retries. A saved
  position whose file exists but cannot be read is kept until it can be.
* **Same bytes, same file.** A file whose first ``min(1024, offset)`` bytes
  and 32 bytes before the offset match is taken as ours, whatever its inode:
  a file recreated byte-identical up to the offset is read on from there.

Counters and the ``up`` gauge live in :class:`TailStats` (``tailer.stats``);
``--log -`` is :class:`exporter.tail.stdin.StdinTailer`, same interface.
"""

from __future__ import annotations

import os
from collections import deque
from functools import partial

from exporter.tail.lines import Line, LineCutter, TailStats, describe_error
from exporter.tail.position import (
    HEAD_BYTES, TAIL_BYTES, OsFs, build_position, digest, fingerprint_ok,
    locate, new_position, next_after, validate, where_is,
)

__all__ = ["FileTailer", "Line", "TailStats"]

MiB = 1024 * 1024
_END_SCAN = MiB  # how far back "start at end" looks for the last newline


class FileTailer:
    """Follow one file by name like ``tail -F``; see the module rules."""

    def __init__(self, path: str, *, position: dict | None = None, from_start: bool = False,
                 max_line_bytes: int = 16 * MiB, read_size: int = MiB,
                 stats: TailStats | None = None, fs: OsFs | None = None):
        if max_line_bytes < 1 or read_size < 1:
            raise ValueError("max_line_bytes and read_size must be positive")
        self.path = os.path.abspath(path)
        self.read_size = read_size
        self.stats = stats if stats is not None else TailStats()
        self._fs = fs or OsFs()
        self._f = None
        self._ident: tuple[int, int] | None = None
        self._name: str | None = None  # where the open file was last seen
        self._draining = False  # the open file is no longer at path
        self._copy_drain = False  # ... because it is a copytruncate copy
        self._where: tuple = ()
        self._read_off = 0
        self._rtail = b""  # the TAIL_BYTES before _read_off
        self._head = b""
        self._head_digest: str | None = None  # of the full HEAD_BYTES
        self._mtime: int | None = None
        self._cut = LineCutter(max_line_bytes, self.stats, self._make_pos, self._frozen_pos)
        self.at_eof = False
        self._closed = False
        # Rotated files drained to their end and left, oldest first: their
        # positions at EOF (for --prune-rotated, exporter.tail.prune; off:
        # nothing is kept). Bounded: a file not pruned is not held forever.
        self.keep_finished = False
        self.finished: deque[dict] = deque(maxlen=256)
        saved = validate(position, self.path) if position is not None else None
        if position is not None and saved is None:
            self.stats.position_resets += 1
        self._saved = saved
        if saved is not None and saved["dev"] is not None:
            self._start = "pos"
        else:  # a position taken before the file existed means "from 0"
            self._start = "start" if (from_start or saved is not None) else "end"
        self._pos = saved or new_position(self.path)
        self._open_first()

    # -- public -----------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.stats.up

    @property
    def size(self) -> int:
        """Size of the file being read (with ``position()["offset"]``: the lag)."""
        return self.stats.size

    def position(self) -> dict:
        """The position after the last returned line (JSON-serialisable)."""
        if callable(self._pos):
            self._pos = self._pos()
        return self._pos

    def poll(self, max_lines: int | None = None) -> list[Line]:
        """Return the complete lines available now (at most ``max_lines``)."""
        out: list[Line] = []
        if self._closed:
            return out
        cut, ready = self._cut, self._cut.ready
        switches = 0
        self.at_eof = False
        while True:
            while ready and (max_lines is None or len(out) < max_lines):
                out.append(ready.popleft())
            if max_lines is None or len(out) < max_lines:
                cut.cut(max_lines, out)
            if max_lines is not None and len(out) >= max_lines:
                break
            if self._f is None and not self._open_first():
                self.at_eof = True
                break
            if self._read_chunk():
                continue
            # EOF; a bounded number of switches per poll keeps a flapping path from spinning
            if switches >= 16 or not self._check_path():
                self.at_eof = True
                break
            switches += 1
        if out:
            self._pos = out[-1].deferred()
            self.stats.lines += len(out)
        if self._f is not None and not cut.pending:
            self._pos = self._make_pos(cut.line_off, cut.tail)  # skipped NULs, switched files
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._closed = True

    # -- opening ------------------------------------------------------------

    def _open_first(self) -> bool:
        """Open the path (or the saved file) for the first time; False: not yet."""
        fs = self._fs
        try:
            if self._start == "pos":
                name, how = locate(fs, self.path, self._saved)
                if name is not None:
                    self._adopt(fs.open(name), name, self._saved["offset"])
                    self._copy_drain = how == "copy" and name != self.path
                    self.stats.truncations += self._copy_drain
                    self.stats.up = True
                    self._pos = self._make_pos(self._read_off, self._rtail)
                    return True
                self.stats.position_resets += 1
                if how == "changed":
                    self.stats.truncations += 1
                else:
                    self.stats.lost_files += 1
                self._start = "start"
            f = fs.open(self.path)
        except OSError as e:
            self.stats.up = False
            self.stats.open_errors += not isinstance(e, FileNotFoundError)
            self.stats.error = describe_error(e, self.path)
            self.stats.waiting = isinstance(e, FileNotFoundError) and not (
                self._saved is not None and self._saved["dev"] is not None)
            if self._start == "end":  # not readable when we started: all of it is new
                self._start = "start"
            return False
        self.stats.up = True
        self.stats.waiting = False
        off, discard = 0, False
        if self._start == "end":
            off, discard = self._end_offset(f)
        self._adopt(f, self.path, off)
        if discard:
            self._cut.discard_first()
        self._start = "start"
        self._pos = self._make_pos(off, self._rtail)
        return True

    def _end_offset(self, f) -> tuple[int, bool]:
        size = self._fs.fstat(f).st_size
        n = min(size, _END_SCAN)
        i = self._fs.pread(f, n, size - n).rfind(b"\n")
        if i >= 0:
            return size - n + i + 1, False
        return (0, False) if n == size else (size, True)

    def _adopt(self, f, name: str, offset: int) -> None:
        st = self._fs.fstat(f)
        self._f, self._ident, self._name = f, (st.st_dev, st.st_ino), name
        self._draining = name != self.path
        self._reset_at(offset)
        self.stats.size = st.st_size

    def _reset_at(self, offset: int) -> None:
        f, fs = self._f, self._fs
        n = min(TAIL_BYTES, offset)
        self._read_off, self._rtail = offset, fs.pread(f, n, offset - n) if n else b""
        self._head = fs.pread(f, min(HEAD_BYTES, offset), 0) if offset else b""
        self._head_digest = digest(self._head) if len(self._head) == HEAD_BYTES else None
        self._mtime = None
        self._cut.reset(offset, self._rtail)
        self._set_where()
        self.stats.offset = offset

    def _set_where(self) -> None:
        self._where = (self.path, self._name, self._ident[0], self._ident[1], self._draining)

    def _make_pos(self, off: int, tail: bytes):
        hl = min(HEAD_BYTES, off)
        head = self._head_digest if hl == HEAD_BYTES and self._head_digest else digest(self._head[:hl])
        return partial(build_position, self._where, off, hl, head, tail)

    def _frozen_pos(self):
        """``_make_pos`` with this file's identity and head as they are now
        (lines cut in bulk build their position later, if ever)."""
        where, head, head_digest = self._where, self._head, self._head_digest

        def make(off: int, tail: bytes) -> dict:
            hl = min(HEAD_BYTES, off)
            h = head_digest if hl == HEAD_BYTES and head_digest else digest(head[:hl])
            return build_position(where, off, hl, h, tail)
        return make

    # -- reading ------------------------------------------------------------

    def _read_chunk(self) -> bool:
        """Read and cut the next chunk; False at EOF."""
        fs, f = self._fs, self._f
        try:
            st = fs.fstat(f)
            size, mtime = st.st_size, st.st_mtime_ns
            self.stats.size = size
            if size < self._read_off:
                return self._truncated()
            k = len(self._rtail)
            if size == self._read_off:
                # same size but written since: truncated and regrown to this size?
                if mtime == self._mtime or not k:
                    return False
                self._mtime = mtime
                return fs.pread(f, k, self._read_off - k) != self._rtail and self._truncated()
            self._mtime = mtime
            data = fs.pread(f, k + self.read_size, self._read_off - k)
        except OSError as e:
            self.stats.open_errors += 1
            self.stats.error = describe_error(e, self.path)
            return False
        if data[:k] != self._rtail:  # rewritten under us
            return self._truncated()
        n = len(data) - k  # new bytes after the _rtail the read repeats (not sliced off: a copy)
        if not n:
            return False
        self._read_off += n
        self.stats.bytes += n
        self.stats.offset = self._read_off
        self._rtail = data[-TAIL_BYTES:]  # data: the file from the old offset - k (k < TAIL_BYTES: from 0)
        if len(self._head) < HEAD_BYTES and len(self._head) < self._read_off:
            self._head = fs.pread(f, min(HEAD_BYTES, self._read_off), 0)
            self._head_digest = digest(self._head) if len(self._head) == HEAD_BYTES else None
        self._cut.feed(data, k)
        return True

    # -- rotation and truncation -------------------------------------------

    def _truncated(self) -> bool:
        self.stats.truncations += 1
        self._cut.flush()  # lines read before the truncation are not lost
        here = self._make_pos(self._read_off, self._rtail)()
        name, how = locate(self._fs, self.path, here) if self._read_off else (None, "gone")
        if name is not None and name != self._name and how == "copy":
            try:  # the copytruncate copy still holds what we had not read
                f = self._fs.open(name)
            except OSError:
                f = None
            if f is not None:
                self._f.close()
                self._adopt(f, name, self._read_off)
                self._copy_drain = True
                return True
        self._reset_at(0)
        return True

    def _check_path(self) -> bool:
        """At EOF: switch files when the path moved on. True if switched."""
        fs = self._fs
        try:
            st = fs.stat(self.path)
        except OSError:
            st = None
        self.stats.up = st is not None
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            if self._draining:  # moved back (or a copy we drained): plain tailing again
                self._name, self._draining, self._copy_drain = self.path, False, False
                self._set_where()
            return False
        cur = where_is(fs, self.path, self._ident, self._name)
        if cur != self._name or not self._draining:
            self._name, self._draining = cur or self._name, True
            self._set_where()
        nxt = next_after(fs, self.path, cur)
        if nxt == self.path and (st is None or st.st_size == 0):
            return False  # the writer has not moved on: keep draining the old fd
        try:
            f = fs.open(nxt)
        except OSError as e:
            self.stats.open_errors += not isinstance(e, FileNotFoundError)
            self.stats.error = describe_error(e, nxt)
            self.stats.up = self.stats.up and nxt != self.path
            return False
        here = self._make_pos(self._read_off, self._rtail)()
        self._cut.flush()  # the last line of a file we leave is emitted as partial
        same = self._read_off > 0 and fingerprint_ok(fs, f, fs.fstat(f).st_size, here)
        if self.keep_finished and self._draining and not self._copy_drain and not same:
            self.finished.append(here)  # read to its end under its rotated name
        self.stats.rotations += not self._copy_drain
        self._f.close()
        self._adopt(f, nxt, self._read_off if same else 0)
        self._copy_drain = False
        return True
