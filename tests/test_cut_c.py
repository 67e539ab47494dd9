"""The C line cutter (exporter/tail/_cut.c) and the pure-Python bulk step
(``LineCutter._py_bulk``, the reference) give the same lines: every slot of
every Line (text, byte count, ``\\r`` count, flags, end offset, position),
the same counters and the same resume point, on hostile byte runs (invalid
and truncated UTF-8, ``\\r`` runs, empty lines, batch limits), and so the
whole cutter and the file tailer give the same lines with either (and the
same as line by line: tests/test_tail_bulk.py, which runs with the C step
wherever it is built).

Where a C compiler exists the extension must have been built (``pip install
-e .`` builds it): a missing or stale one fails tests/test_cbuild.py, it is
not skipped.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cbuild import needs_c
from hyp import examples
from test_tail_bulk import PIECES, cut_all, stream, tail_file

from exporter.tail import FileTailer, lines
from exporter.tail.lines import Line, LineCutter, TailStats, _Chunk

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes a bulk run may hold: anything but NUL (the line-by-line path's).
NO_NUL = [p for p in PIECES if b"\0" not in p] + ["\u00e9\u4e2d\U0001f600".encode(), b"\xed\xa0\x80",
                                                   b"\xf0\x9f\x98", b"\xc3", b"\x80\x80", b"\r\r\r"]


def _module():
    try:
        from exporter.tail import _cut
    except ImportError:
        return None
    return _cut


_cut = _module()
need_c = needs_c(_cut is not None)  # built where a compiler exists: tests/test_cbuild.py


def c_module():
    assert _cut is not None, "a C compiler exists but exporter.tail._cut was not built (pip install -e .)"
    _cut.configure(Line, _Chunk)  # whatever VLLM_AUDIT_PURE_PYTHON says: these tests compare both
    return _cut


def make(off, tail):
    return {"offset": off, "tail": bytes(tail)}


def slots(ln: Line) -> tuple:
    """Every field, with its type (1 and True differ), the position built."""
    fields = (ln.text, ln.nbytes, ln.cr, ln.truncated, ln.partial, ln._end)
    return tuple((type(v), v) for v in fields) + (ln._pos.__class__, ln.pos)


def bulk_both(data: bytes, start: int, k: int | None, base: int, tail: bytes):
    """(C, Python) results of one bulk step on ``data[start:]``: lines, next, counter."""
    end = data.rfind(b"\n") + 1
    got = []
    for c in (True, False):
        stats = TailStats()
        cutter = LineCutter(1 << 30, stats, make, lambda: make)
        out: list[Line] = []
        buf = bytearray(data)
        if c:
            chunk = _Chunk(make, base, tail, b"")
            j, invalid, chunk.data = c_module().cut(buf, start, end, -1 if k is None else k, base, chunk, out)
            stats.invalid_utf8 += invalid
        else:
            j = cutter._py_bulk(buf, start, end, base, tail, k, out)
        got.append(([slots(ln) for ln in out], j, stats.invalid_utf8))
    return got


@need_c
@pytest.mark.parametrize("seed", range(80))
def test_c_step_equals_python_step(seed):
    rng = random.Random(seed)
    data = b"".join(rng.choice(NO_NUL) for _ in range(rng.randint(0, 300))) + b"\n"
    start = rng.choice([0, 0, rng.randint(0, len(data) - 1)])
    if start and data[start - 1:start] != b"\n":  # a bulk step starts at a line start
        start = data.rfind(b"\n", 0, start) + 1
    tail = bytes(rng.randint(0, 255) for _ in range(rng.choice([0, 5, 32])))
    k = rng.choice([None, 0, 1, 2, 7, 50, 10_000])
    c, py = bulk_both(data, start, k, rng.choice([0, 10, 1 << 40]), tail)
    assert c == py


@need_c
@FUZZ
@given(st.lists(st.one_of(st.sampled_from(NO_NUL), st.binary(max_size=12).map(lambda b: b.replace(b"\0", b""))),
                max_size=60),
       st.one_of(st.none(), st.integers(0, 40)))
def test_c_step_equals_python_step_fuzzed(pieces, k):
    data = b"".join(pieces) + b"\n"
    c, py = bulk_both(data, 0, k, 3, b"x" * 32)
    assert c == py


@need_c
@pytest.mark.parametrize("seed", range(40))
def test_whole_cutter_same_with_c_and_python(seed, monkeypatch):
    """The cutter with its bulk step in C, in Python and line by line."""
    rng = random.Random(seed)
    data = stream(rng, rng.randint(0, 400))
    maxb = rng.choice([16, 64, 1 << 20])
    ref = cut_all(data, bulk=False, frozen=False, maxb=maxb, seed=seed)
    monkeypatch.setattr(lines, "_C", c_module())
    assert cut_all(data, bulk=True, frozen=True, maxb=maxb, seed=seed) == ref
    monkeypatch.setattr(lines, "_C", None)
    assert cut_all(data, bulk=True, frozen=True, maxb=maxb, seed=seed) == ref


@need_c
@pytest.mark.parametrize("seed", range(6))
def test_file_tailer_same_with_c_and_python(seed, tmp_path, monkeypatch):
    rng = random.Random(seed)
    path = tmp_path / "vllm.log"
    path.write_bytes(stream(rng, rng.randint(50, 3000)) + "\u00e9\r\n".encode() * rng.randint(0, 50))
    read_size, limit = rng.choice([7, 100, 4096, 1 << 20]), rng.choice([None, 3, 100])
    monkeypatch.setattr(lines, "_C", None)
    ref = tail_file(path, bulk=True, monkeypatch=monkeypatch, read_size=read_size, limit=limit)
    monkeypatch.setattr(lines, "_C", c_module())
    assert tail_file(path, bulk=True, monkeypatch=monkeypatch, read_size=read_size, limit=limit) == ref


@need_c
@pytest.mark.parametrize("seed", range(12))
def test_file_tailer_long_lines_at_any_read_size(seed, tmp_path, monkeypatch):
    """Lines over the limit, read in pieces smaller than a line (a read's
    repeated tail bytes are skipped, not sliced off): the same lines and
    positions as the file read in one piece and cut line by line, with the
    bulk step in C and in Python."""
    rng = random.Random(seed)
    path = tmp_path / "vllm.log"
    path.write_bytes(stream(rng, rng.randint(50, 1500)) + b"\n")
    maxb = rng.choice([16, 64, 300])

    def tail(read_size: int, limit: int | None):
        t = FileTailer(str(path), from_start=True, max_line_bytes=maxb, read_size=read_size)
        got = []
        while batch := t.poll(limit):
            got += [(ln.text, ln.nbytes, ln.cr, ln.truncated, ln.partial, ln.pos) for ln in batch]
        t.close()
        return got, t.position(), t.stats

    monkeypatch.setattr(LineCutter, "bulk", False)
    want = tail(1 << 20, None)
    monkeypatch.setattr(LineCutter, "bulk", True)
    for c in (c_module(), None):
        monkeypatch.setattr(lines, "_C", c)
        assert tail(rng.choice([1, 7, 33, 100, 4096]), rng.choice([None, 5])) == want


@need_c
def test_c_lines_keep_the_line_api():
    """Lines built in C: lazy position (built once, then kept), deferred(),
    equality and repr as for any Line; never tracked by the cycle collector."""
    data = bytearray(b"one\r\r\n\xffbad\ntr\xc3\xa9s\n\nrest")
    built = []

    def counting(off, tail):
        built.append(off)
        return make(off, tail)

    chunk = _Chunk(counting, 100, b"abc", b"")
    out: list[Line] = []
    j, invalid, chunk.data = c_module().cut(data, 0, len(data), -1, 100, chunk, out)
    assert (j, invalid, chunk.data) == (18, 1, bytes(data[:18]))
    assert [(ln.text, ln.nbytes, ln.cr) for ln in out] == [("one", 6, 2), ("\ufffdbad", 5, 0), ("tr\u00e9s", 6, 0),
                                                           ("", 1, 0)]
    assert not any(gc.is_tracked(ln) for ln in out)
    assert built == []  # nothing built yet
    later = out[1].deferred()
    assert callable(later) and built == []
    assert later() == out[1].pos == make(111, b"abcone\r\r\n\xffbad\n") and built == [111, 111]
    assert out[1].deferred() is out[1].pos and built == [111, 111]  # kept once built
    assert out[0] == Line("one", 6, make(106, b"abcone\r\r\n"), cr=2)
    assert repr(out[2]) == "Line('tr\u00e9s', nbytes=6)"


@need_c
def test_no_reference_is_leaked():
    mod = c_module()
    data = bytearray("a\u00e9b\r\n".encode() * 50 + b"\xff\n" * 50)
    chunk = _Chunk(make, 0, b"", b"")
    before = sys.getrefcount(chunk)
    for _ in range(50):
        out: list[Line] = []
        mod.cut(data, 0, len(data), -1, 0, chunk, out)
        assert sys.getrefcount(chunk) == before + len(out)
        text = out[0].text
        assert sys.getrefcount(text) == 3  # the line, the local, the call's argument
        del out, text
    assert sys.getrefcount(chunk) == before


@need_c
def test_bad_arguments_are_refused():
    mod = c_module()
    chunk, out = _Chunk(make, 0, b"", b""), []
    with pytest.raises(ValueError):
        mod.cut(b"a\n", 0, 3, -1, 0, chunk, out)
    with pytest.raises(ValueError):
        mod.cut(b"a\n", 2, 1, -1, 0, chunk, out)
    with pytest.raises(TypeError):
        mod.cut(b"a\n", 0, 2, -1, 0, (chunk, 0), out)
    for other in (type("Other", (), {}), type("Few", (), {"__slots__": ("text",)}),
                  type("Props", (), {"__slots__": (), **{f: property(len) for f in Line.__slots__}})):
        with pytest.raises(TypeError):  # fields that are not this class's plain slots
            mod.configure(other, _Chunk)
    assert out == []
    mod.configure(Line, _Chunk)
    mod.cut(memoryview(b"xa\nb\n")[1:], 0, 4, -1, 0, chunk, out)  # any buffer
    assert [ln.text for ln in out] == ["a", "b"]


def test_env_switch_forces_pure_python():
    code = "from exporter.tail import lines; print(lines.IMPLEMENTATION, lines._C is None)"
    for value, want in (("1", "python True"), ("0", "c False" if _cut else "python True")):
        env = {**os.environ, lines.ENV: value, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split()


@need_c
def test_a_stale_build_is_not_used(monkeypatch):
    monkeypatch.delenv(lines.ENV, raising=False)
    assert lines._load() is not None, "exporter.tail._cut was built from an older _cut.c: rebuild it"
    monkeypatch.setattr(_cut, "SOURCE_SHA256", "0" * 64)
    assert lines._load() is None
    monkeypatch.undo()
    monkeypatch.setenv(lines.ENV, "1")
    assert lines._load() is None
    monkeypatch.undo()
    lines.set_enabled(True)
    assert lines.IMPLEMENTATION == ("c" if os.environ.get(lines.ENV, "") in ("", "0") else "python")
