"""deploy/kubernetes/: rendered with the real kustomize, validated offline.

- ``kubectl kustomize`` (kustomize built into kubectl; tools/setup.sh --live
  installs Debian's kubernetes-client when no kubectl is on PATH) renders each
  overlay; the test fails, never skips, without it.
- Every rendered object is validated: core kinds against the Kubernetes
  OpenAPI schemas of PyPI ``kubernetes-validate`` (strict: unknown fields are
  errors) for 1.29 (the first release with native sidecars on by default)
  and the newest it ships; Prometheus Operator kinds against the CRD schemas
  vendored in tests/fixtures/k8s-schemas/ (source in its README).
- The generated objects equal their sources (tools/render_kubernetes.py):
  the PrometheusRule is prometheus/rules/, the logging ConfigMap compose's,
  the dashboard ConfigMaps grafana/dashboards/.
- The wiring the README promises holds in the render: one pod per replica
  with the exporter as a native sidecar, probes, identity, shared files, the
  stat-logger plugin (its dist-info copied by the init container, run here
  with the image's paths mapped; its file given to vLLM and the exporter).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).parent / "fixtures" / "k8s-schemas"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"):
        "alertmanagerconfig-monitoring.coreos.com-v1alpha1.json",
}

sys.path.insert(0, str(ROOT / "tools"))
import render_kubernetes  # noqa: E402


# Where the Dockerfile puts vllm-plugin/ in the exporter image (checked below).
IMAGE_PLUGIN_DIR = "/usr/local/share/vllm-audit/vllm-plugin"
PLUGIN_GROUP = "vllm.stat_logger_plugins"


def run_install(command: list[str], opt: Path, logs: Path) -> None:
    """The install-middleware init container's command on this machine: the
    image's paths mapped (PYTHONPATH dir -> ``opt``, the replica's logs ->
    ``logs``, the image's vllm-plugin/ -> this checkout's), the package being
    this checkout's ``exporter``, as the image's is the one it was built from."""
    mapped = [a.replace(f"'{IMAGE_PLUGIN_DIR}", f"'{ROOT / 'vllm-plugin'}")
              .replace("'/opt/vllm-audit", f"'{opt}").replace("'/logs/", f"'{logs}/")
              for a in command]
    assert mapped[0] == "python"
    for a in mapped:  # nothing left that would write outside the test's dirs
        assert not re.search(r"'/(opt|logs|usr)/", a), a
    opt.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, *mapped[1:]], cwd=ROOT, check=True, timeout=60)


def plugin_entry_points(path: Path) -> dict[str, str]:
    """Entry points of vLLM's stat-logger group that distributions in ``path``
    carry: what vLLM's loader (importlib.metadata) finds there."""
    return {ep.name: ep.value for dist in importlib.metadata.distributions(path=[str(path)])
            for ep in dist.entry_points if ep.group == PLUGIN_GROUP}


class _Loader(yaml.SafeLoader):
    """kustomize writes `matchType: =` unquoted; YAML 1.1 calls that a `value` tag."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not on PATH: bash tools/setup.sh --live "
                    "(apt-get install -y kubernetes-client)")
    return path


def render(overlay: str) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.load_all(out.stdout, Loader=_Loader) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"].startswith(name))]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def crd_validator(obj: dict):
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])]).read_text())
    return jsonschema.Draft7Validator(schema)


def validate(obj: dict) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
        crd_validator(obj).validate(obj)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# --------------------------------------------------------------------------- render + schemas

def test_overlays_exist():
    assert {"gpu", "cpu"} <= set(OVERLAYS)


def test_every_rendered_object_validates_offline(rendered):
    _, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "ServiceAccount", "ConfigMap",
                 "PodMonitor", "PrometheusRule", "AlertmanagerConfig"):
        assert kind in kinds, kind
    for obj in objects:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")


def test_the_validators_reject_broken_objects(rendered):
    """Negative controls: a validation that cannot fail shows nothing."""
    _, objects = rendered
    sts = copy.deepcopy(one(objects, "StatefulSet"))
    sts["spec"]["template"]["spec"]["initContainers"][1]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)
    pm = copy.deepcopy(one(objects, "PodMonitor"))
    pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rewrite"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(pm).validate(pm)
    rule = copy.deepcopy(one(objects, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(rule).validate(rule)


# --------------------------------------------------------------------------- one source of truth

def test_generated_files_are_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "render_kubernetes.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_prometheusrule_is_the_rule_files(rendered):
    _, objects = rendered
    groups = []
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert one(objects, "PrometheusRule")["spec"]["groups"] == groups


def test_every_rule_keeps_namespace_and_the_replica():
    """The Operator adds a namespace matcher to an AlertmanagerConfig's routes, and
    alerts are per replica: every aggregation in prometheus/rules/ keeps both
    (in compose the namespace label is simply absent)."""
    import re
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for clause in re.findall(r"\bby \(([^)]*)\)", path.read_text()):
            labels = [x.strip() for x in clause.split(",")]
            assert labels[:2] == ["namespace", "vllm_instance"], (path.name, clause)


def test_prometheus_loads_the_prometheusrule(rendered, tmp_path):
    """The Operator hands spec.groups to Prometheus as a rule file: promtool must accept it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not on PATH: bash tools/setup.sh --live (apt-get install -y prometheus)")
    overlay, objects = rendered
    path = tmp_path / f"{overlay}.rules.yml"
    path.write_text(yaml.safe_dump({"groups": one(objects, "PrometheusRule")["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_logging_configmap_is_composes(rendered):
    _, objects = rendered
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    cm = one(objects, "ConfigMap", "vllm-audit-logging-")
    # compose's text with its ${VAR:-default} interpolated as Compose does with no .env
    from tests.stack.compose import interpolate
    assert cm["data"]["logging.json"] == interpolate(compose["configs"]["vllm-logging"]["content"], {}, [])
    config = json.loads(cm["data"]["logging.json"])
    assert config["handlers"]["vllm_file"]["filename"] == "/logs/vllm.log"


def test_dashboards_are_grafanas_files_labelled_for_the_sidecar(rendered):
    _, objects = rendered
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        cm = one(objects, "ConfigMap", f"vllm-audit-dashboard-{path.stem}")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"] == {path.name: path.read_text()}
    ds = one(objects, "ConfigMap", "vllm-audit-datasources")
    assert ds["metadata"]["labels"]["grafana_datasource"] == "1"
    sources = yaml.safe_load(ds["data"]["vllm-audit-datasources.yaml"])["datasources"]
    loki = next(s for s in sources if s["type"] == "loki")
    assert loki["jsonData"]["httpHeaderName1"] == "X-Scope-OrgID"
    assert loki["secureJsonData"]["httpHeaderValue1"] == render_kubernetes.LOKI_TENANT
    assert not any(s["isDefault"] for s in sources)
    committed = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())
    assert {s["uid"] for s in sources} == {s["uid"] for s in committed["datasources"]}


def _matcher_text(m: dict) -> str:
    return f'{m["name"]}{m["matchType"]}"{m["value"]}"'


def test_alertmanagerconfig_routes_like_alertmanager_yml(rendered):
    _, objects = rendered
    am = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    spec = one(objects, "AlertmanagerConfig")["spec"]
    assert spec["route"]["receiver"] == am["route"]["receiver"]
    assert spec["route"]["groupBy"] == am["route"]["group_by"]
    assert [[_matcher_text(m) for m in r["matchers"]] for r in spec["route"]["routes"]] == \
        [[m.replace(" ", "") for m in r["matchers"]] for r in am["route"]["routes"]]
    assert [r["receiver"] for r in spec["route"]["routes"]] == [r["receiver"] for r in am["route"]["routes"]]
    assert [r["name"] for r in spec["receivers"]] == [r["name"] for r in am["receivers"]]
    assert len(spec["inhibitRules"]) == len(am["inhibit_rules"])
    for ours, theirs in zip(spec["inhibitRules"], am["inhibit_rules"]):
        assert [_matcher_text(m) for m in ours["targetMatch"]] == \
            [m.replace(" ", "") for m in theirs["target_matchers"]]
        assert ours["equal"] == theirs["equal"]


# --------------------------------------------------------------------------- wiring

def _by_name(items: list[dict]) -> dict[str, dict]:
    return {i["name"]: i for i in items}


def test_the_pod_is_vllm_with_the_exporter_as_native_sidecar(rendered):
    overlay, objects = rendered
    sts = one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    init = pod["initContainers"]
    # in this order: init containers start one after the other, so the
    # middleware and the signing key exist before the sidecar starts
    assert [c["name"] for c in init] == ["install-middleware", "signing-key", "exporter"]
    exporter, vllm = init[2], _by_name(pod["containers"])["vllm"]
    assert exporter["restartPolicy"] == "Always"  # started before vLLM, stopped after it
    assert "--middleware=exporter.middleware.AuditMiddleware" in vllm["args"]
    for flag in ("--enable-log-requests", "--enable-log-outputs", "--enable-force-include-usage"):
        assert flag in vllm["args"]
    venv = _by_name(vllm["env"])
    assert venv["PYTHONPATH"]["value"] == "/opt/vllm-audit"
    # the init container copies the package where PYTHONPATH points
    assert "/opt/vllm-audit/exporter" in " ".join(init[0]["command"])
    assert _by_name(init[0]["volumeMounts"])["middleware"]["mountPath"] == "/opt/vllm-audit"
    assert _by_name(vllm["volumeMounts"])["middleware"]["mountPath"] == "/opt/vllm-audit"

    # probes mean what they say
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/health"
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/"
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"

    # replica identity from the downward API, as the PodMonitor's vllm_instance
    eenv = _by_name(exporter["env"])
    assert eenv["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert eenv["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    names = list(eenv)
    assert names.index("VLLM_AUDIT_INSTANCE") > names.index("POD_NAMESPACE")  # $(VAR) needs it first
    assert eenv["VLLM_AUDIT_INSTANCE"]["value"] == "$(POD_NAMESPACE)/$(POD_NAME)"
    # the exporter records the model vLLM serves
    served = next(a for a in vllm["args"] if a.startswith("--served-model-name="))
    assert eenv["VLLM_AUDIT_MODEL"]["value"] == served.split("=", 1)[1]


def test_logs_secrets_and_config_are_shared_as_files(rendered):
    _, objects = rendered
    sts = one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    exporter, vllm = _by_name(pod["initContainers"])["exporter"], _by_name(pod["containers"])["vllm"]
    volumes = _by_name(pod["volumes"])
    # vLLM's log and the middleware file: written by vLLM, read by the exporter,
    # on the replica's own claim (the same volume and subPath in both)
    logs_v, logs_e = _by_name(vllm["volumeMounts"])["audit"], _by_name(exporter["volumeMounts"])
    assert "audit" in {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    exp_logs = next(m for m in exporter["volumeMounts"] if m["mountPath"] == "/logs")
    assert (exp_logs["name"], exp_logs["subPath"], exp_logs["readOnly"]) == ("audit", logs_v["subPath"], True)
    assert logs_v["mountPath"] == "/logs"
    assert {"--log=/logs/vllm.log", "--log=/logs/middleware.jsonl"} <= set(exporter["args"])
    assert _by_name(vllm["env"])["VLLM_AUDIT_MIDDLEWARE_FILE"]["value"] == "/logs/middleware.jsonl"
    # the middleware's file exists before vLLM starts (the exporter's readiness
    # needs it; the middleware creates it only at the first request)
    install = pod["initContainers"][0]
    inst_logs = next(m for m in install["volumeMounts"] if m["mountPath"] == "/logs")
    assert (inst_logs["name"], inst_logs["subPath"]) == ("audit", logs_v["subPath"])
    assert "'/logs/middleware.jsonl'" in " ".join(install["command"])
    archive = next(m for m in exporter["volumeMounts"] if m["mountPath"] == "/archive")
    assert archive["name"] == "audit" and archive["subPath"] != logs_v["subPath"]
    # the logging ConfigMap the pod mounts is the rendered (hash-suffixed) one
    cm = one(objects, "ConfigMap", "vllm-audit-logging-")
    assert volumes["logging"]["configMap"]["name"] == cm["metadata"]["name"]
    assert _by_name(vllm["env"])["VLLM_LOGGING_CONFIG_PATH"]["value"] == \
        _by_name(vllm["volumeMounts"])["logging"]["mountPath"] + "/logging.json"
    # secrets: a file for the exporter's *_FILE flag
    secret_dir = logs_e["secrets"]["mountPath"]
    assert f"--hmac-key-file={secret_dir}/hmac-key" in exporter["args"]
    assert volumes["secrets"]["secret"]["secretName"] == "vllm-audit"
    assert "hmac-key" in {i["path"] for i in volumes["secrets"]["secret"]["items"]}
    assert not any("HMAC" in e["name"] for e in exporter["env"])  # never an env value


def test_the_stat_logger_plugin_is_wired(rendered, tmp_path):
    """As compose: the plugin's dist-info beside the package on vLLM's
    PYTHONPATH, VLLM_AUDIT_ENGINE_FILE on the shared logs volume, that file
    one of the exporter's --log, and no VLLM_PLUGINS allowlist without it."""
    _, objects = rendered
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    init = _by_name(pod["initContainers"])
    install, exporter = init["install-middleware"], init["exporter"]
    vllm = _by_name(pod["containers"])["vllm"]
    venv = _by_name(vllm["env"])
    assert "VLLM_AUDIT_ENGINE_FILE" in venv, "vLLM is not given the plugin's file"
    engine = venv["VLLM_AUDIT_ENGINE_FILE"]["value"]
    logs_dir = next(m for m in vllm["volumeMounts"] if m["name"] == "audit")["mountPath"]
    assert engine.startswith(logs_dir + "/") and "{pid}" not in engine, engine
    assert f"--log={engine}" in exporter["args"]
    if "VLLM_PLUGINS" in venv:  # an allowlist must name it ("" matches nothing)
        assert "vllm_audit" in [p.strip() for p in venv["VLLM_PLUGINS"]["value"].split(",")]

    # the init container puts a dist-info with pyproject's entry point where
    # PYTHONPATH points (the package alone imports, but vLLM never loads it)
    opt, logs = tmp_path / "opt", tmp_path / "logs"
    run_install(install["command"], opt, logs)
    assert venv["PYTHONPATH"]["value"] == "/opt/vllm-audit"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert plugin_entry_points(opt) == pyproject["project"]["entry-points"][PLUGIN_GROUP] == \
        {"vllm_audit": "exporter.statlogger.plugin:AuditStatLogger"}
    assert (opt / "exporter" / "statlogger" / "plugin.py").is_file()
    assert (logs / "middleware.jsonl").is_file()

    # ... from the image: the Dockerfile's final stage copies vllm-plugin/ there
    final = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    assert re.search(rf"^COPY vllm-plugin {re.escape(IMAGE_PLUGIN_DIR)}$", final, re.M), final
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "!vllm-plugin/" in ignore[ignore.index("*") + 1:]


def test_security_and_resources(rendered):
    _, objects = rendered
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
    for name in ("exporter", "signing-key"):
        assert _by_name(pod["initContainers"])[name]["securityContext"]["readOnlyRootFilesystem"] is True


def test_monitors_and_budget_select_the_pods(rendered):
    overlay, objects = rendered
    sts = one(objects, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    pod = sts["spec"]["template"]["spec"]
    ports = {p["name"] for c in pod["initContainers"] + pod["containers"] for p in c.get("ports", [])}
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    jobs = {}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports
        relabel = {r["targetLabel"]: r for r in ep["relabelings"]}
        jobs[relabel["job"]["replacement"]] = ep["port"]
        assert relabel["vllm_instance"]["sourceLabels"] == ["__meta_kubernetes_namespace",
                                                            "__meta_kubernetes_pod_name"]
        assert relabel["vllm_instance"]["separator"] == "/"
    # the rules' selectors (prometheus/rules/: job="vllm", job="vllm-audit-exporter")
    assert jobs == {"vllm": "http", "vllm-audit-exporter": "metrics"}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in (o for o in objects if o["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] in {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
