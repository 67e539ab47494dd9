"""Cut a byte stream into :class:`Line` objects with exact offsets.

Used by :mod:`exporter.tail` (rules there, in the module docstring). This
module knows nothing about files: it is fed bytes, keeps the offset of the
next line start and the last 32 bytes before it (for the position's tail
digest), and asks a callback for the position after each line.

The bulk step (a run of complete lines, see :meth:`LineCutter._bulk`) runs
in the optional C accelerator ``exporter/tail/_cut.c`` when it was built
(``pip install`` builds it where a C compiler exists) and is current, unless
``VLLM_AUDIT_PURE_PYTHON=1``; ``IMPLEMENTATION`` says which (``c`` or
``python``). The pure-Python step is the reference and always kept.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from exporter import accel
from exporter.tail.position import TAIL_BYTES

_NON_NUL = re.compile(rb"[^\x00]")


class Line:
    """One line: ``text`` (no ``\\n``, no ``\\r`` before it), ``nbytes`` (raw
    bytes including the newline), ``pos`` (position right after it),
    ``truncated`` (text cut to max_line_bytes), ``partial`` (no newline: its
    file ended for us), ``cr`` (how many ``\r`` stood before its ``\n``:
    vLLM's NewLineFormatter writes one more than the log's usual line end
    inside a multi-line message, so the pipeline can tell the *next* line is
    a continuation whatever it looks like). ``pos`` is built on first access:
    the pipeline reads it for one line per checkpoint, and building it costs
    a digest: the constructor's ``pos`` is the position, a callable building
    it, or the :class:`_Chunk` of a bulk cut with ``end`` the line's end
    offset in it.

    ``__init__`` only assigns the fields: the C bulk step (``_cut.c``)
    fills the same slots of new instances without calling it."""

    __slots__ = ("text", "nbytes", "truncated", "partial", "cr", "_pos", "_end")

    def __init__(self, text: str, nbytes: int, pos, truncated: bool = False, partial: bool = False,
                 cr: int = 0, end: int | None = None):
        self.text, self.nbytes, self._pos, self._end = text, nbytes, pos, end
        self.truncated, self.partial, self.cr = truncated, partial, cr

    @property
    def pos(self) -> dict:
        p = self._pos
        if p.__class__ is _Chunk:  # cut in bulk: built on demand
            p = self._pos = p.position(self._end)
        elif callable(p):
            p = self._pos = p()
        return p

    def deferred(self):
        """``pos`` itself if built, else a callable building it (for a
        tailer's own position after this line)."""
        p = self._pos
        if p.__class__ is _Chunk:
            return partial(p.position, self._end)
        return p

    def __eq__(self, other):
        if not isinstance(other, Line):
            return NotImplemented
        return (self.text, self.nbytes, self.pos, self.truncated, self.partial) == (
            other.text, other.nbytes, other.pos, other.truncated, other.partial)

    def __repr__(self) -> str:
        flags = "".join(f", {k}=True" for k in ("truncated", "partial") if getattr(self, k))
        return f"Line({self.text!r}, nbytes={self.nbytes}{flags})"


@dataclass(slots=True)
class TailStats:
    """Per-source counters (monotonic) and gauges, read by the pipeline and
    exported, every one (selfmetrics.TailStatsCollector)."""

    up: bool = False  # path exists and could be opened at the last look
    lines: int = 0
    bytes: int = 0  # bytes read
    rotations: int = 0  # switches to another file (rename, recreate, replace)
    truncations: int = 0  # in place, or found while we were down
    open_errors: int = 0  # open/read failed for another reason than "missing"
    long_lines: int = 0
    partial_lines: int = 0
    invalid_utf8: int = 0  # lines with replaced bytes
    nul_bytes: int = 0
    position_resets: int = 0  # a given position could not be used
    lost_files: int = 0  # the saved position's file was not found
    size: int = 0  # gauge: size of the file being read
    offset: int = 0  # gauge: read offset in it (lag = size - offset)
    error: str | None = None  # why the source is not up (the last open/read failure), for /health
    # The path has not existed since we started and no saved position names a
    # file of it: nothing has been written there yet, so nothing can be lost
    # (a fresh stack before the first audited request). Not a /health problem.
    waiting: bool = False


def decode(body: bytes, stats: TailStats) -> str:
    if b"\0" in body:
        stats.nul_bytes += body.count(0)
        body = body.replace(b"\0", b"")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        return body.decode("utf-8", "replace")


def strip_eol(raw: bytes) -> bytes:
    return strip_cr(raw[:-1] if raw[-1:] == b"\n" else raw)[0]


def strip_cr(raw: bytes) -> tuple[bytes, int]:
    """``raw`` without its trailing ``\r`` characters, and how many there were
    (a terminal's ``\r\n`` plus NewLineFormatter's own ``\r``: two)."""
    body = raw.rstrip(b"\r")
    return body, len(raw) - len(body)


def cut_utf8(prefix: bytes) -> bytes:
    """Drop an incomplete trailing UTF-8 sequence left by a byte cut."""
    for back in range(1, min(4, len(prefix)) + 1):
        b = prefix[-back]
        if b & 0xC0 != 0x80:  # lead or ASCII byte
            need = 4 if b >= 0xF0 else 3 if b >= 0xE0 else 2 if b >= 0xC0 else 1
            return prefix if back >= need else prefix[:-back]
    return prefix


class _Chunk:
    """The bytes of lines cut in one bulk step, kept so that a line's
    position is built only when asked for (the pipeline asks for one line's
    per checkpoint): ``make`` is the position builder frozen when the lines
    were cut, ``pre`` the TAIL_BYTES before ``data``, which starts at file
    offset ``base`` (``data`` is set once the lines are cut)."""

    __slots__ = ("base", "data", "make", "pre")

    def __init__(self, make: Callable, base: int, pre: bytes, data: bytes):
        self.make, self.base, self.pre, self.data = make, base, pre, data

    def position(self, off: int) -> dict:
        rel = off - self.base
        if rel >= TAIL_BYTES:
            tail = self.data[rel - TAIL_BYTES:rel]
        else:
            tail = (self.pre + self.data[:rel])[-TAIL_BYTES:]
        p = self.make(off, tail)
        return p() if callable(p) else p


class LineCutter:
    """Bytes in, lines out. ``make_pos(offset, tail)`` returns the position
    (a dict, or a callable building it) for a line ending at ``offset``
    whose last raw bytes are ``tail`` (at most TAIL_BYTES).

    ``frozen_pos``, if given, returns a ``make_pos`` whose answers do not
    depend on anything that changes later (which file, its head): lines cut
    in bulk then carry their position unbuilt (see :class:`_Chunk`)."""

    bulk = True  # False: line by line only (tests/test_tail_bulk.py compares the two)

    def __init__(self, max_line_bytes: int, stats: TailStats, make_pos: Callable,
                 frozen_pos: Callable | None = None):
        self.max_line_bytes, self.stats, self.make_pos = max_line_bytes, stats, make_pos
        self.frozen_pos = frozen_pos
        self.ready: deque[Line] = deque()  # cut out of order of a poll: long lines, flushes
        self._buf = bytearray()
        self.reset(0, b"")

    def reset(self, offset: int, tail: bytes) -> None:
        """Start at ``offset`` (a line start); ``tail``: the bytes before it."""
        self.line_off, self.tail = offset, tail
        self._buf.clear()
        self._scan = 0  # no newline in _buf[:_scan]
        self._long: list | None = None  # [prefix or None (discard), total, last bytes]

    @property
    def pending(self) -> bool:
        """Bytes that belong to no returned line yet."""
        return bool(self.ready or self._buf or self._long)

    def discard_first(self) -> None:
        """Drop the bytes up to the next newline (started mid-line)."""
        self._long = [None, 0, self.tail]

    def feed(self, data: bytes, start: int = 0) -> None:
        """Add the bytes ``data[start:]`` (taken without slicing ``data``)."""
        lg = self._long
        if lg is not None:
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl + 1
            lg[1] += end - start
            lg[2] = (lg[2] + data[max(start, end - TAIL_BYTES):end])[-TAIL_BYTES:]
            if nl < 0:
                return
            self._end_long(partial=False)
            start = end
        self._buf += memoryview(data)[start:] if start else data

    def _end_long(self, partial: bool) -> None:
        (prefix, total, last), self._long = self._long, None
        self.line_off += total
        self.tail = last
        if prefix is None:
            return
        self.stats.long_lines += 1
        self.stats.partial_lines += partial
        text = decode(cut_utf8(prefix), self.stats)
        self.ready.append(Line(text, total, self.make_pos(self.line_off, last), True, partial))

    def cut(self, limit: int | None, out: list[Line]) -> None:
        """Append complete lines to ``out`` (up to ``limit`` in ``out``)."""
        buf, n, i = self._buf, len(self._buf), 0
        find, stats, make_pos, maxb = buf.find, self.stats, self.make_pos, self.max_line_bytes
        off, tail, scan = self.line_off, self.tail, self._scan
        bulk = self.bulk
        while limit is None or len(out) < limit:
            if i < n and buf[i] == 0:  # NUL run left by a stale writer
                m = _NON_NUL.search(buf, i)
                j = m.start() if m else n
                stats.nul_bytes += j - i
                off += j - i
                tail = (tail + buf[max(i, j - TAIL_BYTES):j])[-TAIL_BYTES:]
                i = j
                continue
            if bulk:
                # The common case in one step: every complete line left, no
                # NUL among them, none over the limit. Same lines as the
                # line-by-line path below (which handles everything else).
                bulk = False
                last = buf.rfind(b"\n", i)
                if last >= 0 and last + 1 - i <= maxb and buf.find(b"\0", i, last + 1) < 0:
                    j = self._bulk(buf, i, last + 1, off, tail, None if limit is None else limit - len(out),
                                   out)
                    off += j - i
                    tail = (tail + buf[max(i, j - TAIL_BYTES):j])[-TAIL_BYTES:]
                    i = j
                    continue
            nl = find(b"\n", i if i >= scan else scan)
            if nl < 0:
                scan = n
                if n - i >= maxb:  # over the limit with no end in sight: skip to the newline
                    last = bytes((tail + buf[max(i, n - TAIL_BYTES):n])[-TAIL_BYTES:])
                    self._long = [bytes(buf[i:i + maxb]), n - i, last]
                    i = n
                break
            raw = bytes(buf[i:nl + 1])
            size = len(raw)
            tail = raw[-TAIL_BYTES:] if size >= TAIL_BYTES else (tail + raw)[-TAIL_BYTES:]
            off += size
            i = nl + 1
            if size > maxb:  # arrived in one read: same rule
                stats.long_lines += 1
                out.append(Line(decode(cut_utf8(raw[:maxb]), stats), size, make_pos(off, tail), True))
                continue
            if raw[-2:-1] == b"\r":
                body, cr = strip_cr(raw[:-1])
                out.append(Line(decode(body, stats), size, make_pos(off, tail), cr=cr))
            else:
                out.append(Line(decode(raw[:-1], stats), size, make_pos(off, tail)))
        del buf[:i]
        self.line_off, self.tail, self._scan = off, bytes(tail), max(0, scan - i)

    def _bulk(self, buf: bytearray, i: int, end: int, off: int, tail: bytes, k: int | None,
              out: list[Line]) -> int:
        """Cut ``buf[i:end]`` (complete lines, no NUL, none too long; at most
        ``k`` of them) into ``out``; returns where the next line starts."""
        frozen = self.frozen_pos
        if frozen is not None and _C is not None:  # the same lines, in one C pass
            chunk = _Chunk(frozen(), off, bytes(tail), b"")
            j, invalid, chunk.data = _C.cut(buf, i, end, -1 if k is None else k, off, chunk, out)
            self.stats.invalid_utf8 += invalid
            return j
        return self._py_bulk(buf, i, end, off, tail, k, out)

    def _py_bulk(self, buf: bytearray, i: int, end: int, off: int, tail: bytes, k: int | None,
                 out: list[Line]) -> int:
        """:meth:`_bulk` in pure Python: the reference."""
        data = bytes(buf[i:end])
        stats = self.stats
        try:  # one decode for the chunk (no "\n" is inside a UTF-8 sequence: the same texts)
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:  # some line is not UTF-8: decoded one by one, replacing
            parts = data.split(b"\n") if k is None else data.split(b"\n", k)
            rest = len(parts.pop())  # bytes after the last newline, or the lines over k
            texts, sizes = [], []
            for p in parts:
                try:
                    texts.append(p.decode("utf-8"))
                except UnicodeDecodeError:
                    stats.invalid_utf8 += 1
                    texts.append(p.decode("utf-8", "replace"))
                sizes.append(len(p) + 1)
        else:
            texts = text.split("\n") if k is None else text.split("\n", k)
            if len(text) == len(data):  # ASCII: characters are bytes
                rest = len(texts.pop())
                sizes = None
            else:
                parts = data.split(b"\n") if k is None else data.split(b"\n", k)
                rest = len(parts.pop())
                texts.pop()
                sizes = [len(p) + 1 for p in parts]
        frozen = self.frozen_pos
        if frozen is not None:
            chunk, make = _Chunk(frozen(), off, bytes(tail), data), None
        else:
            chunk, make = None, self.make_pos
            pre = bytes(tail)
        append, base = out.append, off
        for j, t in enumerate(texts):
            size = len(t) + 1 if sizes is None else sizes[j]
            off += size
            if chunk is not None:
                pos, at = chunk, off
            else:
                rel = off - base
                tl = data[rel - TAIL_BYTES:rel] if rel >= TAIL_BYTES else (pre + data[:rel])[-TAIL_BYTES:]
                pos, at = make(off, tl), None
            if t.endswith("\r"):
                body = t.rstrip("\r")
                append(Line(body, size, pos, False, False, len(t) - len(body), at))
            else:
                append(Line(t, size, pos, False, False, 0, at))
        return end - rest

    def flush(self) -> None:
        """Move every buffered byte to ``ready``; the rest is a partial line."""
        lines: list[Line] = []
        self.cut(None, lines)
        self.ready.extend(lines)
        if self._long is not None:
            self._end_long(partial=True)
        elif self._buf:
            raw = bytes(self._buf)
            self._buf.clear()
            self._scan = 0
            self.line_off += len(raw)
            self.tail = (self.tail + raw)[-TAIL_BYTES:]
            self.stats.partial_lines += 1
            self.ready.append(Line(decode(strip_eol(raw), self.stats), len(raw),
                                   self.make_pos(self.line_off, self.tail), partial=True))


def describe_error(exc: OSError, path: str) -> str:
    """One line for /health: what failed on which file."""
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file (waiting for it)"
    return f"{path}: {exc.strerror or type(exc).__name__}"


# -- the C accelerator (_cut.c: LineCutter's bulk step) --------------------------
ENV = accel.ENV  # "1" forces the pure-Python path (exporter.accel)


def _load():
    _cut = accel.load("exporter.tail._cut", [Path(__file__).with_name("_cut.c")])
    if _cut is None:
        return None
    try:
        _cut.configure(Line, _Chunk)
    except TypeError:  # Line's fields are not the slots it fills: a build of another version
        return None
    return _cut


_C = None
IMPLEMENTATION = "python"
set_enabled = accel.switch(globals(), _load)
set_enabled(True)
