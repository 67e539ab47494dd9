"""The stat-logger plugin against the real vLLM package (no server started).

* How vLLM finds it: ``vllm.v1.metrics.loggers.load_stat_logger_plugin_factories``
  (what ``AsyncLLM`` calls) in vLLM's own Python, with the package
  (a) mounted, uninstalled: ``PYTHONPATH`` = repo root + ``vllm-plugin/``
  (the compose set-up), (b) installed as a distribution (``pip install
  --target``, the same metadata a ``pip install`` into vLLM's venv writes);
  and an admin's ``VLLM_PLUGINS`` allowlist that names it or not.
* Degrading: with vLLM's real ``IterationStats``/``SchedulerStats``/
  ``FinishedRequestStats``, a request without the external id, stats
  without ``finished_requests`` and a failing record() write no engine line,
  are counted by reason in the status line, and never raise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine_live import VERSIONS  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from vllm_proc import venv_python  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.live

LOAD = ("from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories as f; "
        "import json; print(json.dumps([c.__module__ + ':' + c.__qualname__ + ':' + "
        "__import__(c.__module__).__file__ for c in f()]))")


def vllm_python(version: str) -> str:
    python = Path(venv_python(version))
    if not python.exists():
        pytest.fail(f"vLLM {version} venv missing: {python} (bash tools/setup.sh --live)")
    return str(python)


def run(python: str, code: str, env: dict, cwd: Path) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLLM_PLUGINS")}
    out = subprocess.run([python, "-c", code], env={**base, "VLLM_TARGET_DEVICE": "cpu", **env},
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"vllm-{v}" for v in VERSIONS])
def python(request):
    return vllm_python(request.param)


DIST_INFO = "vllm_audit_statlogger-0.1.0.dist-info"


def mounted(tmp_path: Path, with_dist_info: bool = True) -> dict:
    """compose.yaml's layout: ./exporter and the dist-info mounted in
    /opt/vllm-audit, which is PYTHONPATH (a copy, so an editable install's
    egg-info in the repo root plays no part)."""
    opt = tmp_path / "opt" / "vllm-audit"
    shutil.copytree(REPO / "exporter", opt / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    if with_dist_info:
        shutil.copytree(REPO / "vllm-plugin" / DIST_INFO, opt / DIST_INFO)
    return {"PYTHONPATH": str(opt)}


def test_compose_mounts_the_dist_info_beside_the_package():
    compose = (REPO / "compose.yaml").read_text()
    assert f"./vllm-plugin/{DIST_INFO}:/opt/vllm-audit/{DIST_INFO}:ro" in compose
    assert "./exporter:/opt/vllm-audit/exporter:ro" in compose and "PYTHONPATH: /opt/vllm-audit" in compose


@pytest.mark.parametrize("allow,found", [(None, True), ("vllm_audit", True),
                                         ("some_other_plugin", False), ("", False)])
def test_mounted_package_is_found_by_its_dist_info_and_obeys_the_allowlist(python, tmp_path, allow, found):
    env = mounted(tmp_path)
    if allow is not None:
        env["VLLM_PLUGINS"] = allow
    loaded = json.loads(run(python, LOAD, env, tmp_path))
    if found:
        assert [x.rsplit(":", 1)[0] for x in loaded] == ["exporter.statlogger.plugin:AuditStatLogger"]
        assert loaded[0].endswith(str(tmp_path / "opt" / "vllm-audit" / "exporter" / "__init__.py"))
    else:
        assert loaded == []


def test_mounted_package_without_the_dist_info_is_not_found(python, tmp_path):
    assert json.loads(run(python, LOAD, mounted(tmp_path, with_dist_info=False), tmp_path)) == []


def test_installed_distribution_is_found(tmp_path):
    """``pip install`` of this package writes the entry point into its
    .dist-info; vLLM finds it there with nothing else on the path."""
    python = vllm_python(VERSIONS[0])
    site = tmp_path / "site"
    # vLLM's venv has pip and setuptools; --target leaves that venv untouched.
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--target", str(site), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (next(site.glob("vllm_audit_exporter-*.dist-info")) / "entry_points.txt").read_text().count(
        "vllm_audit = exporter.statlogger.plugin:AuditStatLogger") == 1
    loaded = json.loads(run(python, LOAD, {"PYTHONPATH": str(site), "VLLM_PLUGINS": "vllm_audit"}, tmp_path))
    assert len(loaded) == 1 and loaded[0].startswith("exporter.statlogger.plugin:AuditStatLogger:" + str(site))


DEGRADE = r'''
import json, sys, types
from vllm.v1.engine import FinishReason
from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats, SchedulerStats
from exporter.statlogger.plugin import AuditStatLogger

config = types.SimpleNamespace(parallel_config=types.SimpleNamespace(
    tensor_parallel_size=2, pipeline_parallel_size=1))
env = {"VLLM_AUDIT_ENGINE_FILE": sys.argv[1], "VLLM_AUDIT_ENGINE_FSYNC_MS": "0"}
log = AuditStatLogger(config, 0, env=env)

def it(*finished):
    s = IterationStats()
    s.finished_requests.extend(finished)
    return s

def done(rid):
    return FinishedRequestStats(finish_reason=FinishReason.STOP, request_id=rid, e2e_latency=0.2,
                                num_prompt_tokens=5, num_generation_tokens=3, queued_time=0.01,
                                prefill_time=0.05, decode_time=0.1, inference_time=0.15)

sched = SchedulerStats(num_running_reqs=0)
log.record(sched, it(done("chatcmpl-ok")))
never = done("chatcmpl-never-scheduled")
never.queued_time, never.inference_time = -7.5, -7.5  # aborted while queued: scheduled_ts 0
log.record(sched, it(never))
log.record(sched, it(done(None)))                   # no external id
log.record(sched, types.SimpleNamespace())          # stats of another shape
log.record(sched, types.SimpleNamespace(finished_requests=5))  # record() fails inside
log.record(None, None)
import exporter.statlogger.plugin as p
p.REPORT_SECONDS = 0.0
log.record(sched, None)                             # report now
log.writer.close()
def boom():
    raise RuntimeError("set-up fails")
broken = AuditStatLogger(config, 0, env=env, clock=boom)  # must not stop vLLM starting
broken.record(sched, it(done("chatcmpl-unseen")))          # ... nor serving
print(json.dumps({"errors": log.errors, "broken_disabled": broken.writer is None}))
'''


def test_plugin_degrades_with_counted_reasons_and_never_raises(python, tmp_path):
    out = tmp_path / "engine.jsonl"
    result = json.loads(_degrade(python, out, tmp_path))
    assert result == {"errors": 1, "broken_disabled": True}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    engine = [x for x in lines if x["type"] == "vllm_audit_engine"]
    assert [x["request_id"] for x in engine] == ["chatcmpl-ok", "chatcmpl-never-scheduled"]
    assert engine[1]["queue_seconds"] is None and engine[1]["inference_seconds"] is None
    assert engine[1]["share_seconds"] is None and engine[1]["prefill_seconds"] == 0.05
    assert engine[0]["devices"] == 2 and engine[0]["finish_reason"] == "stop"
    assert engine[0]["inference_seconds"] == 0.15
    problems: dict = {}
    for x in lines:
        if x["type"] == "vllm_audit_engine_status":
            for k, n in x["problems"].items():
                problems[k] = problems.get(k, 0) + n
    assert problems == {"no_request_id": 1, "stats_changed": 1, "record_error": 1}
    # ... and the exporter's parser turns them into its counted reasons
    from exporter.parse import parse_line
    events = [parse_line(x) for x in out.read_text().splitlines()]
    assert [e.kind for e in events].count("engine") == 2
    assert not any("problems" in e.data for e in events if e.kind == "engine")  # nothing invalid
    assert sum(e.data["problems"].get("no_request_id", 0) for e in events if e.kind == "engine_status") == 1


def _degrade(python: str, out: Path, cwd: Path) -> str:
    script = cwd / "degrade.py"
    script.write_text(DEGRADE)
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([python, str(script), str(out)], env={**base, "PYTHONPATH": str(REPO),
                                                                "VLLM_TARGET_DEVICE": "cpu"},
                         cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_overhead_bench_smoke(tmp_path):
    """bench/statlogger_overhead.py runs (no timing asserted)."""
    out = run(vllm_python(VERSIONS[0]), "import runpy, sys; sys.argv = ['b', '--calls', '50']; "
              f"runpy.run_path({str(REPO / 'bench' / 'statlogger_overhead.py')!r}, run_name='__main__')",
              {"PYTHONPATH": str(REPO)}, tmp_path)
    assert set(json.loads(out)) == {"loop_us_per_call_0_finished", "loop_us_per_call_1_finished",
                                    "loop_us_per_call_8_finished", "writer_us_per_line_1_finished",
                                    "writer_us_per_line_8_finished"}
