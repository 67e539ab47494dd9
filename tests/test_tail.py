"""FileTailer and StdinTailer: line cutting, start rules, positions."""

from __future__ import annotations

import io
import json
import os

import pytest

from exporter.tail import FileTailer, Line, StdinTailer, TailStats
from exporter.tail.position import validate


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def texts(lines: list[Line]) -> list[str]:
    return [ln.text for ln in lines]


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "vllm.log")


def test_starts_at_end_by_default(log):
    append(log, b"old 1\nold 2\n")
    t = FileTailer(log)
    assert t.poll() == [] and t.at_eof and t.up
    append(log, b"new 1\n")
    assert texts(t.poll()) == ["new 1"]


def test_start_at_end_keeps_a_line_being_written(log):
    append(log, b"old\nhalf")
    t = FileTailer(log)
    append(log, b" done\n")
    assert texts(t.poll()) == ["half done"]


def test_from_start_reads_everything(log):
    append(log, b"a\nb\n")
    assert texts(FileTailer(log, from_start=True).poll()) == ["a", "b"]


def test_line_fields_and_position_after_line(log):
    append(log, b"first\r\nsecond\n")
    t = FileTailer(log, from_start=True)
    a, b = t.poll()
    assert (a.text, a.nbytes, a.pos["offset"]) == ("first", 7, 7)
    assert (b.text, b.nbytes, b.pos["offset"]) == ("second", 7, 14)
    assert not a.truncated and not a.partial
    assert t.position() == b.pos
    assert json.loads(json.dumps(b.pos)) == b.pos
    assert validate(b.pos, t.path) == b.pos


def test_empty_lines_are_emitted(log):
    append(log, b"a\n\n\r\nb\n")
    assert texts(FileTailer(log, from_start=True).poll()) == ["a", "", "", "b"]


def test_line_ends_are_stripped_and_their_cr_counted(log):
    # A terminal turns NewLineFormatter's "\r\n" into "\r\r\n": the count is
    # what tells a continuation apart (pipeline), not the bare presence of \r.
    append(log, b"x\r\r\ny\r\nz\n")
    lines = FileTailer(log, from_start=True).poll()
    assert texts(lines) == ["x", "y", "z"] and [ln.cr for ln in lines] == [2, 1, 0]


def test_partial_line_waits_for_newline(log):
    t = FileTailer(log, from_start=True)
    append(log, b"complete\npart")
    assert texts(t.poll()) == ["complete"]
    assert t.poll() == []
    append(log, b"ial\n")
    assert texts(t.poll()) == ["partial"]


def test_multibyte_char_split_across_reads(log):
    t = FileTailer(log, from_start=True, read_size=3)
    append(log, "héllo €uro 😀\n".encode())
    assert texts(t.poll()) == ["héllo €uro 😀"]
    assert t.stats.invalid_utf8 == 0


def test_invalid_utf8_is_replaced_and_counted(log):
    append(log, b"bad \xff\xfe byte\nok\n")
    t = FileTailer(log, from_start=True)
    assert texts(t.poll()) == ["bad \ufffd\ufffd byte", "ok"]
    assert t.stats.invalid_utf8 == 1


def test_max_lines_returns_the_rest_later(log):
    append(log, b"".join(b"l%d\n" % i for i in range(10)))
    t = FileTailer(log, from_start=True, read_size=4)
    first = t.poll(max_lines=3)
    assert texts(first) == ["l0", "l1", "l2"] and not t.at_eof
    assert t.position() == first[-1].pos
    assert texts(t.poll()) == [f"l{i}" for i in range(3, 10)] and t.at_eof


def test_line_over_one_mib_comes_through_intact(log):
    ids = "[" + ", ".join(str(i % 150000) for i in range(200_000)) + "]"
    line = f"INFO prompt_token_ids: {ids}"
    assert len(line) > 1024 * 1024
    t = FileTailer(log, from_start=True)
    append(log, line.encode() + b"\nnext\n")
    got = t.poll()
    assert texts(got) == [line, "next"] and not got[0].truncated


def test_long_line_is_truncated_and_following_continues(log):
    t = FileTailer(log, from_start=True, max_line_bytes=10, read_size=4)
    append(log, b"short\n" + b"x" * 25 + b"\nafter\n")
    got = t.poll()
    assert texts(got) == ["short", "x" * 10, "after"]
    assert [ln.truncated for ln in got] == [False, True, False]
    assert got[1].nbytes == 26 and got[1].pos["offset"] == 6 + 26
    assert t.stats.long_lines == 1


def test_long_line_in_one_read_and_cut_at_char_boundary(log):
    t = FileTailer(log, from_start=True, max_line_bytes=5)
    append(log, "ab€€€\nz\n".encode())  # € is 3 bytes: cut at 5 bytes keeps "ab€"
    got = t.poll()
    assert texts(got) == ["ab€", "z"] and got[0].truncated


def test_resume_from_line_position_is_exact(log):
    append(log, b"a\nb\nc\n")
    t = FileTailer(log, from_start=True)
    lines = t.poll()
    t.close()
    append(log, b"d\n")
    t2 = FileTailer(log, position=lines[0].pos)
    assert texts(t2.poll()) == ["b", "c", "d"]
    assert t2.stats.position_resets == 0


def test_position_is_reported_before_any_line(log):
    append(log, b"a\n")
    t = FileTailer(log)  # at end
    pos = t.position()
    assert pos["offset"] == 2 and pos["dev"] is not None
    append(log, b"b\n")
    assert texts(FileTailer(log, position=pos).poll()) == ["b"]


def test_position_for_another_path_is_ignored_and_counted(log, tmp_path):
    other = str(tmp_path / "other.log")
    append(other, b"x\n")
    pos = FileTailer(other, from_start=True).position()
    append(log, b"a\n")
    t = FileTailer(log, position=pos, from_start=True)
    assert texts(t.poll()) == ["a"] and t.stats.position_resets == 1


def test_garbage_position_is_ignored_and_counted(log):
    append(log, b"a\n")
    t = FileTailer(log, position={"offset": "x"})
    assert t.poll() == [] and t.stats.position_resets == 1


def test_counters(log):
    stats = TailStats()
    t = FileTailer(log, from_start=True, stats=stats)
    append(log, b"ab\ncd\n")
    t.poll()
    assert (stats.lines, stats.bytes, stats.size, stats.offset, stats.up) == (2, 6, 6, 6, True)


def test_close_stops_polling(log):
    append(log, b"a\n")
    t = FileTailer(log, from_start=True)
    t.close()
    assert t.poll() == []


def stdin_tailer(data: bytes, **kw) -> StdinTailer:
    t = StdinTailer(io.BytesIO(data), **kw)
    assert t.join(10)
    return t


def test_stdin_lines_count_position_and_eof():
    t = stdin_tailer(b"a\r\nb\n\nlast")
    got = t.poll()
    assert texts(got) == ["a", "b", "", "last"]
    assert [ln.partial for ln in got] == [False, False, False, True]
    assert got[-1].pos == {"v": 1, "path": "-", "lines": 4}
    assert t.at_eof and not t.up and t.poll() == []


def test_stdin_max_lines_and_long_line():
    t = stdin_tailer(b"x" * 30 + b"\nok\n", max_line_bytes=8)
    (a,) = t.poll(max_lines=1)
    assert (a.text, a.nbytes, a.truncated) == ("x" * 8, 31, True)
    assert texts(t.poll()) == ["ok"] and t.stats.long_lines == 1


def test_stdin_reads_a_real_pipe():
    r, w = os.pipe()
    os.write(w, "é\nz\n".encode())
    os.close(w)
    with os.fdopen(r, "rb") as stream:
        t = StdinTailer(stream)
        assert t.join(10)
        assert texts(t.poll()) == ["é", "z"] and t.poll() == [] and t.at_eof


def test_position_taken_before_the_file_existed_reads_it_from_start(log):
    t = FileTailer(log)
    pos = t.position()
    assert pos["dev"] is None and json.loads(json.dumps(pos)) == pos
    t.close()
    append(log, b"a\n")
    assert texts(FileTailer(log, position=pos).poll()) == ["a"]
