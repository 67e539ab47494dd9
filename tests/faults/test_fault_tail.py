"""Cases 1-16 of reliability.md "Fault and bad-input cases": log file faults,
end to end through the real runtime, with one invariant (harness.py): every
request exactly once in the archive, in Loki and in the counters.

Where a case has a documented unavoidable loss (exporter/tail/file.py docstring:
the copytruncate window; a plain truncation before the bytes were read), the
expected set is the clean replay of exactly the bytes that remained visible,
the loss is shown to be non-empty and the truncations counter counts it.
"""

from __future__ import annotations

import os
import types


from exporter.tail.position import OsFs

from .harness import (
    Writer, assert_exactly_once, capture_lines, chunks, reference_ids, sample, shift_times,
    split_at_requests,
)

LINES = capture_lines()


def feed(exp, w, lines) -> bytes:
    data = w.write(lines)
    exp.follow(data)
    if exp.rt is not None:
        exp.pump()
    return data


def clean_ids(ref_dir):
    ids = reference_ids(b"".join(LINES), ref_dir)
    assert len(ids) == 22
    return ids


def rotate(path, keep: int = 5) -> None:
    """RotatingFileHandler/logrotate (no dateext): path.N-1 -> path.N ... path -> path.1."""
    path = str(path)
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def copytruncate(path, writer_between=None) -> None:
    """logrotate copytruncate: copy, (writes in the window), truncate in place."""
    data = open(path, "rb").read()
    with open(f"{path}.1", "wb") as f:
        f.write(data)
    if writer_between is not None:
        writer_between()
    os.truncate(path, 0)


def truncations(exp) -> int:
    """The tailer's own count (TailStats); see test_03_..._truncations_metric
    for the Prometheus counter."""
    return exp.tailer_stats().truncations


# 1 --------------------------------------------------------------------------
def test_01_rename_rotation_writer_keeps_old_inode(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b, c, d = chunks(LINES, 4)
    feed(exp, w, a)
    exp.push()
    os.replace(exp.log, f"{exp.log}.1")  # rotated; the writer still holds the old inode
    feed(exp, w, b)                      # lands in vllm.log.1
    w.reopen()                           # the writer moves on to a new vllm.log
    feed(exp, w, c)
    exp.push()
    feed(exp, w, d)
    exp.settle()
    assert exp.tailer_stats().rotations == 1
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 2 --------------------------------------------------------------------------
def test_02_rapid_rotations_including_while_down(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    parts = chunks(LINES, 8)
    feed(exp, w, parts[0])
    for p in parts[1:3]:          # two rotations between two polls
        rotate(exp.log)
        w.reopen()
        feed(exp, w, p)
    exp.push()
    exp.commit()
    feed(exp, w, parts[3])        # read but not checkpointed
    exp.crash()
    for p in parts[4:7]:          # three rotations while down
        rotate(exp.log)
        w.reopen()
        feed(exp, w, p)
    exp.start()
    exp.pump()
    rotate(exp.log)
    w.reopen()
    feed(exp, w, parts[7])
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 3 --------------------------------------------------------------------------
def test_03_copytruncate_with_writes_in_the_window_is_the_documented_loss(make_exporter, loki, ref_dir):
    """Documented loss (tail.py, Truncation): what the writer adds between
    logrotate's copy and its truncate, and was not read before, is in neither
    file. Exactly those requests are missing; the truncation is counted."""
    exp = make_exporter()
    w = Writer(exp.log)  # O_APPEND, keeps its fd through the rotation
    exp.start()
    a, b, lost, d = split_at_requests(LINES, 0.25, 0.5, 0.75)
    feed(exp, w, a)
    exp.push()
    w.write(b)                                   # not read yet: the copy holds it
    copytruncate(exp.log, lambda: w.write(lost))  # written in the window
    exp.pump()
    feed(exp, w, d)
    exp.settle()
    expected = reference_ids(b"".join(a + b + d), ref_dir)
    gone = set(clean_ids(ref_dir)) - set(expected)
    assert gone, "the window held whole requests"
    assert truncations(exp) == 1
    assert_exactly_once(exp, expected, loki=loki)


def test_03_documented_loss_is_visible_in_the_truncations_metric(make_exporter, ref_dir):
    exp = make_exporter(loki=None)
    w = Writer(exp.log)
    exp.start()
    a, b, lost, d = split_at_requests(LINES, 0.25, 0.5, 0.75)
    feed(exp, w, a)
    copytruncate(exp.log, lambda: w.write(lost))
    feed(exp, w, d)
    os.replace(exp.log, f"{exp.log}.2")
    w.reopen()
    feed(exp, w, b)
    exp.settle()
    stats = exp.tailer_stats()
    # the copytruncate is one truncation; the rename (the tailer also counts
    # its switch back to the recreated path) at least one rotation
    assert stats.truncations == 1 and stats.rotations >= 1
    reg = exp.rt.registry
    assert sample(reg, "vllm_audit_truncations_total", source=str(exp.log)) == stats.truncations
    assert sample(reg, "vllm_audit_rotations_total", source=str(exp.log)) == stats.rotations


def test_03_copytruncate_without_writes_in_the_window_loses_nothing(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b, c = split_at_requests(LINES, 0.3, 0.6)
    feed(exp, w, a)
    w.write(b)            # unread at rotation time: drained from the copy
    copytruncate(exp.log)
    feed(exp, w, c)
    exp.settle()
    assert truncations(exp) == 1
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 4 --------------------------------------------------------------------------
def test_04_stale_writer_without_o_append_leaves_nul_bytes(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log, append=False)  # keeps writing at its own offset
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    copytruncate(exp.log)
    feed(exp, w, b)  # lands at the old offset: a sparse hole of NULs before it
    assert open(exp.log, "rb").read(16) == b"\0" * 16
    exp.settle()
    assert exp.tailer_stats().nul_bytes >= len(b"".join(a))
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)
    assert b"\\u0000" not in b"".join(p.read_bytes() for p in exp.archive.glob("audit-*.jsonl"))


# 5 --------------------------------------------------------------------------
def test_05_truncated_while_down_then_grown_past_the_saved_offset(make_exporter, loki, ref_dir):
    """Promtail cannot see this; the position's fingerprint does: the file is
    read from 0 and the truncation counted. All of the old content had been
    read, so nothing is lost."""
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.2)
    feed(exp, w, a)
    exp.commit()
    exp.push()
    exp.crash()
    os.truncate(exp.log, 0)
    feed(exp, w, b)
    assert os.path.getsize(exp.log) > len(b"".join(a))
    exp.start()
    exp.settle()
    assert truncations(exp) == 1
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_05_copytruncate_while_down_reads_the_rest_from_the_copy(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b, c = split_at_requests(LINES, 0.2, 0.5)
    feed(exp, w, a)
    exp.commit()
    exp.crash()
    w.write(b)  # unread, then rotated away while down
    copytruncate(exp.log)
    w.write(c)
    exp.follow(b"".join(c))
    exp.start()
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 6 --------------------------------------------------------------------------
def test_06_truncation_before_earlier_writes_were_read_is_the_documented_loss(
        make_exporter, loki, ref_dir):
    """Documented loss: bytes written and then truncated away in place (no
    copy) before the tailer read them exist nowhere any more. Counted."""
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, lost, c = split_at_requests(LINES, 0.3, 0.6)
    feed(exp, w, a)
    w.write(lost)
    os.truncate(exp.log, 0)
    feed(exp, w, c)
    exp.settle()
    expected = reference_ids(b"".join(a + c), ref_dir)
    assert set(clean_ids(ref_dir)) - set(expected)
    assert truncations(exp) == 1
    assert_exactly_once(exp, expected, loki=loki)


# 7 --------------------------------------------------------------------------
class ReusedInodeFs(OsFs):
    """Every file has the same (dev, inode): inode reuse at its worst."""

    def _fake(self, st):
        return types.SimpleNamespace(st_dev=1, st_ino=7, st_size=st.st_size, st_mode=st.st_mode,
                                     st_mtime_ns=st.st_mtime_ns)

    def stat(self, path):
        return self._fake(super().stat(path))

    def fstat(self, f):
        return self._fake(super().fstat(f))


def test_07_delete_and_recreate_live(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    os.unlink(exp.log)
    w.reopen()
    feed(exp, w, b)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_07_delete_and_recreate_while_down_with_inode_reused(make_exporter, loki, ref_dir):
    exp = make_exporter(fs=ReusedInodeFs())
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    exp.commit()
    exp.crash()
    os.unlink(exp.log)
    w.reopen()
    feed(exp, w, b)
    exp.start()
    exp.settle()
    assert truncations(exp) == 1  # "same inode, other bytes": read from 0
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 8 --------------------------------------------------------------------------
def _atomic_replace(path, data: bytes) -> None:
    tmp = f"{path}.tmp~"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_08_atomic_replace_with_new_content(make_exporter, loki, ref_dir):
    exp = make_exporter()
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    _atomic_replace(exp.log, b"".join(a))
    exp.follow(b"".join(a))
    exp.pump()
    _atomic_replace(exp.log, b"".join(b))
    exp.follow(b"".join(b))
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_08_atomic_replace_keeping_the_head_content(make_exporter, loki, ref_dir):
    exp = make_exporter()
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    _atomic_replace(exp.log, b"".join(a))
    exp.follow(b"".join(a))
    exp.pump()
    _atomic_replace(exp.log, b"".join(a + b))  # same bytes up to our offset, then more
    exp.follow(b"".join(b))
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 9 --------------------------------------------------------------------------
def test_09_symlink_retargeted(make_exporter, loki, ref_dir, tmp_path):
    exp = make_exporter()
    t1, t2 = tmp_path / "vllm-1.log", tmp_path / "vllm-2.log"
    os.symlink(t1, exp.log)
    w = Writer(t1)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)
    w2 = Writer(t2)
    w2.write(b"".join(b))
    os.symlink(t2, f"{exp.log}.new")
    os.replace(f"{exp.log}.new", exp.log)
    exp.follow(b"".join(b))
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 10 -------------------------------------------------------------------------
class DenyFs(OsFs):
    """open() fails with EACCES while ``deny`` (we are root: chmod cannot)."""

    deny = True

    def open(self, path):
        if self.deny:
            raise PermissionError(13, "Permission denied", path)
        return super().open(path)


def _without_from_start(exp):
    exp.extra = []
    real = exp.argv
    exp.argv = lambda: [a for a in real() if a != "--from-start"]


def test_10_missing_at_start_is_read_from_0_when_it_appears(make_exporter, loki, ref_dir):
    exp = make_exporter()
    _without_from_start(exp)  # even without --from-start: all of it is new
    exp.start()
    exp.pump()
    assert sample(exp.rt.registry, "vllm_audit_log_file_up", source=str(exp.log)) == 0
    w = Writer(exp.log)
    for part in chunks(LINES, 3):
        feed(exp, w, part)
    exp.settle()
    assert sample(exp.rt.registry, "vllm_audit_log_file_up", source=str(exp.log)) == 1
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


def test_10_permission_denied_then_restored(make_exporter, loki, ref_dir):
    fs = DenyFs()
    exp = make_exporter(fs=fs)
    _without_from_start(exp)
    w = Writer(exp.log)
    a, b = split_at_requests(LINES, 0.5)
    feed(exp, w, a)           # written while we cannot read it
    exp.start()
    exp.pump()
    assert sample(exp.rt.registry, "vllm_audit_log_file_up", source=str(exp.log)) == 0
    assert exp.tailer_stats().open_errors >= 1
    fs.deny = False
    feed(exp, w, b)
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 11 -------------------------------------------------------------------------
def test_11_partial_last_line_across_restart(make_exporter, loki, ref_dir):
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    line = b[1]  # the request's details line, long
    feed(exp, w, a + b[:1])
    w.write(line[: len(line) // 2])  # no newline yet
    exp.pump()
    exp.commit()
    exp.push()
    exp.crash()
    w.write(line[len(line) // 2:])
    exp.start()
    feed(exp, w, b[2:])
    exp.settle()
    assert_exactly_once(exp, clean_ids(ref_dir), loki=loki)


# 12 -------------------------------------------------------------------------
def test_12_file_deleted_with_a_partial_last_line(make_exporter, loki, ref_dir):
    """tail.py: the fragment is emitted (partial=True) when the file can no
    longer grow for us (we switch away), so the expected input is the
    fragment as a line of its own."""
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    a, b = split_at_requests(LINES, 0.5)
    last = a[-1]
    frag = last[: len(last) // 2]
    feed(exp, w, a[:-1])
    w.write(frag)
    exp.pump()
    os.unlink(exp.log)
    w.reopen()  # the writer starts a new file; the fragment is never completed
    exp.pump()
    feed(exp, w, b)
    exp.settle()
    assert exp.tailer_stats().partial_lines == 1
    expected = reference_ids(b"".join(a[:-1]) + frag + b"\n" + b"".join(b), ref_dir)
    assert_exactly_once(exp, expected, loki=loki)


# 13 -------------------------------------------------------------------------
def _inflate_prompt(line: bytes, size: int) -> bytes:
    head, sep, rest = line.partition(b"prompt: '")
    assert sep
    _, sep2, tail = rest.partition(b"', prompt_token_ids")
    assert sep2
    return head + sep + (b"A" * size) + sep2 + tail


def test_13_lines_over_1_mib_and_over_256_kb(make_exporter, loki, ref_dir):
    lines = list(LINES)
    details = [i for i, ln in enumerate(lines) if b" details: prompt: '" in ln]
    lines[details[0]] = _inflate_prompt(lines[details[0]], 1_300_000)  # > read buffer (1 MiB)
    lines[details[3]] = _inflate_prompt(lines[details[3]], 300_000)    # > Loki's 256 KB
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    for part in chunks(lines, 5):
        feed(exp, w, part)
        exp.push()
    exp.settle()
    expected = reference_ids(b"".join(lines), ref_dir)
    assert sorted(expected) == sorted(clean_ids(ref_dir))
    assert_exactly_once(exp, expected, loki=loki)
    big = [r for r in map(__import__("json").loads, loki.lines()) if "loki_truncated" in r["flags"]]
    assert len(big) == 2


# 14 -------------------------------------------------------------------------
def test_14_split_multibyte_invalid_utf8_crlf_empty_lines(make_exporter, loki, ref_dir):
    lines = []
    for i, ln in enumerate(LINES):
        if i % 3 == 0:
            ln = ln[:-1] + b"\r\n"            # multi-line formatter's CRLF
        lines.append(ln)
        if i % 10 == 0:
            lines.append(b"\n")              # empty lines
        if i % 50 == 25:
            lines.append(b"INFO 11-22 02:27:00 [x.py:1] bad \xff\xfe utf-8 \xc3\n")
    data = b"".join(lines)
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    # Cut the bytes right inside multibyte characters (the capture has CJK).
    leads = [i + 1 for i in range(len(data)) if data[i] >= 0xC0]
    cuts = sorted(set(leads[::7]) | {len(data)})
    start = 0
    for k, cut in enumerate(cuts):
        w.write(data[start:cut])
        start = cut
        if k % 5 == 0 or cut == len(data):
            exp.follow(data[:cut])
            exp.pump()
    exp.settle()
    stats = exp.tailer_stats()
    assert stats.invalid_utf8 >= 1
    expected = reference_ids(data, ref_dir)
    assert sorted(expected) == sorted(clean_ids(ref_dir))
    assert_exactly_once(exp, expected, loki=loki)
    # the split characters arrived intact
    text = "".join(p.read_text(encoding="utf-8") for p in exp.archive.glob("audit-*.jsonl"))
    assert "你好，世界" in text


# 15 -------------------------------------------------------------------------
GARBAGE = [
    b"Traceback (most recent call last):\n",
    b'  File "/x/vllm/entrypoints/openai/api_server.py", line 1, in <module>\n',
    b"ValueError: boom\n",
    b"(APIServer pid=9141) INFO 11-22 02:27:10 [request_logger.py:65] Received request chatcmpl-half: params: SamplingP\n",
    b"(APIServer pid=9141) INFO 11-22 02:27:10 [request_logger.py:108] Generated response chatcmpl-x: output: 'unterminated\n",
    b'{"type": "vllm_audit_middleware", "v": 1, "request_id": \n',
    b"2026-11-22 02:27:10,000 urllib3.connectionpool DEBUG Starting new HTTP connection\n",
    b"\x00\x01\x02 binary \xff garbage\n",
    b"WARNING 11-22 02:27:10 [future_version.py:9] Some brand new vLLM message format\n",
]


def test_15_garbage_and_unknown_format_lines_are_counted_never_fatal(make_exporter, loki, ref_dir):
    lines = []
    for i, ln in enumerate(LINES):
        lines.append(ln)
        if i % 40 == 7:
            lines.extend(GARBAGE)
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    for part in chunks(lines, 4):
        feed(exp, w, part)
    exp.settle()
    reg = exp.rt.registry
    ignored = sum(s.value for f in reg.collect() for s in f.samples
                  if s.name == "vllm_audit_log_lines_ignored_total")
    errors = sum(s.value for f in reg.collect() for s in f.samples
                 if s.name == "vllm_audit_parse_errors_total")
    assert ignored > 0 and errors > 0
    expected = reference_ids(b"".join(lines), ref_dir)
    assert set(clean_ids(ref_dir)) <= set(expected)
    assert_exactly_once(exp, expected, loki=loki)


# 16 -------------------------------------------------------------------------
def test_16_year_rollover_with_a_restart_across_new_year(make_exporter, loki, ref_dir, clock):
    """Header times ``12-31 23:59:5x`` then ``01-01 00:00:0x`` (no year in
    the text format). The records land in the right year, Loki accepts them
    all (in range of its clock), and a restart at New Year keeps the year."""
    import calendar
    import json
    # The capture's requests arrive at 02:27:09 and 02:27:11: put New Year between.
    shift = calendar.timegm((2027, 1, 1, 0, 0, 0)) - calendar.timegm((2026, 11, 22, 2, 27, 10))
    lines = shift_times(LINES, shift)
    assert any(b" 12-31 23:59:5" in ln for ln in lines) and any(b" 01-01 00:00:0" in ln for ln in lines)
    clock.now = calendar.timegm((2026, 12, 31, 23, 0, 0))
    exp = make_exporter()
    w = Writer(exp.log)
    exp.start()
    first = [i for i, ln in enumerate(lines) if b" 01-01 00:00:0" in ln][0]
    feed(exp, w, lines[:first + 3])
    exp.commit()
    exp.push()
    feed(exp, w, lines[first + 3:first + 20])
    exp.crash()
    exp.start()
    feed(exp, w, lines[first + 20:])
    exp.settle()
    expected = reference_ids(b"".join(lines), ref_dir)
    assert sorted(expected) == sorted(clean_ids(ref_dir))
    assert_exactly_once(exp, expected, loki=loki)
    recs = [json.loads(x) for x in loki.lines()]
    years = {r["ts"][:10] for r in recs}
    assert years <= {"2026-12-31", "2027-01-01"} and len(years) == 2, years
