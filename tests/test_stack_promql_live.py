"""Every PromQL expression (rules, alerts, dashboards) evaluated by a real Prometheus.

Prometheus (Debian `prometheus`) scrapes, every second:
- the exporter, started as ``python -m exporter run --log <capture>/vllm.log
  --from-start ...`` replaying a real vLLM 0.32.0 capture;
- a static HTTP server serving that capture's real vLLM ``/metrics`` dump as
  the `vllm` target.
The configuration is the committed one rendered by tools/render_stack.py
(localhost targets, 1s intervals, every ``for:`` set to 0s). Every expression
must evaluate without error; the ones listed in EXPECTED_EMPTY must return
nothing (and do, so the list stays true), all others must return data.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CAPTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "debug"
# A second real capture with the stat-logger plugin's engine.jsonl (the basic
# and concurrent scenarios): the engine and GPU-cost series.
ENGINE_CAPTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "engine"
sys.path.insert(0, str(REPO / "tools"))
import render_stack  # noqa: E402

spec = importlib.util.spec_from_file_location("grafana_generate", REPO / "grafana" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)

# Expressions that legitimately return nothing against this replay, and why.
EXPECTED_EMPTY = {
    # healthy targets: nothing is down
    "alert VllmDown", "alert VllmAuditExporterDown",
    # no Alertmanager is scraped here (and none failed to notify)
    "alert VllmAuditNotificationsFailing",
    # `offset 5m`: the replay is seconds old
    "record model:vllm_request_success:increase15m_offset5m", "alert VllmAuditGap",
    "overview.json: Unaudited (15m) A",
    # run without --loki-url: no Loki metrics
    "alert VllmAuditLokiBacklog", "overview.json: Loki backlog and failures A",
    "overview.json: Loki backlog and failures B",
    # a healthy exporter: ingestion runs, threads are up, checkpoints are
    # written, the middleware drops nothing, the log is read in its own zone
    "alert VllmAuditIngestionPaused", "alert VllmAuditThreadDown", "alert VllmAuditCheckpointFailing",
    "alert VllmAuditMiddlewareDropping", "alert VllmAuditLogTimeOffset",
    # run without --witness and --tsa-url: no witness or TSA metrics
    "alert VllmAuditWitnessFailing", "alert VllmAuditTimestampFailing",
    # run without --signing-key-file: no signing metrics
    "alert VllmAuditSigningStalled",
    # the capture has no oversized prompt, no error, no queue, short latencies
    "alert VllmOversizedInput", "users.json: Empty responses and oversized inputs per user B",
    "overview.json: Empty and oversized responses/s B",
    "alert VllmEmptyResponseStreak", "alert VllmHighErrorRate", "alert VllmHighLatencyP95",
    "alert VllmRequestsQueued", "alert VllmKvCacheNearlyFull",
    # a log-only capture has no request latency (it needs the middleware)
    "users.json: Mean latency per user A",
    # a log-only capture without Open WebUI tokens: nothing refused
    "alert VllmAuditIdentityInvalid", "record reason:vllm_audit_identity_invalid:rate5m",
    "users.json: Refused Open WebUI tokens A",
    # DCGM is an optional compose profile
    "overview.json: GPU utilisation A", "overview.json: GPU memory used A",
    "overview.json: GPU power and temperature A", "overview.json: GPU power and temperature B",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer {url} within {timeout}s")
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.end_headers()
        if self.path == "/metrics":
            self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH; install it: apt-get install -y prometheus")
    for path in (CAPTURE / "vllm.log", CAPTURE / "metrics.txt", ENGINE_CAPTURE / "vllm.log",
                 ENGINE_CAPTURE / "engine.jsonl"):
        if not path.exists():
            pytest.fail(f"real vLLM capture missing: {path}")
    tmp = tmp_path_factory.mktemp("live")

    MetricsHandler.body = (CAPTURE / "metrics.txt").read_bytes()
    vllm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler)
    threading.Thread(target=vllm.serve_forever, daemon=True).start()
    vllm_addr = f"127.0.0.1:{vllm.server_address[1]}"

    exporter_addr = f"127.0.0.1:{free_port()}"
    exporter = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "exporter", "run",
         "--log", str(CAPTURE / "vllm.log"), "--log", str(ENGINE_CAPTURE / "vllm.log"),
         "--log", str(ENGINE_CAPTURE / "engine.jsonl"), "--gpu-hour-price", "2",
         "--from-start", "--archive-dir", str(tmp / "archive"),
         "--web.listen-address", exporter_addr,
         "--vllm-url", f"http://{vllm_addr}", "--scrape-interval", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prom = None
    try:
        wait_for(f"http://{exporter_addr}/metrics", exporter, "exporter")
        paths = render_stack.render(
            tmp / "cfg", targets={"vllm:8000": vllm_addr, "exporter:9400": exporter_addr},
            scrape_interval="1s", evaluation_interval="1s", for_overrides=["0s"])
        prom_addr = f"127.0.0.1:{free_port()}"
        prom = subprocess.Popen(
            [binary, f"--config.file={paths['prometheus']}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={prom_addr}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://{prom_addr}"
        wait_for(f"{base}/-/ready", prom, "prometheus")
        # a few scrapes of both targets, and rule evaluations after them
        deadline = time.monotonic() + 30
        while True:
            got = query(base, 'min(count_over_time(up[1m])) >= 4 and min(up) == 1')
            rules = query(base, "count_over_time(model:vllm_audit_requests:rate5m[1m]) >= 2")
            if got["data"]["result"] and rules["data"]["result"]:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"targets not scraped/rules not evaluated in time: {got} {rules}")
            time.sleep(0.5)
        yield {"base": base, "vllm": vllm_addr, "exporter": exporter_addr}
    finally:
        if prom is not None:
            stop(prom)
        stop(exporter)
        vllm.shutdown()


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def expressions() -> dict[str, str]:
    found = {}
    for path in sorted((REPO / "prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                key = f"alert {rule['alert']}" if "alert" in rule else f"record {rule['record']}"
                if key in found:  # the three quantile rules share a name
                    key += f" {rule['labels']['quantile']}"
                found[key] = rule["expr"]
    for path in sorted((REPO / "grafana/dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    found[f"{path.name}: {panel['title']} {target['refId']}"] = generate.substitute(target["expr"])
    return found


EXPRESSIONS = expressions()


def test_expected_empty_names_exist():
    assert EXPECTED_EMPTY <= set(EXPRESSIONS), EXPECTED_EMPTY - set(EXPRESSIONS)


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_expression_evaluates_against_real_data(prometheus, name):
    result = query(prometheus["base"], EXPRESSIONS[name])
    assert result["status"] == "success", f"{name}: {result.get('error')}\n{EXPRESSIONS[name]}"
    samples = result["data"]["result"]
    if name in EXPECTED_EMPTY:
        assert samples == [], f"{name} was expected empty but returned {samples}"
    else:
        assert samples, f"{name} returned no data:\n{EXPRESSIONS[name]}"


def test_empty_response_alert_fires_in_real_prometheus_with_model_user_and_instance(prometheus):
    """The capture holds an empty response: Prometheus' own rule evaluation fires the alert."""
    exporter = query(prometheus["base"], "vllm_audit_empty_responses_total > 0")["data"]["result"]
    assert exporter, "the replayed capture should contain an empty response"
    deadline = time.monotonic() + 15
    while True:
        firing = query(prometheus["base"],
                       'ALERTS{alertname="VllmEmptyResponses", alertstate="firing"}')["data"]["result"]
        if firing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    got = {(a["metric"]["model"], a["metric"].get("user"), a["metric"]["vllm_instance"],
            a["metric"]["severity"]) for a in firing}
    want = {(s["metric"]["model"], s["metric"].get("user"), prometheus["vllm"], "warning")
            for s in exporter}
    assert got == want
