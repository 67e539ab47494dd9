"""The bench scripts run on tiny inputs and print well-formed results.

No timing is asserted (2 shared, noisy cores): only that each script runs
the real path to the end and reports every figure the README table uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _run(*args: str, timeout: float = 60) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def _positive(d: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, (k, d[k])


def test_make_big_log_rewrites_ids_times_and_users(tmp_path):
    sys.path.insert(0, str(BENCH))
    import make_big_log
    out = tmp_path / "big.log"
    info = make_big_log.make(out, capture="debug", size=300_000, users=7, seed=3)
    assert info["bytes"] == out.stat().st_size >= 300_000
    assert info["repetitions"] >= 2 and info["requests"] == info["repetitions"] * info["requests_per_repetition"]
    text = out.read_text(encoding="utf-8")
    received = re.findall(r"(?m)^\(APIServer pid=\d+\) INFO [\d-]+ [\d:]+ \[request_logger\.py:\d+\] "
                          r"Received request (\S+): ", text)
    assert len(set(received)) == len(received) == info["requests"]  # unique over the file
    users = {ln.split('"user":"', 1)[1].split('"', 1)[0] for ln in text.splitlines() if "JSON body:" in ln}
    assert users and users <= {f"user{i:05d}" for i in range(7)}
    # the forged header inside a prompt is left alone, real headers move on
    assert "INFO 11-22 10:00:00 [request_logger.py:65] Received request chatcmpl-forged" in text
    info_log = make_big_log.make(tmp_path / "info.log", capture="info", size=100_000)
    assert info_log["requests_per_repetition"] > 0 and info_log["bodies_per_repetition"] == 0


def test_replay_throughput_smoke():
    r = _run(str(BENCH / "replay_throughput.py"), "--size", "1MiB")
    assert r["bench"] == "replay_throughput" and r["mib"] >= 1
    _positive(r, "records", "exporter_cpu_s", "mib_per_cpu_s", "requests_per_cpu_s",
              "bare_read_cpu_s", "bare_decode_cpu_s", "ratio_vs_bare_decode", "nproc")
    assert r["records"] == r["generator"]["requests"]  # one record per generated request
    assert set(r["meets"]) == {"mib_per_cpu_s", "requests_per_cpu_s", "ratio_vs_bare_decode"}


def test_replay_throughput_repeat_reports_the_least_cpu_of_identical_runs():
    r = _run(str(BENCH / "replay_throughput.py"), "--size", "300KiB", "--repeat", "2")
    assert r["runs"] == 2 and len(r["runs_cpu_s"]) == 2 and len(r["runs_requests_per_cpu_s"]) == 2
    assert r["exporter_cpu_s"] == min(r["runs_cpu_s"])  # the headline is the least-disturbed run
    assert r["records"] == r["generator"]["requests"]  # every run recorded the same (checked inside)


def test_rss_smoke():
    r = _run(str(BENCH / "rss.py"), "--requests", "300", "--users", "20")
    assert r["bench"] == "rss" and r["requests"] >= 300
    _positive(r, "max_rss_mib", "reference_max_rss_mib", "cpu_s")
    assert isinstance(r["meets"], bool)


def test_lag_smoke():
    r = _run(str(BENCH / "lag.py"), "--requests", "3", "--modes", "grace0", "--interval", "0.05")
    m = r["modes"]["grace0"]
    assert m["metrics"]["n"] == 3 and m["metrics"]["missing"] == 0
    assert m["metrics"]["p99"] is not None and m["metrics"]["p99"] >= 0
    if r["loki"]:
        assert m["loki"]["n"] == 3


def test_sidecar_resources_smoke():
    r = _run(str(BENCH / "sidecar_resources.py"), "--rate", "5", "--seconds", "2")
    assert r["bench"] == "sidecar_resources" and r["requests"] == 10
    assert r["seen_in_metrics"] == 10 and r["seen_in_loki"] == 10
    _positive(r, "idle_rss_mib", "peak_rss_mib", "final_rss_mib")
    assert r["cpu_cores_while_writing"] >= 0


def test_pileup_generator_holds_time_and_drops_request_ends(tmp_path):
    sys.path.insert(0, str(BENCH))
    import make_big_log
    out = tmp_path / "pile.log"
    info = make_big_log.make(out, size=200_000, pileup=True, unfinished=True)
    text = out.read_text(encoding="utf-8")
    stamps = set(re.findall(r"(?m)^\(APIServer pid=\d+\) (?:INFO|DEBUG) (\d\d-\d\d \d\d:\d\d:\d\d) \[request_logger", text))
    assert info["repetitions"] >= 2 and len(stamps) <= info["span_seconds"]  # time never moves on
    assert "Generated response" not in text and '"POST /v1/' not in text
    received = re.findall(r"(?m)^\(APIServer pid=\d+\) INFO [\d-]+ [\d:]+ \[request_logger\.py:\d+\] "
                          r"Received request (\S+): ", text)
    assert len(set(received)) == info["requests"]  # every request still starts


def test_pileup_bench_smoke():
    r = _run(str(BENCH / "pileup.py"), "--size", "1MiB", timeout=120)
    assert r["bench"] == "pileup"
    # the same work both ways: same records, same statuses
    assert r["pileup"]["records"] == r["advancing"]["records"] > 0
    assert r["pileup"]["statuses"] == r["advancing"]["statuses"]
    _positive(r, "ratio_pileup_vs_advancing")


def test_replay_throughput_of_the_json_formatter_records_every_request():
    # vLLM's JSON formatter: asctime with milliseconds, the time moved per repetition
    r = _run(str(BENCH / "replay_throughput.py"), "--size", "400KiB", "--capture", "jsondebug")
    assert r["records"] == r["generator"]["requests"] > 22
    _positive(r, "lines_per_cpu_s", "mib_per_cpu_s")


def test_replay_throughput_of_a_delta_heavy_log_records_every_stream():
    # the real one-line-per-token capture (tests/test_records_deltas.py), repeated
    r = _run(str(BENCH / "replay_throughput.py"), "--size", "2MiB", "--capture", "deltas")
    assert r["records"] == r["generator"]["requests"] >= 32
    assert r["statuses"] == {"completed": r["records"]}
    assert r["lines"] > 100 * r["records"]  # delta-heavy: hundreds of lines per request
    _positive(r, "lines_per_cpu_s", "mib_per_cpu_s")


def test_lag_bench_streaming_deltas_smoke():
    r = _run(str(BENCH / "lag.py"), "--requests", "4", "--modes", "grace0", "--stream-rate", "200",
             "--streams", "2", timeout=120)
    m = r["modes"]["grace0"]
    assert m["metrics"]["n"] == 4 and m["loki"]["n"] == 4  # every streamed request seen in both sinks
    _positive(m, "achieved_tokens_s")


def test_tlog_cost_smoke():
    r = _run(str(BENCH / "tlog_cost.py"), "--size", "512KiB", timeout=120)
    assert r["bench"] == "tlog_cost" and r["checkpoints_signed"] >= 2  # at start and at the end
    _positive(r, "records", "replay_cpu_s", "leaf_us_per_record", "sign_us_per_record", "sign_ratio",
              "verify_us_per_record", "verify_ratio", "total_ratio")
    assert isinstance(r["met"], bool)


def test_compare_modes_run_both_parsers_and_find_the_archives_identical():
    from exporter.parse import fast

    r = _run(str(BENCH / "replay_throughput.py"), "--size", "600KiB", "--compare", timeout=120)
    assert r["parser"] == fast.IMPLEMENTATION
    out = subprocess.run([sys.executable, str(BENCH / "parse_bench.py"), "--compare", "--requests", "30",
                          "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if fast.IMPLEMENTATION == "c":
        assert r["archives_identical"] is True and r["archive_files"], r
        _positive(r, "speedup_cpu")
        _positive(r["pure_python"], "exporter_cpu_s", "mib_per_cpu_s", "requests_per_cpu_s")
        assert r["pure_python"]["records"] == r["records"]
        assert out.returncode == 0 and "ratio python/c" in out.stdout, out.stdout + out.stderr
    else:  # nothing to compare with: said so, not a silent pass
        assert r["pure_python"] is None and r["compare_error"]
        assert out.returncode == 1 and "not active" in out.stdout
