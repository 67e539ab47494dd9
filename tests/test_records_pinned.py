"""Every record byte stays as it is: replaying each real capture and format
fixture gives archive files with the SHA-256 pinned in
tests/fixtures/archive_digests.json, with the C parser accelerator and with
the pure-Python path alike. A speed-up must not move a byte.

A change that alters records on purpose (a new field, another encoding)
regenerates the pins, and says so in its commit:

    .venv/bin/python tests/test_records_pinned.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PINS = FIXTURES / "archive_digests.json"
LOGS = sorted(p.relative_to(ROOT).as_posix() for p in FIXTURES.rglob("*.log"))


NOW = 1795341600.0  # 2026-11-22T10:00:00Z: the year of year-less log times, the archive's day


def archive_digests(log: str, workdir: Path) -> dict[str, str]:
    """What ``vllm-audit-exporter replay LOG`` writes, under a fixed clock."""
    from exporter.cli import make_parser
    from exporter.runtime import build as build_runtime
    from exporter.settings import build

    archive = workdir / "archive"
    argv = ["replay", str(ROOT / log), "--archive-dir", str(archive), "--no-progress"]
    rt = build_runtime(build("replay", make_parser().parse_args(argv), {}), live=False, clock=lambda: NOW)
    while not rt.pipeline.done():
        rt.pipeline.step()
    rt.pipeline.finish()
    rt.archive.close()
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(archive.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def pins() -> dict:
    return json.loads(PINS.read_text())


def test_every_capture_is_pinned(pins):
    assert sorted(pins) == LOGS


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
@pytest.mark.parametrize("log", LOGS)
def test_archive_bytes_are_pinned(log, pure, pins, tmp_path):
    from exporter.parse import fast
    if not pure and fast.scan is None:
        pytest.skip("the C parser accelerator is not built here")
    fast.set_enabled(not pure)
    try:
        assert archive_digests(log, tmp_path) == pins[log]
    finally:
        fast.set_enabled(True)


if __name__ == "__main__":
    import tempfile
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    sys.path.insert(0, str(ROOT))
    out = {}
    for log in LOGS:
        with tempfile.TemporaryDirectory() as d:
            out[log] = archive_digests(log, Path(d))
    PINS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} logs pinned in {PINS.relative_to(ROOT)}")
