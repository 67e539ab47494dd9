"""Commit pacing: a costly checkpoint (a pile-up of in-flight requests)
widens the gap between commits so commits stay a bounded share of the time,
and records stay byte-identical at any gap (exactly-once does not depend on
how often the pipeline commits)."""

from __future__ import annotations

from pathlib import Path

from exporter import pipeline as pl
from exporter.cli import make_parser
from exporter.runtime import build
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def _runtime(archive: Path):
    args = make_parser().parse_args(["replay", str(CAPTURE), "--archive-dir", str(archive),
                                     "--model", "tiny", "--no-progress"])
    return build(build_settings("replay", args, {}), live=False)


def test_cheap_commits_keep_the_configured_interval(tmp_path):
    p = _runtime(tmp_path / "a").pipeline
    p._pace(pl.PACE_FROM_CPU / 2)
    assert p.commit_gap == p.checkpoint_interval


def test_costly_commits_widen_the_gap_to_the_cpu_share_and_no_further_than_the_cap(tmp_path):
    p = _runtime(tmp_path / "a").pipeline
    p._pace(0.2)
    assert abs(p.commit_gap - 0.2 * (1 - pl.COMMIT_CPU_SHARE) / pl.COMMIT_CPU_SHARE) < 1e-9
    assert p.commit_gap > p.checkpoint_interval
    p._pace(1000.0)
    assert p.commit_gap == pl.MAX_COMMIT_GAP
    p._pace(0.0)  # the pile-up drained: back to the configured cadence
    assert p.commit_gap == p.checkpoint_interval


def _replay(archive: Path, gap: float | None) -> tuple[bytes, int]:
    rt = _runtime(archive)
    p = rt.pipeline
    p.batch_lines = 5
    commits = 0
    while not p.done():
        if gap is not None:
            p.commit_gap = gap  # as _pace would set it
        before = p.commits
        p.step()
        commits += p.commits - before
    p.finish()
    rt.archive.close()
    return b"".join(f.read_bytes() for f in sorted(archive.glob("audit-*.jsonl"))), commits


def test_records_are_byte_identical_whatever_the_commit_gap(tmp_path):
    every, n_every = _replay(tmp_path / "every", 0.0)
    never, n_never = _replay(tmp_path / "never", 1e9)
    assert n_every > 10 and n_never == 0  # the gap really changed how often it committed
    assert every == never and every.count(b"\n") > 10
