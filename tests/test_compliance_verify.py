import gzip
import io
import json

import pytest

from exporter.archive import ArchiveWriter
from exporter.chain import GENESIS, Chain
from exporter.compliance.verify import verify_archive, verify_main
from exporter.record import dumps_line, new_record

KEY = b"verify-key-0123456789"
DAY1 = 1795329600.0  # 2026-11-22T06:40:00Z
D1, D2, D3 = "audit-2026-11-22.jsonl", "audit-2026-11-23.jsonl", "audit-2026-11-24.jsonl"


def rec(i):
    r = new_record()
    r.update(ts="2026-11-22T06:40:00.000Z", request_id=f"chatcmpl-{i}", prompt=f"prompt {i}",
             output=f"output {i}", status="completed")
    return r


def build(root, key=KEY, days=3, per_day=4):
    """days x per_day records; every day but the last sealed by a manifest."""
    t = [DAY1]
    w = ArchiveWriter(root, chain=Chain(key), clock=lambda: t[0])
    n = 0
    for _ in range(days):
        for _ in range(per_day):
            n += 1
            w.append(rec(n))
        w.flush()
        t[0] += 86400
    state = w.state()
    w.close()
    return state


def rw(path, fn):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(lines)))


@pytest.fixture
def arch(tmp_path):
    build(tmp_path)
    return tmp_path


def check(root, kind, file, line=None, key=KEY):
    report = verify_archive(root, key)
    assert report.problem is not None, "tampering not detected"
    assert (report.problem.kind, report.problem.file) == (kind, file), str(report.problem)
    if line is not None:
        assert report.problem.line == line, str(report.problem)
    return report.problem


def test_untouched_archive_passes(arch):
    report = verify_archive(arch, KEY)
    assert report.ok, str(report.problem)
    assert (report.files, report.records, report.first_seq, report.last_seq, report.chain) == (
        3, 12, 1, 12, "hmac-sha256")


def test_edit_a_field(arch):
    def edit(lines):
        r = json.loads(lines[1])
        r["output"] = "something else"
        lines[1] = (dumps_line(r) + "\n").encode()
        return lines
    rw(arch / D2, edit)
    assert check(arch, "edited", D2, 2).seq == 6


def test_edit_in_open_day_without_manifest(arch):
    rw(arch / D3, lambda ls: [ls[0].replace(b"prompt 9", b"prompt X")] + ls[1:])
    check(arch, "edited", D3, 1)


def test_delete_a_line(arch):
    rw(arch / D2, lambda ls: ls[:1] + ls[2:])
    p = check(arch, "deleted", D2, 2)
    assert "seq 6" in p.detail


def test_insert_a_copied_line(arch):
    rw(arch / D2, lambda ls: ls[:2] + [ls[0]] + ls[2:])
    check(arch, "inserted", D2, 3)


def test_insert_a_forged_line(arch):
    forged = Chain(b"attacker").seal(rec(99), 7, "hmac-sha256:" + "0" * 64)
    rw(arch / D3, lambda ls: ls[:1] + [(dumps_line(forged) + "\n").encode()] + ls[1:])
    check(arch, "inserted", D3, 2)


def test_swap_two_lines(arch):
    rw(arch / D2, lambda ls: [ls[0], ls[2], ls[1], ls[3]])
    p = check(arch, "reordered", D2, 2)
    assert "line 3" in p.detail


def test_truncate_sealed_file_mid_line(arch):
    data = (arch / D2).read_bytes()
    (arch / D2).write_bytes(data[:-10])
    check(arch, "truncated", D2, 4)


def test_delete_last_line_of_sealed_file(arch):
    rw(arch / D2, lambda ls: ls[:-1])
    check(arch, "truncated", D2)


def test_torn_last_line_of_open_file(arch):
    data = (arch / D3).read_bytes()
    (arch / D3).write_bytes(data[:-10])
    check(arch, "torn_line", D3, 4)


def test_delete_whole_file_and_its_manifest(arch):
    (arch / D2).unlink()
    (arch / "audit-2026-11-23.manifest.json").unlink()
    p = check(arch, "missing_file", D3, 1)
    assert "seq 5..8" in p.detail


def test_delete_first_file_and_manifest(arch):
    (arch / D1).unlink()
    (arch / "audit-2026-11-22.manifest.json").unlink()
    check(arch, "missing_file", D2, 1)


def test_retention_gap_with_manifest_is_accepted(arch):
    (arch / D2).unlink()
    report = verify_archive(arch, KEY)
    assert report.ok, str(report.problem)
    assert report.retained_days == ["2026-11-23"] and report.records == 12


def test_gzipped_day_is_read_transparently(arch):
    (arch / (D1 + ".gz")).write_bytes(gzip.compress((arch / D1).read_bytes()))
    (arch / D1).unlink()
    assert verify_archive(arch, KEY).ok


def test_damaged_gzip_is_reported(arch):
    data = gzip.compress((arch / D1).read_bytes())
    (arch / (D1 + ".gz")).write_bytes(data[: len(data) // 2])
    (arch / D1).unlink()
    check(arch, "truncated", D1 + ".gz")


def test_edit_a_manifest_keyed(arch):
    path = arch / "audit-2026-11-23.manifest.json"
    m = json.loads(path.read_text())
    m["count"] = 3
    path.write_text(json.dumps(m))
    check(arch, "manifest_mismatch", "audit-2026-11-23.manifest.json")


def test_edit_a_manifest_unkeyed(tmp_path):
    build(tmp_path, key=None)
    path = tmp_path / "audit-2026-11-22.manifest.json"
    m = json.loads(path.read_text())
    m["sha256"] = "0" * 64
    path.write_text(json.dumps(m))
    check(tmp_path, "manifest_mismatch", D1, key=None)


def test_manifest_removed_from_closed_day(arch):
    (arch / "audit-2026-11-22.manifest.json").unlink()
    check(arch, "missing_manifest", D1)


def test_unkeyed_rewrite_is_caught_by_keyed_verify(arch):
    # An attacker without the key re-chains day 3 with plain SHA-256.
    def rechain(lines):
        recs = [json.loads(x) for x in lines]
        chain, out, prev = Chain(None), [], recs[0]["prev_hash"]
        for r in recs:
            r["output"] = "rewritten"
            s = chain.seal(r, r["seq"], prev)
            prev = s["hash"]
            out.append((dumps_line(s) + "\n").encode())
        return out
    rw(arch / D3, rechain)
    p = check(arch, "edited", D3, 1)
    assert "unkeyed" in p.detail


def test_expected_state_catches_cut_at_end_of_newest_file(tmp_path):
    state = build(tmp_path)
    rw(tmp_path / D3, lambda ls: ls[:-1])
    assert verify_archive(tmp_path, KEY).ok  # undetectable without an anchor
    report = verify_archive(tmp_path, KEY, expected_state=state)
    assert report.problem.kind == "truncated"


def test_first_record_must_start_at_genesis(tmp_path):
    chain = Chain(None)
    line = dumps_line(chain.seal(rec(1), 1, "sha256:" + "1" * 64))
    (tmp_path / D1).write_text(line + "\n")
    check(tmp_path, "broken_link", D1, 1, key=None)
    (tmp_path / D1).write_text(dumps_line(chain.seal(rec(1), 1, GENESIS)) + "\n")
    assert verify_archive(tmp_path, None).ok


def test_verify_main_exit_codes_and_messages(arch, tmp_path_factory):
    keyfile = tmp_path_factory.mktemp("k") / "key"
    keyfile.write_bytes(KEY + b"\n")
    out, err = io.StringIO(), io.StringIO()
    assert verify_main(str(arch), hmac_key_file=str(keyfile), out=out, err=err) == 0
    assert out.getvalue().startswith("OK: 3 file(s), 12 record(s), seq 1..12, chain hmac-sha256")
    assert verify_main(str(arch), out=out, err=err) == 2  # keyed archive, no key
    assert "hmac-key-file" in err.getvalue()
    out = io.StringIO()
    assert verify_main(str(arch), hmac_key_env="wrong", out=out, err=err) == 1
    assert "wrong HMAC key" in out.getvalue()
    assert "wrong" not in err.getvalue()
    empty = tmp_path_factory.mktemp("empty")
    assert verify_main(str(empty), hmac_key_env="x", out=out, err=err) == 2
    rw(arch / D2, lambda ls: ls[:1] + ls[2:])
    out = io.StringIO()
    assert verify_main(str(arch), hmac_key_file=str(keyfile), out=out, err=err) == 1
    assert out.getvalue().startswith(f"BROKEN: {D2} line 2 seq 7: deleted")
