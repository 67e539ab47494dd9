"""Every LogQL expression (dashboards, Loki ruler rules) parses with Grafana's grammar.

Uses tools/logql/check.cjs with @grafana/lezer-logql from tools/logql/node_modules
(install: cd tools/logql && npm ci). Missing node or modules fail the test.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LOGQL_DIR = REPO / "tools" / "logql"
spec = importlib.util.spec_from_file_location("grafana_generate", REPO / "grafana" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def parse(expressions: list[str]) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH; install Node.js (>= 20) and run `npm ci` in tools/logql")
    if not (LOGQL_DIR / "node_modules" / "@grafana" / "lezer-logql").is_dir():
        pytest.fail("@grafana/lezer-logql is not installed; run `npm ci` in tools/logql")
    result = subprocess.run([node, str(LOGQL_DIR / "check.cjs")], input=json.dumps(expressions),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def dashboard_logql() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "grafana/dashboards").glob("*.json")):
        for title, kind, expr in generate.iter_queries(json.loads(path.read_text())):
            if kind.startswith("loki"):
                found.append((f"{path.name}: {title}", generate.substitute(expr)))
    return found


def ruler_logql() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "loki/rules").rglob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return found


def test_every_logql_expression_parses():
    exprs = dashboard_logql() + ruler_logql()
    assert len(dashboard_logql()) >= 4 and len(ruler_logql()) >= 1, exprs
    results = parse([e for _, e in exprs])
    bad = [f"{where}: {r['error']}: {r['expr']}" for (where, _), r in zip(exprs, results) if not r["ok"]]
    assert not bad, "\n".join(bad)


def test_the_checker_rejects_broken_logql():
    results = parse(['sum(rate({service_name="vllm-audit"}[5m])',
                     '{service_name="vllm-audit"} | json |',
                     'rate({service_name="vllm-audit"} | json [5m]) > 0'])
    assert [r["ok"] for r in results] == [False, False, True], results


def test_logql_uses_the_exporter_stream_labels_and_json_lines():
    for where, expr in dashboard_logql() + ruler_logql():
        assert 'service_name="vllm-audit"' in expr, where
    assert any("| json" in e for _, e in dashboard_logql())


def test_ruler_rules_follow_the_alert_conventions():
    for where, _ in ruler_logql():
        assert where.split(": ")[1].startswith("VllmAudit"), where
    for path in (REPO / "loki/rules").rglob("*.yaml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}
                assert rule["annotations"]["summary"].endswith(".")
                assert "{{" in rule["annotations"]["description"]
                assert "README.md#" in rule["annotations"]["runbook_url"]


def test_npm_lockfile_pins_the_grammar():
    lock = json.loads((LOGQL_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@grafana/lezer-logql"]["version"] == "0.4.2"
