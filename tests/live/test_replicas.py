"""Two replicas, as deploy/kubernetes/ runs them, on this machine: processes, not pods.

One scenario for the module (the ``replicas`` fixture), each test one promise:

- Two real vLLM CPU servers (tools/vllm_proc.py, the tiny offline model,
  vLLM's minimal memory settings), each with the audit middleware, the base
  StatefulSet's vLLM flags and the logging config the manifests ship (the
  ConfigMap = compose's ``vllm-logging``; its ``/logs`` is the replica's own
  directory here, as the pod's volume is there).
- Per replica the exporter with the sidecar's own arguments and environment
  read from deploy/kubernetes/base/statefulset.yaml: paths mapped to the
  replica's directories, the downward-API variables set to the pod names
  ``llm/vllm-audit-0`` and ``-1``, the Loki URL to the strict Loki test server
  (tests/loki_server.py) which refuses pushes without the manifests' tenant.
- One Prometheus scraping all four targets the way the PodMonitor
  (deploy/kubernetes/monitoring/podmonitor.yaml) makes the Operator scrape
  them: Kubernetes' ``__meta_kubernetes_*`` labels on static targets and the
  PodMonitor's relabelings, translated; the repo's rules and Alertmanager
  config as committed (rendered by tools/render_stack.py: 1 s intervals,
  ``for:`` shortened as in tests/live/test_end_to_end.py).

Then: per-replica records (the ``instance`` field, Loki's ``vllm_instance``)
with engine timings (the stat-logger plugin as the init container installs it),
per-replica chains that each verify, per-replica transparency logs signed with
the key the ``signing-key`` init container made and verified with its
``signing.pub`` alone, metrics aggregated across the replicas
and filtered by one, VllmEmptyResponses firing on both replicas, VllmDown on
the one whose vLLM is stopped, and its exporter's readiness going to 503
while the other stays ready.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from test_kubernetes import plugin_entry_points, run_install
from test_kubernetes_signing import container_env, expand

from .stack import (
    DEFAULT_MODEL_DIR, REPO, AlertStack, ExporterProcess, LokiServer, StackError, VllmServer,
    WebhookReceiver, archive_records, free_port, post_json, post_stream, require_platform,
    wait_until,
)

pytestmark = pytest.mark.live

K8S = REPO / "deploy" / "kubernetes"
NAMESPACE = "llm"
PODS = ("vllm-audit-0", "vllm-audit-1")
MODEL = "tiny"  # tools/vllm_proc.py --served-model-name
EOS_ID = 2  # tiny-llama's <|im_end|>
SALT = "replicas-api-key-salt"
FOR = ["0s", "VllmDown=15s", "VllmAuditExporterDown=15s"]  # see test_end_to_end.FOR
ALERT_WAIT = 120.0  # evaluation + Alertmanager's 30 s group_wait, on 2 busy cores


def _pod_spec() -> dict:
    sts = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text())
    return sts["spec"]["template"]["spec"]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from variables defined earlier in the list."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def make_signing_key(pod: str, signing: Path) -> subprocess.CompletedProcess:
    """The base StatefulSet's signing-key init container, for one replica here."""
    [spec] = [c for c in _pod_spec()["initContainers"] if c["name"] == "signing-key"]
    env = container_env(spec, pod)
    signing.mkdir(parents=True, exist_ok=True)
    args = [expand(a, env).replace("=/signing", f"={signing}") for a in spec["args"]]
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)


def sidecar_command(pod: str, logs: Path, archive: Path, secrets: Path, vllm_url: str,
                    loki_url: str, signing: Path) -> tuple[list[str], dict[str, str]]:
    """The base StatefulSet's exporter args and env, for one replica on this machine."""
    [exporter] = [c for c in _pod_spec()["initContainers"] if c["name"] == "exporter"]
    args = []
    for arg in exporter["args"][1:]:  # [0] is the `run` subcommand
        if arg.startswith("--web.listen-address="):
            continue  # ExporterProcess binds a free port
        arg = arg.replace("=/logs/", f"={logs}/").replace("=/archive", f"={archive}")
        arg = arg.replace("=/run/secrets/vllm-audit/", f"={secrets}/")
        arg = arg.replace("=/signing/", f"={signing}/")
        arg = arg.replace("=http://127.0.0.1:8000", f"={vllm_url}")
        args.append(arg)
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for var in exporter["env"]:
        if "valueFrom" in var:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = _expand(var["value"], env)
    env["VLLM_AUDIT_MODEL"] = MODEL  # the base names its own served model
    env["VLLM_AUDIT_LOKI_URL"] = loki_url
    # faster than the defaults, as the other live tests run
    return args + ["--scrape-interval", "1", "--merge-grace", "1"], env


def vllm_settings(pod_logs: Path) -> tuple[list[str], str, dict[str, str], Path]:
    """The base's vLLM flags, middleware and environment; the manifests' logging config."""
    [vllm] = [c for c in _pod_spec()["containers"] if c["name"] == "vllm"]
    flags = [a for a in vllm["args"] if a in ("--enable-log-requests", "--enable-log-outputs",
                                              "--enable-force-include-usage")]
    [middleware] = [a.split("=", 1)[1] for a in vllm["args"] if a.startswith("--middleware=")]
    env = {e["name"]: e["value"] for e in vllm["env"] if "value" in e}
    logging_json = pod_logs.parent / "logging.json"
    # the ConfigMap's file: compose's config with its ${VAR:-default} sizes at their defaults
    sys.path.insert(0, str(REPO / "tools"))
    import render_kubernetes
    config = render_kubernetes.logging_config()
    assert config == (K8S / "base" / "vllm-logging.json").read_text()
    logging_json.write_text(config.replace('"/logs/', f'"{pod_logs}/'))
    # the install-middleware init container, as the manifest has it: it copies
    # the package vLLM imports the middleware from and the stat-logger
    # plugin's dist-info (the image's vllm-plugin/) beside it, and creates the
    # middleware's file. PYTHONPATH is that directory alone: the plugin vLLM
    # loads is the one found through the copied dist-info.
    [install] = [c for c in _pod_spec()["initContainers"] if c["name"] == "install-middleware"]
    opt = pod_logs.parent / "opt-vllm-audit"
    run_install(install["command"], opt, pod_logs)
    assert (opt / "exporter" / "middleware" / "__init__.py").is_file()
    assert "vllm_audit" in plugin_entry_points(opt)
    assert env["PYTHONPATH"] == "/opt/vllm-audit"
    out = {"VLLM_LOGGING_CONFIG_PATH": str(logging_json), "PYTHONPATH": str(opt),
           "VLLM_AUDIT_MIDDLEWARE_FILE": env["VLLM_AUDIT_MIDDLEWARE_FILE"].replace("/logs/", f"{pod_logs}/"),
           "VLLM_AUDIT_API_KEY_SALT": SALT, "VLLM_AUDIT_MIDDLEWARE_FSYNC_MS": "100",
           "VLLM_AUDIT_ENGINE_FSYNC_MS": "100"}
    # the plugin's file (and vLLM's allowlist, when the manifests set one);
    # absent from the manifests, vLLM here gets none and writes no engine lines
    if "VLLM_AUDIT_ENGINE_FILE" in env:
        out["VLLM_AUDIT_ENGINE_FILE"] = env["VLLM_AUDIT_ENGINE_FILE"].replace("/logs/", f"{pod_logs}/")
    if "VLLM_PLUGINS" in env:
        out["VLLM_PLUGINS"] = env["VLLM_PLUGINS"]
    return flags, middleware, out, logging_json


def _camel_to_snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def podmonitor_scrape_configs(targets: dict[tuple[str, str], str]) -> list[dict]:
    """Prometheus jobs equivalent to the Operator's for the PodMonitor: one job per
    endpoint; each pod a target carrying the Kubernetes SD meta labels; the
    Operator's namespace/pod/container labels, then the PodMonitor's relabelings."""
    pm = yaml.safe_load((K8S / "monitoring" / "podmonitor.yaml").read_text())
    jobs = []
    for i, ep in enumerate(pm["spec"]["podMetricsEndpoints"]):
        container = "vllm" if ep["port"] == "http" else "exporter"
        relabel = [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"target_label": "job", "replacement": f"{NAMESPACE}/{pm['metadata']['name']}"},
        ] + [{_camel_to_snake(k): v for k, v in r.items()} for r in ep["relabelings"]]
        jobs.append({
            "job_name": f"podMonitor/{NAMESPACE}/{pm['metadata']['name']}/{i}",
            "metrics_path": ep["path"],
            "static_configs": [{"targets": [targets[(pod, ep["port"])]],
                                "labels": {"__meta_kubernetes_namespace": NAMESPACE,
                                           "__meta_kubernetes_pod_name": pod,
                                           "__meta_kubernetes_pod_container_name": container}}
                               for pod in PODS],
            "relabel_configs": relabel,
        })
    return jobs


def instance_of(pod: str) -> str:
    return f"{NAMESPACE}/{pod}"


@dataclass
class Replica:
    pod: str
    dir: Path
    srv: VllmServer | None = None
    exporter: ExporterProcess | None = None
    sent: dict[str, str] = field(default_factory=dict)  # response id -> user
    records: list[dict] = field(default_factory=list)
    verify: subprocess.CompletedProcess | None = None
    verify_public: subprocess.CompletedProcess | None = None
    health_after_stop: int | None = None

    @property
    def archive(self) -> Path:
        return self.dir / "archive"


@dataclass
class Run:
    replicas: list[Replica]
    loki_entries: list = field(default_factory=list)
    loki_streams: dict = field(default_factory=dict)
    per_replica_requests: dict = field(default_factory=dict)
    total_requests: float | None = None
    recorded_rate_labels: list = field(default_factory=list)
    empty_alerts: list = field(default_factory=list)
    down_alerts: list = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)

    def mark(self, what: str, t0: float) -> None:
        line = f"{time.monotonic() - t0:6.1f}s {what}"
        self.timeline.append(line)
        print(line, flush=True)


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0, **extra}


def _send(rep: Replica, users: tuple[str, str, str]) -> None:
    base = rep.srv.base_url
    chat_user, stream_user, empty_user = users
    status, body = post_json(base, "/v1/chat/completions",
                             chat("Say nothing at all.", user=empty_user, logit_bias={str(EOS_ID): 100}))
    assert status == 200 and body["choices"][0]["message"]["content"] == "", body
    rep.sent[body["id"]] = empty_user
    status, body = post_json(base, "/v1/chat/completions", chat("Hello from " + rep.pod, user=chat_user))
    assert status == 200, body
    rep.sent[body["id"]] = chat_user
    status, chunks, err = post_stream(base, "/v1/chat/completions",
                                      chat("Please summarise the weather.", user=stream_user, stream=True))
    assert status == 200 and chunks, err
    rep.sent[json.loads(chunks[0])["id"]] = stream_user


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _health_body(url: str) -> str:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def _firing(hook: WebhookReceiver, name: str, since: float = 0.0) -> list[dict]:
    return [a for _, _, a in hook.alerts(since)
            if a["labels"].get("alertname") == name and a.get("status") == "firing"]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    require_platform()
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("replicas")
    run = Run([Replica(pod, tmp / pod) for pod in PODS])
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "hmac-key").write_bytes(b"replicas-test-hmac-key\n")
    [exporter_spec] = [c for c in _pod_spec()["initContainers"] if c["name"] == "exporter"]
    tenant = next(e["value"] for e in exporter_spec["env"] if e["name"] == "VLLM_AUDIT_LOKI_TENANT")
    loki = LokiServer(tenant=tenant).start()
    hook = WebhookReceiver().start()
    stack = None
    try:
        # --- two vLLM replicas, started together
        errors: list[str] = []
        for rep in run.replicas:
            logs = rep.dir / "logs"
            logs.mkdir(parents=True)
            flags, middleware, env, _ = vllm_settings(logs)
            rep.srv = VllmServer(DEFAULT_MODEL_DIR, rep.dir / "vllm.stdout", extra_args=flags, env=env,
                                 middleware=middleware, startup_timeout=480)

        def start(rep):
            try:
                rep.srv.start()
            except Exception as exc:  # VllmStartError, OSError
                errors.append(f"{rep.pod}: {exc}")
        threads = [threading.Thread(target=start, args=(rep,)) for rep in run.replicas]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            pytest.fail("the real vLLM CPU servers did not start: " + "; ".join(errors))
        run.mark("both vLLM replicas healthy", t0)

        # --- one exporter sidecar per replica, after its signing-key init container
        for rep in run.replicas:
            make_signing_key(rep.pod, rep.dir / "signing")
            args, env = sidecar_command(rep.pod, rep.dir / "logs", rep.archive, secrets,
                                        rep.srv.base_url, loki.url, rep.dir / "signing")
            rep.exporter = ExporterProcess(args, f"127.0.0.1:{free_port()}", rep.dir / "exporter.log",
                                           env=env)
        for rep in run.replicas:
            rep.exporter.wait_ready()
            # readiness (/health) once its logs exist and vLLM is scraped
            wait_until(lambda: _health(rep.exporter.url) == 200, 60,
                       lambda: f"{rep.pod} exporter /health 200: {_health_body(rep.exporter.url)}"
                       f"\n{rep.exporter.tail()}")

        # --- one Prometheus for both, as the PodMonitor scrapes them
        targets = {}
        for rep in run.replicas:
            targets[(rep.pod, "http")] = f"127.0.0.1:{rep.srv.port}"
            targets[(rep.pod, "metrics")] = rep.exporter.listen
        stack = AlertStack(tmp / "stack", {}, webhook_url=hook.url, for_overrides=FOR,
                           scrape_configs=podmonitor_scrape_configs(targets))
        try:
            stack.start()
        except StackError as exc:
            pytest.fail(f"Prometheus/Alertmanager did not start: {exc}")
        wait_until(lambda: len(stack.query('up{job=~"vllm|vllm-audit-exporter"} == 1')) == 4, 60,
                   lambda: f"Prometheus scraping 4 targets; up: {stack.query('up')}")
        run.mark("exporters ready; Prometheus scrapes 2 vLLM + 2 exporters", t0)

        # --- traffic on both replicas; an empty answer on each
        _send(run.replicas[0], ("ana", "bob", "emma"))
        _send(run.replicas[1], ("carl", "dora", "emma"))
        run.mark("3 requests sent to each replica", t0)

        for rep in run.replicas:
            wait_until(lambda: {r["request_id"] for r in archive_records(rep.archive)} >= set(rep.sent), 90,
                       lambda: f"{rep.pod} archive records for {sorted(rep.sent)}")
        total = sum(len(r.sent) for r in run.replicas)
        wait_until(lambda: len(loki.entries()) >= total, 60, f"{total} Loki entries")
        run.mark("records in both archives and in Loki", t0)

        def per_replica():
            got = stack.query('sum by (vllm_instance) (vllm_audit_requests_total{job="vllm-audit-exporter"})')
            run.per_replica_requests = {r["metric"].get("vllm_instance"): float(r["value"][1]) for r in got}
            agg = stack.query('sum(vllm_audit_requests_total{job="vllm-audit-exporter"})')
            run.total_requests = float(agg[0]["value"][1]) if agg else None
            run.recorded_rate_labels = [r["metric"] for r in stack.query("model:vllm_audit_requests:rate5m")]
            return (run.total_requests == total and len(run.per_replica_requests) == 2
                    and len(run.recorded_rate_labels) == 2)
        wait_until(per_replica, 60, lambda: f"per-replica request counts in Prometheus: {run.per_replica_requests}")

        def both_empty():
            run.empty_alerts = _firing(hook, "VllmEmptyResponses")
            return {a["labels"].get("vllm_instance") for a in run.empty_alerts} >= set(map(instance_of, PODS))
        try:
            wait_until(both_empty, ALERT_WAIT,
                       lambda: f"VllmEmptyResponses for both replicas (Alertmanager: "
                       f"{[a['labels'] for a in stack.alertmanager_alerts()]})")
        except pytest.fail.Exception as exc:  # reported by the alert test; go on
            run.diagnostics.append(str(exc))
        run.mark(f"VllmEmptyResponses notified for {sorted({a['labels'].get('vllm_instance') for a in run.empty_alerts})}", t0)

        # --- replica 1's vLLM goes away; replica 0 keeps serving
        stopped_at = time.time()
        down = run.replicas[1]
        down.srv.stop()
        got = hook.wait_for(lambda a, n: a["labels"].get("alertname") == "VllmDown"
                            and a.get("status") == "firing", 90, since=stopped_at)
        if got is None:
            run.diagnostics.append(f"no VllmDown; Prometheus ALERTS: {stack.query('ALERTS')}")
        wait_until(lambda: _health(down.exporter.url) == 503, 30, f"{down.pod} exporter /health 503")
        down.health_after_stop = _health(down.exporter.url)
        run.replicas[0].health_after_stop = _health(run.replicas[0].exporter.url)
        run.down_alerts = _firing(hook, "VllmDown", since=stopped_at)
        run.mark(f"VllmDown for {sorted({a['labels'].get('vllm_instance') for a in run.down_alerts})}", t0)

        run.loki_entries = loki.entries()
        run.loki_streams = loki.streams()
        # --- stop the sidecars (as the kubelet does after vLLM), then verify each chain
        for rep in run.replicas:
            rep.exporter.stop()
            rep.records = archive_records(rep.archive)
            rep.verify = subprocess.run(
                [sys.executable, "-m", "exporter", "verify", str(rep.archive),
                 "--hmac-key-file", str(secrets / "hmac-key")],
                cwd=REPO, capture_output=True, text=True, timeout=120)
            # the outsider's check: the replica's verifier key, no secret
            rep.verify_public = subprocess.run(
                [sys.executable, "-m", "exporter", "verify", str(rep.archive),
                 "--public-key", str(rep.dir / "signing" / "signing.pub")],
                cwd=REPO, capture_output=True, text=True, timeout=120)
        run.mark("exporters stopped, chains verified", t0)
        yield run
    finally:
        for rep in run.replicas:
            if rep.srv is not None:
                rep.srv.stop()
            if rep.exporter is not None:
                rep.exporter.stop()
        if stack is not None:
            stack.stop()
        loki.stop()
        hook.stop()
        print("\n".join(["replicas timeline:", *run.timeline, *run.diagnostics, f"work dir: {tmp}"]),
              flush=True)


# --------------------------------------------------------------------------- records

def test_each_replica_records_its_own_requests_once(replicas):
    for rep in replicas.replicas:
        ids = [r["request_id"] for r in rep.records]
        assert sorted(ids) == sorted(rep.sent), (rep.pod, ids, sorted(rep.sent))
        assert {r["instance"] for r in rep.records} == {instance_of(rep.pod)}
        assert {r["request_id"]: r["user"] for r in rep.records} == rep.sent
    a, b = ({r["request_id"] for r in rep.records} for rep in replicas.replicas)
    assert not a & b


def test_each_replicas_records_carry_engine_timings(replicas):
    """The stat-logger plugin: found by vLLM through the dist-info the init
    container copied, writing to the manifests' VLLM_AUDIT_ENGINE_FILE, read
    by the sidecar as one of its --log: every record has its engine timings."""
    for rep in replicas.replicas:
        engine_file = rep.dir / "logs" / "engine.jsonl"
        tail = engine_file.read_text(errors="replace")[-1500:] if engine_file.exists() else "(no file)"
        assert rep.records, rep.pod
        for rec in rep.records:
            eng = rec["engine"]
            assert eng is not None and "engine" in rec["sources"], (rep.pod, rec, tail)
            assert eng["devices"] == 1, eng
            for k in ("queue_seconds", "prefill_seconds", "decode_seconds", "inference_seconds"):
                assert isinstance(eng[k], float) and eng[k] >= 0, (rep.pod, k, eng)
            assert eng["inference_seconds"] > 0, eng
            assert 0 < eng["share_seconds"] <= eng["inference_seconds"] + 1e-6, eng


def test_each_replicas_chain_verifies(replicas):
    for rep in replicas.replicas:
        assert rep.verify.returncode == 0, (rep.pod, rep.verify.stdout, rep.verify.stderr)
        assert rep.verify.stdout.startswith("OK:"), rep.verify.stdout
        assert f"{len(rep.sent)} record(s)" in rep.verify.stdout, rep.verify.stdout


def test_each_replicas_log_verifies_with_its_public_key_alone(replicas):
    for rep in replicas.replicas:
        out = rep.verify_public
        assert out.returncode == 0, (rep.pod, out.stdout, out.stderr)
        assert f"OK: {len(rep.sent)} record(s) in a tree of {len(rep.sent)}," in out.stdout, out.stdout
        pub = (rep.dir / "signing" / "signing.pub").read_text()
        assert pub.startswith(f"cluster.local/{instance_of(rep.pod)}+"), pub


def test_loki_streams_are_labelled_by_replica_under_the_tenant(replicas):
    # the server refuses pushes without the manifests' X-Scope-OrgID
    by_instance: dict[str, set] = {}
    for labels, _ts, line, *_ in replicas.loki_entries:
        rec = json.loads(line)
        by_instance.setdefault(dict(labels).get("vllm_instance"), set()).add(rec["request_id"])
        assert dict(labels)["vllm_instance"] == rec["instance"]
    assert by_instance == {instance_of(rep.pod): set(rep.sent) for rep in replicas.replicas}


# --------------------------------------------------------------------------- metrics and alerts

def test_metrics_aggregate_across_replicas_and_filter_by_one(replicas):
    want = {instance_of(rep.pod): float(len(rep.sent)) for rep in replicas.replicas}
    assert replicas.per_replica_requests == want
    assert replicas.total_requests == sum(want.values())
    # the recording rules keep the replica and the namespace (AlertmanagerConfig)
    assert {(m["vllm_instance"], m["namespace"]) for m in replicas.recorded_rate_labels} == \
        {(i, NAMESPACE) for i in want}


def test_empty_responses_alert_fires_on_every_replica(replicas):
    got = {(a["labels"].get("vllm_instance"), a["labels"].get("namespace"), a["labels"].get("user"))
           for a in replicas.empty_alerts}
    assert got >= {(instance_of(p), NAMESPACE, "emma") for p in PODS}, (got, replicas.diagnostics)


def test_vllm_down_names_only_the_replica_that_went_down(replicas):
    got = {a["labels"].get("vllm_instance") for a in replicas.down_alerts}
    assert got == {instance_of(PODS[1])}, (got, replicas.diagnostics)
    assert replicas.replicas[1].health_after_stop == 503  # its pod would leave the Service
    assert replicas.replicas[0].health_after_stop == 200
