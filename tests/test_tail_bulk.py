"""The tail cutter's bulk step (a read chunk split into lines at once, their
positions built on demand) gives exactly the lines of the line-by-line path:
text, byte counts, ``\\r`` counts, flags, positions and counters, on hostile
byte streams (NUL runs, invalid UTF-8, ``\\r`` runs, lines over the limit)
cut at random read boundaries and batch limits."""

from __future__ import annotations

import random

import pytest

from exporter.tail import FileTailer
from exporter.tail.lines import LineCutter, TailStats

PIECES = [b"a", b"hello world", "é中文".encode(), b"\xff\xfe", b"\xe4\xb8", b"\r", b"\r\r", b"\0", b"\0\0\0",
          b" INFO 05-02 10:00:00 [logger.py:39] Received request chatcmpl-1: prompt: 'x\\n'", b"\n", b"\n",
          b"\r\n", b"\n\n", b"x" * 70]


def stream(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.choice(PIECES) for _ in range(n))


def cut_all(data: bytes, *, bulk: bool, frozen: bool, maxb: int, seed: int):
    rng = random.Random(seed)
    stats = TailStats()
    # The position builder sees (offset, tail); frozen or not, same answers.
    def make(off, tail):
        return {"offset": off, "tail": bytes(tail)}
    cutter = LineCutter(maxb, stats, make, (lambda: make) if frozen else None)
    cutter.bulk = bulk
    out, i = [], 0
    while i < len(data):
        step = rng.randint(1, 300)
        cutter.feed(data[i:i + step])
        i += step
        batch: list = []
        cutter.cut(rng.choice([None, 1, 2, 7, 50]), batch)
        out.extend(batch)
        while cutter.ready:
            out.append(cutter.ready.popleft())
    cutter.flush()
    out.extend(cutter.ready)
    return ([(ln.text, ln.nbytes, ln.cr, ln.truncated, ln.partial, ln.pos) for ln in out],
            stats, (cutter.line_off, cutter.tail))


@pytest.mark.parametrize("seed", range(60))
def test_bulk_cut_equals_line_by_line(seed):
    rng = random.Random(seed)
    data = stream(rng, rng.randint(0, 400))
    maxb = rng.choice([16, 64, 1 << 20])
    ref = cut_all(data, bulk=False, frozen=False, maxb=maxb, seed=seed)
    for frozen in (False, True):
        assert cut_all(data, bulk=True, frozen=frozen, maxb=maxb, seed=seed) == ref
    assert ref[2][0] == len(data)  # every byte is accounted for


def tail_file(path, *, bulk: bool, monkeypatch, read_size: int, limit: int | None):
    monkeypatch.setattr(LineCutter, "bulk", bulk)
    t = FileTailer(str(path), from_start=True, read_size=read_size)
    lines, positions = [], []
    while True:
        got = t.poll(limit)
        if not got:
            break
        lines += [(ln.text, ln.nbytes, ln.cr, ln.truncated, ln.partial, ln.pos) for ln in got]
        positions.append(t.position())
    t.close()
    return lines, positions, t.stats


@pytest.mark.parametrize("seed", range(12))
def test_file_tailer_same_lines_and_positions(seed, tmp_path, monkeypatch):
    rng = random.Random(seed)
    path = tmp_path / "vllm.log"
    path.write_bytes(stream(rng, rng.randint(50, 3000)))
    read_size, limit = rng.choice([7, 100, 4096, 1 << 20]), rng.choice([None, 3, 100])
    ref = tail_file(path, bulk=False, monkeypatch=monkeypatch, read_size=read_size, limit=limit)
    assert tail_file(path, bulk=True, monkeypatch=monkeypatch, read_size=read_size, limit=limit) == ref


def test_position_of_a_bulk_line_is_frozen_at_cut_time(tmp_path):
    """A line's position names the file it was read from even when it is
    built after the tailer moved to the next file."""
    path = tmp_path / "vllm.log"
    path.write_bytes(b"one\ntwo\n")
    t = FileTailer(str(path), from_start=True)
    first = t.poll()
    (tmp_path / "vllm.log").rename(tmp_path / "vllm.log.1")
    path.write_bytes(b"three\n")
    second = t.poll()
    assert [ln.text for ln in first + second] == ["one", "two", "three"]
    assert first[-1].pos["file"].endswith("vllm.log.1") or first[-1].pos["file"].endswith("vllm.log")
    assert first[-1].pos["offset"] == 8 and first[-1].pos["ino"] != second[-1].pos["ino"]
    t.close()
