import gzip
import stat

from exporter.archive import ArchiveWriter
from exporter.chain import Chain
from exporter.compliance.retention import apply_retention, retention_main
from exporter.compliance.verify import verify_archive
from exporter.record import new_record

KEY = b"retention-key-0123456789"
DAY1 = 1795329600.0  # 2026-11-22T06:40:00Z
NOW = DAY1 + 10 * 86400  # 2026-12-02


def build(root, days=4):
    t = [DAY1]
    w = ArchiveWriter(root, chain=Chain(KEY), clock=lambda: t[0])
    for d in range(days):
        r = new_record()
        r.update(ts="2026-11-22T00:00:00.000Z", request_id=f"chatcmpl-{d}")
        w.append(r)
        w.flush()
        t[0] += 86400
    w.close()


def names(root):
    return sorted(p.name for p in root.iterdir())


def test_compress_then_delete_keeps_chain_verifiable(tmp_path):
    build(tmp_path)  # 11-22 .. 11-25, the last one open
    acts = apply_retention(tmp_path, now=NOW, compress_after_days=8)  # before 11-24
    assert [(a.day, a.action) for a in acts] == [("2026-11-22", "compressed"), ("2026-11-23", "compressed")]
    gz = tmp_path / "audit-2026-11-22.jsonl.gz"
    assert stat.S_IMODE(gz.stat().st_mode) == 0o640 and gzip.decompress(gz.read_bytes()).count(b"\n") == 1
    assert verify_archive(tmp_path, KEY).ok
    acts = apply_retention(tmp_path, now=NOW, delete_after_days=9, key=KEY)  # before 11-23
    assert [(a.day, a.action) for a in acts] == [("2026-11-22", "deleted")]
    assert "audit-2026-11-22.manifest.json" in names(tmp_path)
    report = verify_archive(tmp_path, KEY)
    assert report.ok and report.retained_days == ["2026-11-22"]


def test_never_touches_newest_unsealed_or_kept_days(tmp_path):
    build(tmp_path)
    (tmp_path / "audit-2026-11-23.manifest.json").unlink()  # unsealed: must stay
    acts = apply_retention(tmp_path, now=NOW + 100 * 86400, delete_after_days=1, keep_from_day="2026-11-24",
                           key=KEY)
    assert [a.day for a in acts] == ["2026-11-22"]
    assert {"audit-2026-11-23.jsonl", "audit-2026-11-24.jsonl", "audit-2026-11-25.jsonl"} <= set(names(tmp_path))
    again = apply_retention(tmp_path, now=NOW + 100 * 86400, delete_after_days=1, key=KEY)
    assert [a.day for a in again] == ["2026-11-24"]  # 11-23 unsealed, 11-25 newest: both stay
    assert {"audit-2026-11-23.jsonl", "audit-2026-11-25.jsonl"} <= set(names(tmp_path))


def test_leftover_plain_file_beside_gz_is_cleaned(tmp_path):
    build(tmp_path)
    plain = tmp_path / "audit-2026-11-22.jsonl"
    (tmp_path / "audit-2026-11-22.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    acts = apply_retention(tmp_path, now=NOW)
    assert [a.action for a in acts] == ["cleaned"] and not plain.exists()
    assert verify_archive(tmp_path, KEY).ok


def test_retention_main_prints_actions(tmp_path, capsys):
    build(tmp_path)
    import sys
    assert retention_main(str(tmp_path), compress_after_days=None, delete_after_days=8,
                          clock=lambda: NOW, out=sys.stdout, key=KEY) == 0
    assert capsys.readouterr().out.count("deleted ") == 2
