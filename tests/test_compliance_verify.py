import gzip
import io
import json

import pytest

from exporter.archive import ArchiveWriter
from exporter.chain import GENESIS, Chain
from exporter import checkpoint as ckpt
from exporter.compliance.retention import apply_retention
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


STATE_OF: dict = {}  # archive dir -> the writer's final state (what the checkpoint holds)


@pytest.fixture
def arch(tmp_path):
    STATE_OF[tmp_path] = build(tmp_path)
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


def test_data_file_deleted_with_manifest_kept_is_not_passed_as_retention(arch):
    (arch / D2).unlink()
    p = check(arch, "deleted_file", D2)
    assert "no retention record" in p.detail and p.seq == 5


def test_deletion_recorded_by_retention_is_accepted(arch):
    acts = apply_retention(arch, now=DAY1 + 10 * 86400, delete_after_days=8, key=KEY)
    assert [(a.day, a.action) for a in acts] == [("2026-11-22", "deleted"), ("2026-11-23", "deleted")]
    report = verify_archive(arch, KEY)
    assert report.ok, str(report.problem)
    assert report.retained_days == ["2026-11-22", "2026-11-23"] and report.records == 12


def test_retention_record_forged_without_the_key_is_caught(arch):
    (arch / D2).unlink()
    path = arch / "audit-2026-11-23.manifest.json"
    m = json.loads(path.read_text())
    m["retention"] = {"deleted": D2, "at": "2026-12-30T00:00:00.000Z", "delete_after_days": 1}
    path.write_text(json.dumps(m))
    check(arch, "manifest_mismatch", "audit-2026-11-23.manifest.json")


def test_retention_record_that_retention_settings_do_not_explain(tmp_path):
    """Keyless archive: anybody can write the record, but it has to be one
    retention could have written (the day older than delete_after_days then)."""
    build(tmp_path, key=None)
    apply_retention(tmp_path, now=DAY1 + 10 * 86400, delete_after_days=9)
    assert verify_archive(tmp_path, None).ok
    path = tmp_path / "audit-2026-11-22.manifest.json"
    m = json.loads(path.read_text())
    m["retention"]["at"] = "2026-11-25T00:00:00.000Z"  # 3 days later: 9-day retention keeps the day
    path.write_text(json.dumps(m))
    p = check(tmp_path, "deleted_file", D1, key=None)
    assert "would not have deleted" in p.detail


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
    assert verify_main(str(arch), hmac_key_file=str(keyfile), out=out, err=err) == 3
    lines = out.getvalue().splitlines()
    assert lines[0] == "OK: 3 file(s), 12 record(s), seq 1..12, chain hmac-sha256"
    assert lines[1].startswith(f"WARNING: no state directory {arch / '.state'}: records cut from the end")
    out = io.StringIO()
    (arch / ".state").mkdir()
    ckpt.write_atomic(str(arch / ".state" / "checkpoint.json"), {"archive": STATE_OF[arch]}, key=KEY)
    assert verify_main(str(arch), hmac_key_file=str(keyfile), out=out, err=err) == 0
    assert out.getvalue() == "OK: 3 file(s), 12 record(s), seq 1..12, chain hmac-sha256\n"
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


# -- the end of the archive, against the exporter's checkpoint ------------------------

def _main(root, key=KEY, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = verify_main(str(root), hmac_key_env=key and key.decode(), out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def anchored(arch):
    """The archive with the checkpoint the exporter would have written (keyed)."""
    (arch / ".state").mkdir()
    ckpt.write_atomic(str(arch / ".state" / "checkpoint.json"), {"archive": STATE_OF[arch]}, key=KEY)
    assert _main(arch)[0] == 0
    return arch


def test_cutting_the_newest_records_is_caught_by_the_keyed_checkpoint(anchored):
    rw(anchored / D3, lambda ls: ls[:-2])
    code, out, _ = _main(anchored)
    assert code == 1 and out.startswith("BROKEN: ") and ": truncated: archive ends at seq 10, " \
        "the checkpoint committed seq 12" in out


def test_rewriting_the_checkpoint_to_match_a_cut_does_not_pass(anchored):
    rw(anchored / D3, lambda ls: ls[:-2])
    rec = json.loads((anchored / D3).read_bytes().splitlines()[-1])
    forged = {"file": D3, "size": (anchored / D3).stat().st_size, "seq": rec["seq"], "head_hash": rec["hash"]}
    path = str(anchored / ".state" / "checkpoint.json")
    # 1. with the unkeyed envelope the old exporter wrote (anyone can compute it)
    ckpt.write_atomic(path, {"archive": forged}, key=None)
    code, out, _ = _main(anchored)
    assert code == 3 and "WARNING: " in out and "is not keyed with the archive key" in out
    # 2. a keyed-looking envelope without the key
    data = ckpt.encode({"archive": forged}, key=b"attacker")
    with open(path, "wb") as f:
        f.write(data)
    code, out, _ = _main(anchored)
    assert code == 1 and "checkpoint: its HMAC does not match" in out
    # 3. the genuine keyed checkpoint edited in place
    ckpt.write_atomic(path, {"archive": STATE_OF[anchored]}, key=KEY)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data.replace(b'"seq":12', b'"seq":10'))
    assert _main(anchored)[0] == 1


def test_without_the_state_directory_the_end_is_not_ruled_out(anchored):
    import shutil
    rw(anchored / D3, lambda ls: ls[:-2])
    shutil.rmtree(anchored / ".state")
    code, out, _ = _main(anchored)
    assert code == 3 and out.splitlines()[0].startswith("OK: ") and "cannot be ruled out" in out


def test_only_the_previous_checkpoint_left_is_a_warning(anchored):
    path = anchored / ".state" / "checkpoint.json"
    ckpt.write_atomic(str(path), {"archive": STATE_OF[anchored]}, key=KEY)  # now .prev too
    path.unlink()
    code, out, _ = _main(anchored)
    assert code == 3 and "checkpoint.json.prev" in out


def test_state_dir_elsewhere(anchored, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("state")
    (anchored / ".state" / "checkpoint.json").rename(elsewhere / "checkpoint.json")
    assert _main(anchored)[0] == 3
    assert _main(anchored, state_dir=str(elsewhere))[0] == 0


def test_keyless_archive_with_its_checkpoint_is_ok(tmp_path):
    state = build(tmp_path, key=None)
    (tmp_path / ".state").mkdir()
    ckpt.write_atomic(str(tmp_path / ".state" / "checkpoint.json"), {"archive": state}, key=None)
    assert _main(tmp_path, key=None)[0] == 0
    rw(tmp_path / D3, lambda ls: ls[:-1])
    assert _main(tmp_path, key=None)[0] == 1
