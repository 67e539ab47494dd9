"""Prometheus rules, alerts and Alertmanager config, checked with the real tools.

promtool (Debian `prometheus`) and amtool/alertmanager (Debian
`prometheus-alertmanager`) must be installed; a missing binary fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*.test.yml"))
sys.path.insert(0, str(REPO / "tools"))
import render_stack  # noqa: E402

# The alert names are a public contract (docs/design.md): add, never rename.
CONTRACT_ALERTS = {
    "VllmEmptyResponses", "VllmEmptyResponseStreak", "VllmOversizedInput", "VllmDown",
    "VllmAuditExporterDown", "VllmAuditGap", "VllmAuditLokiBacklog", "VllmHighLatencyP95",
    "VllmHighErrorRate", "VllmKvCacheNearlyFull", "VllmRequestsQueued",
}
INSTALL_HINT = "install it: apt-get install -y prometheus prometheus-alertmanager"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; {INSTALL_HINT}")
    return path


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def all_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


ALERTS = [r for r in all_rules() if "alert" in r]
RECORDS = [r for r in all_rules() if "record" in r]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- promtool

def test_promtool_check_config():
    result = run(tool("promtool"), "check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests_pass():
    result = run(tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_contract_alerts_exist_and_are_unique():
    names = [r["alert"] for r in ALERTS]
    assert len(names) == len(set(names)), names
    assert CONTRACT_ALERTS <= set(names), CONTRACT_ALERTS - set(names)


def test_alerts_follow_the_mixin_conventions():
    anchors = runbook_anchors()
    for rule in ALERTS:
        name = rule["alert"]
        assert re.fullmatch(r"Vllm[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert ann["summary"].endswith(".") and "{{" not in ann["summary"], name
        assert "{{" in ann["description"], f"{name}: description is not templated"
        url = ann["runbook_url"]
        assert url.startswith("https://") and "#" in url, name
        anchor = url.split("#", 1)[1]
        assert url.split("#")[0].endswith("README.md"), name
        assert anchor in anchors, f"{name}: no section #{anchor} in README.md"


def runbook_anchors() -> set[str]:
    text = (REPO / "README.md").read_text()
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_recording_rules_are_named_level_metric_operations():
    for rule in RECORDS:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_every_rule_expression_parses_with_promql_parser():
    for rule in all_rules():
        promql_parser.parse(rule["expr"])  # raises ValueError on a syntax error


def _tested_names() -> tuple[set[str], set[str]]:
    alerts, exprs = set(), set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired = [t for t in case.get("alert_rule_test", []) if t.get("exp_alerts")]
            silent = [t for t in case.get("alert_rule_test", []) if not t.get("exp_alerts")]
            # an alert counts as tested when the same case checks both sides
            for t in fired:
                if any(s["alertname"] == t["alertname"] and s["eval_time"] != t["eval_time"]
                       for s in silent):
                    alerts.add(t["alertname"])
            exprs.update(t["expr"] for t in case.get("promql_expr_test", []) if t.get("exp_samples"))
    return alerts, exprs


def test_every_alert_has_a_firing_and_a_not_firing_unit_test():
    alerts, _ = _tested_names()
    missing = {r["alert"] for r in ALERTS} - alerts
    assert not missing, f"alerts without a promtool test (fires + does not fire): {sorted(missing)}"


def test_every_recording_rule_has_a_unit_test():
    _, exprs = _tested_names()
    missing = {r["record"] for r in RECORDS} - exprs
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


# --------------------------------------------------------------------------- amtool

def test_amtool_check_config():
    result = run(tool("amtool"), "check-config", "prometheus/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=VllmDown"], "critical"),
    (["severity=warning", "alertname=VllmHighErrorRate", "model=m"], "default"),
    (["severity=info", "alertname=VllmKvCacheNearlyFull"], "blackhole"),
    (["alertname=SomethingElse"], "default"),
])
def test_alertmanager_routes_by_severity(labels, receiver):
    result = run(tool("amtool"), "config", "routes", "test",
                 "--config.file=prometheus/alertmanager.yml", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_groups_by_alertname_and_model():
    config = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    assert config["route"]["group_by"] == ["alertname", "model"]
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="VllmDown"']
    assert inhibit["equal"] == ["vllm_instance"]


def test_notification_template_shows_model_user_and_grafana_link(tmp_path):
    data = {
        "receiver": "default", "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "VllmEmptyResponses", "severity": "warning", "model": "tiny",
                       "user": "alice", "vllm_instance": "vllm:8000"},
            "annotations": {"summary": "vLLM returned empty responses.",
                            "description": "2 empty responses from model tiny to user alice.",
                            "runbook_url": "https://example.org/runbook#vllmemptyresponses",
                            "dashboard_url": "/d/vllm-audit-log/vllm-audit-log?var-model=tiny"},
            "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": "1"}],
        "groupLabels": {"alertname": "VllmEmptyResponses", "model": "tiny"},
        "commonLabels": {"alertname": "VllmEmptyResponses", "model": "tiny", "severity": "warning"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    result = run(tool("amtool"), "template", "render",
                 "--template.glob=prometheus/templates/*.tmpl",
                 f"--template.data={tmp_path / 'data.json'}",
                 '--template.text={{ template "vllm_audit.title" . }}\n{{ template "vllm_audit.text" . }}')
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("[FIRING:1] VllmEmptyResponses model=tiny\n"), out
    assert "model: tiny\n" in out and "user: alice\n" in out, out
    assert "Grafana: http://localhost:3000/d/vllm-audit-log/vllm-audit-log?var-model=tiny\n" in out, out
    assert "Runbook: https://example.org/runbook#vllmemptyresponses" in out, out


# --------------------------------------------------------------------------- render_stack

def test_render_stack_derives_a_localhost_variant_that_the_tools_accept(tmp_path):
    paths = render_stack.render(
        tmp_path, targets={"vllm:8000": "127.0.0.1:18000", "exporter:9400": "127.0.0.1:19400",
                           "alertmanager:9093": "127.0.0.1:19093"},
        scrape_interval="1s", evaluation_interval="1s", for_overrides=["0s", "VllmDown=5s"],
        webhook_url="http://127.0.0.1:5999/hook")
    prom = yaml.safe_load(paths["prometheus"].read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"vllm", "vllm-audit-exporter", "alertmanager"}
    assert jobs["vllm-audit-exporter"]["static_configs"][0] == {
        "targets": ["127.0.0.1:19400"], "labels": {"vllm_instance": "127.0.0.1:18000"}}
    assert prom["global"]["scrape_interval"] == "1s"
    fors = {r["alert"]: r.get("for") for f in (tmp_path / "rules").glob("*.yml")
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert fors.pop("VllmDown") == "5s" and set(fors.values()) == {"0s"}
    am = yaml.safe_load(paths["alertmanager"].read_text())
    assert {h["url"] for r in am["receivers"] for h in r.get("webhook_configs", [])} == {
        "http://127.0.0.1:5999/hook"}
    result = run(tool("promtool"), "check", "config", str(paths["prometheus"]))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("amtool"), "check-config", str(paths["alertmanager"]))
    assert result.returncode == 0, result.stdout + result.stderr
    # the committed rules are untouched: production durations stay
    committed = {r["alert"]: r.get("for") for r in ALERTS}
    assert committed["VllmDown"] == "2m" and committed["VllmAuditGap"] == "15m"


def test_render_stack_rejects_unknown_alert_names(tmp_path):
    with pytest.raises(ValueError, match="NoSuchAlert"):
        render_stack.render(tmp_path, targets={}, for_overrides=["NoSuchAlert=1s"])


# --------------------------------------------------------------------------- real Alertmanager

def test_real_alertmanager_inhibits_request_alerts_while_vllm_is_down(tmp_path):
    """VllmDown silences the per-request alerts of the same vLLM, not of another one."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail(f"alertmanager binary not found; {INSTALL_HINT}")
    paths = render_stack.render(tmp_path / "cfg", targets={},
                                webhook_url="http://127.0.0.1:9/unused")
    port, cluster = free_port(), free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={paths['alertmanager']}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", f"--cluster.listen-address=127.0.0.1:{cluster}",
         "--cluster.advertise-address=127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/api/v2"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("alertmanager did not start: " + proc.stderr.read().decode()[-2000:]
                                if proc.poll() is not None else "alertmanager did not start in 15s")
                time.sleep(0.1)

        def alert(name, severity, **labels):
            return {"labels": {"alertname": name, "severity": severity, **labels},
                    "annotations": {"summary": "x."}}

        alerts = [
            alert("VllmDown", "critical", vllm_instance="vllm-a:8000"),
            alert("VllmHighErrorRate", "warning", vllm_instance="vllm-a:8000", model="m"),
            alert("VllmHighErrorRate", "warning", vllm_instance="vllm-b:8000", model="m"),
            alert("VllmAuditExporterDown", "critical", vllm_instance="vllm-a:8000"),
        ]
        req = urllib.request.Request(f"{base}/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5)
        deadline = time.monotonic() + 10
        while True:
            got = json.load(urllib.request.urlopen(f"{base}/alerts", timeout=5))
            states = {(a["labels"]["alertname"], a["labels"]["vllm_instance"]): a["status"]
                      for a in got}
            # Alertmanager's inhibitor learns of VllmDown asynchronously: the
            # target may show "active" for a moment before it is suppressed.
            # Wait for every alert to be processed and for the suppression (or
            # the deadline, after which the asserts below say what is wrong).
            processed = len(states) == 4 and all(v["state"] != "unprocessed" for v in states.values())
            if processed and states[("VllmHighErrorRate", "vllm-a:8000")]["state"] == "suppressed":
                break
            if time.monotonic() > deadline:
                if not processed:
                    pytest.fail(f"alerts not processed: {states}")
                break
            time.sleep(0.1)
        assert states[("VllmHighErrorRate", "vllm-a:8000")]["inhibitedBy"], states
        assert states[("VllmHighErrorRate", "vllm-a:8000")]["state"] == "suppressed"
        assert states[("VllmHighErrorRate", "vllm-b:8000")]["state"] == "active"
        assert states[("VllmDown", "vllm-a:8000")]["state"] == "active"
        assert states[("VllmAuditExporterDown", "vllm-a:8000")]["state"] == "active"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
