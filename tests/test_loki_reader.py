"""Archive reading from a position: complete lines, file order, clamping, backlog."""

from exporter.loki.archive_reader import ArchiveReader, Position

try:
    from tests.loki_server import archive_line, write_archive
except ImportError:
    from loki_server import archive_line, write_archive

TS = "2026-11-22T10:00:00.000Z"


def test_reads_complete_lines_across_files_in_order(tmp_path):
    write_archive(tmp_path, "2026-11-22", [archive_line(i, TS) for i in range(3)])
    write_archive(tmp_path, "2026-11-23", [archive_line(i, TS) for i in range(3, 5)])
    (tmp_path / "other.jsonl").write_text("ignored\n")
    r = ArchiveReader(tmp_path)
    lines = r.read(Position(None, 0), 10**6)
    assert [l.file for l in lines] == ["audit-2026-11-22.jsonl"] * 3 + ["audit-2026-11-23.jsonl"] * 2
    assert all('"seq":%d' % i in l.text for i, l in enumerate(lines))
    assert r.backlog(Position(None, 0)) == 5
    mid = Position(lines[1].file, lines[1].end)
    assert [l.start for l in r.read(mid, 10**6)][0] == lines[2].start
    assert r.backlog(mid) == 3
    assert r.backlog(Position(lines[-1].file, lines[-1].end)) == 0


def test_partial_tail_is_not_read_and_blocks_later_files(tmp_path):
    full = archive_line(0, TS)
    write_archive(tmp_path, "2026-11-22", [full, archive_line(1, TS)[:40]])
    write_archive(tmp_path, "2026-11-23", [archive_line(2, TS)])
    r = ArchiveReader(tmp_path)
    lines = r.read(Position(None, 0), 10**6)
    assert len(lines) == 1 and lines[0].end == len(full.encode())
    assert r.read(Position(lines[0].file, lines[0].end), 10**6) == []  # waits for the newline


def test_budget_returns_at_least_one_long_line(tmp_path):
    big = archive_line(0, TS, prompt="x" * 600_000)
    write_archive(tmp_path, "2026-11-22", [big, archive_line(1, TS)])
    lines = ArchiveReader(tmp_path).read(Position(None, 0), 1000)
    assert len(lines) == 1 and lines[0].end == len(big.encode())


def test_normalize_clamps_cut_back_file_and_skips_missing(tmp_path):
    write_archive(tmp_path, "2026-11-22", [archive_line(0, TS)])
    write_archive(tmp_path, "2026-11-24", [archive_line(1, TS)])
    r = ArchiveReader(tmp_path)
    size = (tmp_path / "audit-2026-11-22.jsonl").stat().st_size
    pos, note = r.normalize(Position("audit-2026-11-22.jsonl", size + 500))
    assert pos == Position("audit-2026-11-22.jsonl", size) and "clamped" in note
    pos, note = r.normalize(Position("audit-2026-11-23.jsonl", 77))
    assert pos == Position("audit-2026-11-24.jsonl", 0) and "missing" in note
    assert r.normalize(Position("audit-2026-11-22.jsonl", 3)) == (Position("audit-2026-11-22.jsonl", 3), None)


def test_backlog_is_incremental_and_survives_cut_back(tmp_path):
    write_archive(tmp_path, "2026-11-22", [archive_line(i, TS) for i in range(4)])
    r = ArchiveReader(tmp_path)
    assert r.backlog(Position(None, 0)) == 4
    write_archive(tmp_path, "2026-11-22", [archive_line(4, TS)])
    assert r.backlog(Position(None, 0)) == 5
    write_archive(tmp_path, "2026-11-22", [archive_line(0, TS)], mode="w")  # cut back
    assert r.backlog(Position(None, 0)) == 1
