"""`vllm-audit-exporter retention` never touches a day Loki has not shipped,
and the chain stays verifiable after compression."""

import json
from pathlib import Path

from exporter.archive import ArchiveWriter
from exporter.chain import Chain
from exporter.cli import main
from exporter.record import new_record

DAY = 86400.0


def _archive(root: Path, days: int, start: float) -> None:
    clock = {"t": start}
    writer = ArchiveWriter(root, chain=Chain(None), clock=lambda: clock["t"])
    for d in range(days):
        clock["t"] = start + d * DAY
        for i in range(3):
            rec = new_record()
            rec.update(request_id=f"r{d}-{i}", status="completed")
            writer.append(rec)
        writer.flush()
    writer.close()


def test_retention_keeps_unshipped_days_and_verify_still_passes(tmp_path, capsys):
    root = tmp_path / "archive"
    _archive(root, days=5, start=1_700_000_000.0)
    files = sorted(p.name for p in root.glob("audit-*.jsonl"))
    assert len(files) == 5
    # Loki has shipped only up to the third day's file
    (root / ".state").mkdir(exist_ok=True)
    (root / ".state" / "loki.json").write_text(json.dumps({"file": files[2], "offset": 10}))

    assert main(["retention", str(root), "--compress-after-days", "1"]) == 0
    remaining = sorted(p.name for p in root.glob("audit-*.jsonl"))
    compressed = sorted(p.name for p in root.glob("audit-*.jsonl.gz"))
    assert remaining == files[2:]  # Loki's day and later untouched
    assert compressed == [f + ".gz" for f in files[:2]]
    capsys.readouterr()
    # intact, but written without an exporter checkpoint: its end is not anchored
    assert main(["verify", str(root)]) == 3
    out = capsys.readouterr().out
    assert out.startswith("OK") and "WARNING: no checkpoint in" in out


KEY = "retention-cli-key"


def _keyed_archive(root: Path, days: int, start: float) -> None:
    clock = {"t": start}
    writer = ArchiveWriter(root, chain=Chain(KEY.encode()), clock=lambda: clock["t"])
    for d in range(days):
        clock["t"] = start + d * DAY
        rec = new_record()
        rec.update(request_id=f"r{d}", status="completed")
        writer.append(rec)
        writer.flush()
    writer.close()


def test_retention_deletes_a_keyed_archive_only_with_the_key(tmp_path, capsys, monkeypatch):
    root = tmp_path / "archive"
    _keyed_archive(root, days=4, start=1_700_000_000.0)
    before = sorted(p.name for p in root.iterdir())
    monkeypatch.delenv("VLLM_AUDIT_HMAC_KEY", raising=False)
    assert main(["retention", str(root), "--delete-after-days", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HMAC-chained" in err[0] and "--hmac-key-file" in err[0]
    assert sorted(p.name for p in root.iterdir()) == before  # nothing deleted
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    assert main(["retention", str(root), "--delete-after-days", "1", "--hmac-key-file", str(keyfile)]) == 0
    assert capsys.readouterr().out.count("deleted ") == 3
    monkeypatch.setenv("VLLM_AUDIT_HMAC_KEY", KEY)
    assert main(["verify", str(root)]) == 3  # chain and recorded deletions fine; no checkpoint
    assert "3 day(s) deleted by retention" in capsys.readouterr().out


def test_retention_key_from_the_environment_and_a_wrong_key_refuses(tmp_path, capsys, monkeypatch):
    root = tmp_path / "archive"
    _keyed_archive(root, days=3, start=1_700_000_000.0)
    monkeypatch.setenv("VLLM_AUDIT_HMAC_KEY", "not-the-key")
    assert main(["retention", str(root), "--delete-after-days", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("refused ") == 2 and "does not verify with this key" in err
    assert len(list(root.glob("audit-*.jsonl"))) == 3  # evidence kept
    monkeypatch.setenv("VLLM_AUDIT_HMAC_KEY", KEY)
    assert main(["retention", str(root), "--delete-after-days", "1"]) == 0
    assert len(list(root.glob("audit-*.jsonl"))) == 1


def test_standalone_retention_with_state_dir_keeps_what_loki_has_not_shipped(tmp_path, capsys):
    """With the exporter's state elsewhere (--state-dir, as `run` was given
    it), standalone retention looked for Loki's position under DIR/.state
    only, and compressed days Loki had not shipped: they never reached Loki."""
    root, state = tmp_path / "archive", tmp_path / "state"
    _archive(root, days=4, start=1_700_000_000.0)
    files = sorted(p.name for p in root.glob("audit-*.jsonl"))
    state.mkdir()
    (state / "loki.json").write_text(json.dumps({"file": files[1], "offset": 10}))
    assert main(["retention", str(root), "--compress-after-days", "1", "--state-dir", str(state)]) == 0
    assert sorted(p.name for p in root.glob("audit-*.jsonl")) == files[1:]
    assert sorted(p.name for p in root.glob("audit-*.jsonl.gz")) == [files[0] + ".gz"]
    # the same through the environment, as the compose service sets it
    root2 = tmp_path / "archive2"
    _archive(root2, days=4, start=1_700_000_000.0)
    import os
    os.environ["VLLM_AUDIT_STATE_DIR"] = str(state)
    try:
        (state / "loki.json").write_text(json.dumps({"file": files[1], "offset": 10}))
        assert main(["retention", str(root2), "--compress-after-days", "1"]) == 0
    finally:
        del os.environ["VLLM_AUDIT_STATE_DIR"]
    assert sorted(p.name for p in root2.glob("audit-*.jsonl")) == files[1:]
