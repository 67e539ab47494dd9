"""Fault cases 1-19 of docs/reference reliability.md, "Fault and bad-input
cases", as far as they concern the tailer (16, timestamps, is logtime's).

Each test asserts the exact sequence of lines: none lost beyond what the
rules in exporter/tail/file.py document, none doubled. A "restart" is a new
FileTailer built from a saved position.
"""

from __future__ import annotations

import os
import shutil
import types

from hypothesis import given, settings, strategies as st
from hyp import examples

from exporter.checkpoint import read_checkpoint, write_atomic
from exporter.tail import FileTailer
from exporter.tail.position import OsFs


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def texts(lines) -> list[str]:
    return [ln.text for ln in lines]


def rotate(path: str, keep: int = 5) -> None:
    """RotatingFileHandler: path.N-1 -> path.N, ..., path -> path.1."""
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def restart(t: FileTailer, **kw) -> FileTailer:
    pos = t.position()
    t.close()
    return FileTailer(t.path, position=pos, **kw)


# 1
def test_01_rename_rotation_writer_keeps_old_inode_for_a_while(tmp_path):
    log = str(tmp_path / "vllm.log")
    writer = open(log, "ab", buffering=0)
    t = FileTailer(log, from_start=True)
    writer.write(b"a1\n")
    assert texts(t.poll()) == ["a1"]
    os.rename(log, log + ".1")
    writer.write(b"a2\n")
    open(log, "ab").close()  # new file, writer not moved yet
    assert texts(t.poll()) == ["a2"]
    writer.write(b"a3\n")
    assert texts(t.poll()) == ["a3"]
    writer.close()
    append(log, b"b1\n")  # writer moved on
    assert texts(t.poll()) == ["b1"]
    assert t.stats.rotations == 1 and t.position()["file"] == t.path
    append(log + ".1", b"late\n")  # after the switch: the documented loss
    append(log, b"b2\n")
    assert texts(t.poll()) == ["b2"]


# 2
def test_02_several_rotations_between_two_polls(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    assert texts(t.poll()) == ["a1"]
    append(log, b"a2\n")
    for name in ("b", "c", "d"):
        rotate(log)
        append(log, f"{name}1\n{name}2\n".encode())
    assert texts(t.poll()) == ["a2", "b1", "b2", "c1", "c2", "d1", "d2"]
    assert t.stats.rotations == 3


def test_02_rotations_while_down(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    assert texts(t.poll()) == ["a1"]
    pos = t.position()
    t.close()
    append(log, b"a2\n")
    rotate(log)
    append(log, b"b1\n")
    rotate(log)
    append(log, b"c1\n")
    t2 = FileTailer(log, position=pos)
    assert texts(t2.poll()) == ["a2", "b1", "c1"]
    assert t2.stats.position_resets == 0 and t2.stats.lost_files == 0


def test_02_restart_in_the_middle_of_a_drain(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\na2\na3\n")
    t = FileTailer(log, from_start=True)
    rotate(log)
    append(log, b"b1\n")
    (first,) = t.poll(max_lines=1)
    assert first.text == "a1"
    t.close()
    rotate(log)  # the drained file moves again while we are down
    append(log, b"c1\n")
    t2 = FileTailer(log, position=first.pos)
    assert texts(t2.poll()) == ["a2", "a3", "b1", "c1"]


def test_02_rotated_file_gone_while_down_counts_a_loss(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    t.poll()
    pos = t.position()
    t.close()
    append(log, b"a2-lost\n")
    rotate(log)
    os.unlink(log + ".1")  # compressed or deleted by logrotate
    append(log, b"b1\n")
    t2 = FileTailer(log, position=pos)
    assert texts(t2.poll()) == ["b1"]
    # the freed inode may be reused by the new file: then it reads as "changed"
    assert t2.stats.lost_files + t2.stats.truncations == 1 and t2.stats.position_resets == 1


# 3
def test_03_copytruncate_writes_between_copy_and_truncate_are_the_loss_window(tmp_path):
    log = str(tmp_path / "vllm.log")
    writer = open(log, "ab", buffering=0)
    t = FileTailer(log, from_start=True)
    writer.write(b"a1\n")
    assert texts(t.poll()) == ["a1"]
    writer.write(b"a2\n")  # not read yet: recovered from the copy
    shutil.copyfile(log, log + ".1")
    writer.write(b"a3\n")  # between copy and truncate: lost (documented)
    os.truncate(log, 0)
    writer.write(b"b1\n")
    assert texts(t.poll()) == ["a2", "b1"]
    assert t.stats.truncations == 1 and t.stats.rotations == 0
    writer.write(b"b2\n")
    assert texts(t.poll()) == ["b2"]
    writer.close()


def test_03_copytruncate_polled_between_copy_and_truncate_loses_nothing(tmp_path):
    log = str(tmp_path / "vllm.log")
    writer = open(log, "ab", buffering=0)
    t = FileTailer(log, from_start=True)
    writer.write(b"a1\n")
    shutil.copyfile(log, log + ".1")
    writer.write(b"a2\n")
    assert texts(t.poll()) == ["a1", "a2"]
    os.truncate(log, 0)
    writer.write(b"b1\n")
    assert texts(t.poll()) == ["b1"]
    writer.close()


# 4
def test_04_stale_writer_without_append_leaves_nul_bytes(tmp_path):
    log = str(tmp_path / "vllm.log")
    writer = open(log, "wb", buffering=0)  # no O_APPEND
    t = FileTailer(log, from_start=True)
    writer.write(b"a1\na2\n")
    assert texts(t.poll()) == ["a1", "a2"]
    os.truncate(log, 0)
    writer.write(b"b1\n")  # lands at offset 6: six NULs before it
    got = t.poll()
    assert texts(got) == ["b1"]
    assert all("\x00" not in ln.text for ln in got)
    assert t.stats.nul_bytes == 6 and t.stats.truncations == 1
    writer.write(b"b2\n")
    assert texts(t.poll()) == ["b2"]
    writer.close()


def test_04_nul_run_inside_a_line_is_dropped(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a\x00\x00b\n\x00\x00\n")
    t = FileTailer(log, from_start=True)
    assert texts(t.poll()) == ["ab", ""] and t.stats.nul_bytes == 4


# 5
def test_05_truncated_while_down_then_grown_past_offset(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\na2\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    pos = t.position()
    t.close()
    os.truncate(log, 0)
    append(log, b"b1 is longer\nb2\n")  # grows past the saved offset (6)
    t2 = FileTailer(log, position=pos)
    assert texts(t2.poll()) == ["b1 is longer", "b2"]
    assert t2.stats.truncations == 1 and t2.stats.position_resets == 1


def test_05_copytruncate_while_down_reads_the_rest_from_the_copy(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    pos = t.position()
    t.close()
    append(log, b"a2\n")
    shutil.copyfile(log, log + ".1")
    os.truncate(log, 0)
    append(log, b"b1\nb2 grows past\n")
    t2 = FileTailer(log, position=pos)
    assert texts(t2.poll()) == ["a2", "b1", "b2 grows past"]
    assert t2.stats.truncations == 1


# 6
def test_06_truncation_before_earlier_writes_were_read(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    assert texts(t.poll()) == ["a1"]
    append(log, b"a2\n")  # never read: lost by the documented rule
    os.truncate(log, 0)
    append(log, b"b1\n")
    assert texts(t.poll()) == ["b1"] and t.stats.truncations == 1


def test_06_lines_already_read_survive_a_truncation(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\na2\na3\npart")
    assert texts(t.poll(max_lines=1)) == ["a1"]  # a2, a3 are buffered
    os.truncate(log, 0)
    append(log, b"b1\n")
    got = t.poll()
    assert texts(got) == ["a2", "a3", "part", "b1"]
    assert [ln.partial for ln in got] == [False, False, True, False]


# 7
def test_07_delete_and_recreate_is_read_from_start(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    assert texts(t.poll()) == ["a1"]
    os.unlink(log)
    assert t.poll() == [] and not t.up
    append(log, b"b1\n")
    assert texts(t.poll()) == ["b1"] and t.up and t.stats.rotations == 1


class ReusedInodeFs(OsFs):
    """Every file has the same (dev, inode): inode reuse at its worst."""

    def _fake(self, st):
        return types.SimpleNamespace(st_dev=1, st_ino=7, st_size=st.st_size, st_mode=st.st_mode,
                                     st_mtime_ns=st.st_mtime_ns)

    def stat(self, path):
        return self._fake(super().stat(path))

    def fstat(self, f):
        return self._fake(super().fstat(f))


def test_07_delete_and_recreate_while_down_with_inode_reused(tmp_path):
    log = str(tmp_path / "vllm.log")
    fs = ReusedInodeFs()
    append(log, b"a1\na2\n")
    t = FileTailer(log, from_start=True, fs=fs)
    t.poll()
    pos = t.position()
    t.close()
    os.unlink(log)
    append(log, b"b1 differs\nb2\n")
    t2 = FileTailer(log, position=pos, fs=fs)
    assert texts(t2.poll()) == ["b1 differs", "b2"]
    assert t2.stats.truncations == 1  # "same inode, other bytes"


# 8
def test_08_atomic_replace_with_new_content(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    tmp = str(tmp_path / "tmp")
    append(tmp, b"b1\nb2\n")
    os.replace(tmp, log)
    assert texts(t.poll()) == ["b1", "b2"]


def test_08_atomic_replace_with_same_head_keeps_the_offset(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\na2\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    tmp = str(tmp_path / "tmp")
    append(tmp, b"a1\na2\na3\n")
    os.replace(tmp, log)
    assert texts(t.poll()) == ["a3"]


def test_08_atomic_replace_same_head_other_bytes_before_offset(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\na2\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    tmp = str(tmp_path / "tmp")
    append(tmp, b"a1\nXX\na3\n")
    os.replace(tmp, log)
    assert texts(t.poll()) == ["a1", "XX", "a3"]


# 9
def test_09_symlink_target_changes(tmp_path):
    log = str(tmp_path / "vllm.log")
    one, two = str(tmp_path / "run1.log"), str(tmp_path / "run2.log")
    append(one, b"a1\n")
    os.symlink(one, log)
    t = FileTailer(log, from_start=True)
    assert texts(t.poll()) == ["a1"]
    append(one, b"a2\n")  # written before the switch: still drained
    append(two, b"b1\n")
    os.symlink(two, log + ".new")
    os.replace(log + ".new", log)
    assert texts(t.poll()) == ["a2", "b1"] and t.stats.rotations == 1


# 10
def test_10_missing_at_start_is_read_from_start_when_it_appears(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log)  # at end, but nothing to skip: all of it is new
    assert t.poll() == [] and not t.up and t.at_eof
    append(log, b"a1\n")
    assert texts(t.poll()) == ["a1"] and t.up


class DenyFs(OsFs):
    def __init__(self):
        self.deny = True

    def open(self, path):
        if self.deny:
            raise PermissionError(13, "Permission denied", path)
        return super().open(path)


def test_10_permission_denied_then_restored(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\n")
    fs = DenyFs()
    t = FileTailer(log, fs=fs)
    assert t.poll() == [] and not t.up and t.stats.open_errors >= 1
    fs.deny = False
    assert texts(t.poll()) == ["a1"] and t.up


def test_10_permission_denied_at_resume_waits_for_the_file(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\n")
    t = FileTailer(log, from_start=True)
    t.poll()
    pos = t.position()
    t.close()
    append(log, b"a2\n")
    fs = DenyFs()
    t2 = FileTailer(log, position=pos, fs=fs)
    assert t2.poll() == [] and not t2.up
    fs.deny = False
    assert texts(t2.poll()) == ["a2"] and t2.stats.position_resets == 0


# 11
def test_11_partial_line_across_restart_is_completed_once(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\npar")
    assert texts(t.poll()) == ["a1"]
    t = restart(t)
    assert t.poll() == []
    append(log, b"tial\n")
    t = restart(t)
    got = t.poll()
    assert texts(got) == ["partial"] and not got[0].partial
    assert restart(t).poll() == []


# 12
def test_12_deleted_with_partial_last_line_flushes_it_on_switch(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\npar")
    assert texts(t.poll()) == ["a1"]
    os.unlink(log)
    assert t.poll() == []  # the writer could still finish it through its fd
    append(log, b"b1\n")
    got = t.poll()
    assert texts(got) == ["par", "b1"]
    assert [ln.partial for ln in got] == [True, False] and t.stats.partial_lines == 1


def test_12_rotated_partial_line_completed_by_the_old_writer(tmp_path):
    log = str(tmp_path / "vllm.log")
    writer = open(log, "ab", buffering=0)
    t = FileTailer(log, from_start=True)
    writer.write(b"a1\npar")
    assert texts(t.poll()) == ["a1"]
    os.rename(log, log + ".1")
    writer.write(b"tial\n")
    writer.close()
    append(log, b"b1\n")
    got = t.poll()
    assert texts(got) == ["partial", "b1"] and not got[0].partial


# 13
def test_13_lines_longer_than_the_read_buffer(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True, read_size=4096)
    l1, l2 = "x" * 4097, "y" * (32 * 1024 + 5)
    append(log, f"{l1}\n{l2}\nz\n".encode())
    assert texts(t.poll()) == [l1, l2, "z"]


def test_13_line_longer_than_loki_limit_is_truncated_and_following_goes_on(tmp_path):
    log = str(tmp_path / "vllm.log")
    limit = 256 * 1024
    t = FileTailer(log, from_start=True, read_size=32 * 1024, max_line_bytes=limit)
    append(log, b"a\n" + b"L" * (300 * 1024) + b"\nb\n")
    got = t.poll()
    assert texts(got) == ["a", "L" * limit, "b"]
    assert got[1].truncated and got[1].nbytes == 300 * 1024 + 1
    t2 = FileTailer(log, position=got[1].pos)
    append(log, b"c\n")
    assert texts(t2.poll()) == ["b", "c"]


def test_13_restart_inside_a_long_line_reads_it_again_once(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True, read_size=8, max_line_bytes=16)
    append(log, b"a\n" + b"L" * 40)
    assert texts(t.poll()) == ["a"]
    t = restart(t, read_size=8, max_line_bytes=16)
    append(log, b"L\nb\n")
    got = t.poll()
    assert texts(got) == ["L" * 16, "b"] and got[0].nbytes == 42


# 14
def test_14_utf8_crlf_empty_lines_with_one_byte_reads(tmp_path):
    log = str(tmp_path / "vllm.log")
    t = FileTailer(log, from_start=True, read_size=1)
    append(log, "INFO ünïcode 😀\r\n\r\n\n".encode() + b"bad \xff\n")
    assert texts(t.poll()) == ["INFO ünïcode 😀", "", "", "bad \ufffd"]
    assert t.stats.invalid_utf8 == 1


PIECES = [b"a", b" ", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\n", b"\r\n", b"\xff", b"\x00"]


@settings(max_examples=examples(60), deadline=None)
@given(content=st.lists(st.sampled_from(PIECES), max_size=40),
       cuts=st.lists(st.integers(1, 7), max_size=10), read_size=st.integers(1, 9),
       restart_every=st.integers(1, 4))
def test_14_any_chunking_and_restarts_yield_the_same_lines(tmp_path_factory, content, cuts,
                                                           read_size, restart_every):
    data = b"".join(content)
    log = str(tmp_path_factory.mktemp("p") / "vllm.log")
    open(log, "wb").close()
    t = FileTailer(log, from_start=True, read_size=read_size)
    got, i = [], 0
    for n, cut in enumerate(cuts + [len(data)]):
        append(log, data[i:i + cut])
        i += cut
        got += t.poll()
        if n % restart_every == 0:
            t = restart(t, read_size=read_size)
    got += t.poll()
    complete = data[:data.rfind(b"\n") + 1]
    want = [ln.replace(b"\x00", b"").rstrip(b"\r").decode("utf-8", "replace")
            for ln in complete.split(b"\n")[:-1]]
    assert texts(got) == want  # the alphabet never puts two \r before a \n
    if got:  # NUL runs at a line start belong to no line but are passed over
        assert got[-1].pos["offset"] == len(complete)


# 15
def test_15_unparseable_lines_pass_through_unchanged(tmp_path):
    log = str(tmp_path / "vllm.log")
    raw = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        '{"type": "vllm_audit_middleware", "v": 1, "request_id": "abc"',  # half-written JSON
        "\x1b[32mINFO\x1b[0m 11-22 10:00:00 other logger",
        "garbage \t\x7f",
    ]
    append(log, ("\n".join(raw) + "\n").encode())
    assert texts(FileTailer(log, from_start=True).poll()) == raw


# 17
def test_17_replay_after_crash_is_byte_identical(tmp_path):
    log = str(tmp_path / "vllm.log")
    append(log, b"a1\na2\na3\n")
    t = FileTailer(log, from_start=True)
    first = t.poll(max_lines=1)
    checkpointed = first[-1].pos
    after = t.poll()  # pushed, then SIGKILL before the next checkpoint
    replay = FileTailer(log, position=checkpointed).poll()
    def key(lines):
        return [(ln.text, ln.nbytes, ln.pos) for ln in lines]

    assert key(replay) == key(after) and len(after) == 2


# 18
def test_18_corrupt_checkpoint_falls_back_to_previous_position(tmp_path):
    log, state = str(tmp_path / "vllm.log"), str(tmp_path / "checkpoint.json")
    append(log, b"a1\na2\na3\n")
    t = FileTailer(log, from_start=True)
    lines = t.poll()
    write_atomic(state, {"tail": lines[0].pos})
    write_atomic(state, {"tail": lines[1].pos})
    with open(state, "r+b") as f:  # torn by a crash / bit rot
        f.truncate(20)
    loaded = read_checkpoint(state)
    assert loaded.source == "prev"
    assert texts(FileTailer(log, position=loaded.state["tail"]).poll()) == ["a2", "a3"]


# 19
def test_19_failing_checkpoint_write_does_not_disturb_the_tailer(tmp_path):
    from exporter.checkpoint import CheckpointError, OsOps

    class Full(OsOps):
        def write(self, fd, data):
            raise OSError(28, "No space left on device")

    log, state = str(tmp_path / "vllm.log"), str(tmp_path / "checkpoint.json")
    t = FileTailer(log, from_start=True)
    append(log, b"a1\n")
    (a1,) = t.poll()
    write_atomic(state, {"tail": a1.pos})
    append(log, b"a2\n")
    (a2,) = t.poll()
    try:
        write_atomic(state, {"tail": a2.pos}, ops=Full())
    except CheckpointError as e:
        assert e.reason == "ENOSPC"
    else:
        raise AssertionError("no CheckpointError")
    append(log, b"a3\n")
    assert texts(t.poll()) == ["a3"]
    assert read_checkpoint(state).state == {"tail": a1.pos}
