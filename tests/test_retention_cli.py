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
    assert main(["verify", str(root)]) == 0
    assert "OK" in capsys.readouterr().out
