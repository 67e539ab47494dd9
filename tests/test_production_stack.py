"""deploy/kubernetes/production-stack/: vLLM's production-stack chart with the audit sidecar.

- values.yaml validates against the chart's own values.schema.json (vendored,
  tests/fixtures/k8s-schemas/README.md names the commit), and every key it
  sets is one the schema names (the schema itself allows unknown keys, so a
  typo would otherwise pass and be ignored by the chart).
- The Kubernetes pieces the schema leaves untyped (env, volumes, mounts, the
  init container) validate as parts of a Pod (kubernetes-validate, strict).
- post-render.sh (helm --post-renderer) runs on a stand-in for the chart's
  engine Deployment built from these values; there is no helm here, so this
  checks the patch and the rendered objects, not the chart's own rendering.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from test_kubernetes import (
    CRD_SCHEMAS, _Loader, kubectl, plugin_entry_points, render_kubernetes, run_install, validate,
)

ROOT = Path(__file__).resolve().parents[1]
PS = ROOT / "deploy" / "kubernetes" / "production-stack"
SCHEMA = Path(__file__).parent / "fixtures" / "k8s-schemas" / "production-stack-values.schema.json"


def values() -> dict:
    return yaml.safe_load((PS / "values.yaml").read_text())


def model() -> dict:
    return values()["servingEngineSpec"]["modelSpec"][0]


def test_values_validate_against_the_charts_schema():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(values())
    broken = values()
    broken["servingEngineSpec"]["modelSpec"][0]["requestCPU"] = "four"
    with pytest.raises(jsonschema.ValidationError):  # the schema does check types
        jsonschema.Draft202012Validator(schema).validate(broken)


def _unknown_keys(value, schema: dict, path: str) -> list[str]:
    out = []
    # A Kubernetes object the chart passes through with toYaml (its schema links
    # the API reference and lists only some fields): Kubernetes' schema applies.
    if "kubernetes-api" in schema.get("description", ""):
        return out
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_keys(sub, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += _unknown_keys(item, schema["items"], f"{path}[{i}]")
    return out


def test_every_key_is_one_the_chart_knows():
    schema = json.loads(SCHEMA.read_text())
    assert _unknown_keys(values(), schema, "") == []
    assert _unknown_keys({"servingEngineSpec": {"modelSpecs": []}}, schema, "") == [".servingEngineSpec.modelSpecs"]


def test_untyped_parts_validate_as_a_pod():
    m = model()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "labels": m["podLabels"]},
           "spec": {"securityContext": values()["servingEngineSpec"]["securityContext"],
                    "initContainers": [{"name": m["initContainer"]["name"], "image": m["initContainer"]["image"],
                                        "command": m["initContainer"]["command"],
                                        "volumeMounts": m["initContainer"]["extraVolumeMounts"],
                                        "resources": m["initContainer"]["resources"]}],
                    "containers": [{"name": "vllm", "image": f'{m["repository"]}:{m["tag"]}',
                                    "env": m["env"], "volumeMounts": m["extraVolumeMounts"],
                                    "securityContext": values()["servingEngineSpec"]["containerSecurityContext"]}],
                    "volumes": m["extraVolumes"]}}
    kubernetes_validate.validate(pod, "1.29.0", strict=True)
    for obj in values()["extraObjects"]:
        kubernetes_validate.validate(obj, "1.29.0", strict=True)


def test_logging_config_is_composes_and_survives_the_charts_tpl():
    # compose's config, its ${VAR:-default} rotation sizes at their defaults
    cm = values()["extraObjects"][0]
    assert cm["data"]["logging.json"] == render_kubernetes.logging_config()
    assert "{{" not in cm["data"]["logging.json"]  # extraObjects go through helm's tpl
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in model()["extraVolumes"])


def test_vllm_runs_the_middleware_with_request_logging():
    args = model()["vllmConfig"]["extraArgs"]
    for flag in ("--enable-log-requests", "--enable-log-outputs", "--enable-force-include-usage",
                 "--middleware=exporter.middleware.AuditMiddleware"):
        assert flag in args
    env = {e["name"]: e for e in model()["env"]}
    assert env["PYTHONPATH"]["value"] == "/opt/vllm-audit"
    assert env["VLLM_LOGGING_CONFIG_PATH"]["value"] == "/etc/vllm-audit/logging.json"


def test_the_stat_logger_plugin_is_wired(tmp_path):
    """The chart's pod as the base's: the plugin's dist-info beside the package
    (init container), its file in vLLM's env and among the sidecar's --log."""
    m = model()
    env = {e["name"]: e for e in m["env"]}
    engine = env["VLLM_AUDIT_ENGINE_FILE"]["value"]
    assert engine == "/logs/engine.jsonl"
    assert "/logs" in {v["mountPath"] for v in m["extraVolumeMounts"]}
    patch = next(op for op in yaml.safe_load((PS / "exporter-sidecar.yaml").read_text())
                 if op["value"]["name"] == "exporter")
    assert f"--log={engine}" in patch["value"]["args"]
    if "VLLM_PLUGINS" in env:
        assert "vllm_audit" in [p.strip() for p in env["VLLM_PLUGINS"]["value"].split(",")]
    # the chart's `configs` become vLLM's environment too (envFrom)
    plugins = values()["servingEngineSpec"].get("configs", {}).get("VLLM_PLUGINS")
    assert plugins is None or "vllm_audit" in [p.strip() for p in plugins.split(",")]
    run_install(m["initContainer"]["command"], tmp_path / "opt", tmp_path / "logs")
    assert plugin_entry_points(tmp_path / "opt") == {"vllm_audit": "exporter.statlogger.plugin:AuditStatLogger"}


def stand_in_deployment() -> dict:
    """What the chart's engine Deployment holds of these values (name, labels, the
    vllm container with its port name, the init container, the extra volumes):
    taken from helm/templates/deployment-vllm-multi.yaml by reading, not rendered."""
    m = model()
    labels = {"model": m["name"], "helm-release-name": "vllm", **m["podLabels"]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"vllm-{m['name']}-deployment-vllm", "namespace": "llm",
                         "labels": {**labels, **m["labels"]}},
            "spec": {"replicas": m["replicaCount"],
                     "selector": {"matchLabels": {"model": m["name"], "helm-release-name": "vllm"}},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "securityContext": values()["servingEngineSpec"]["securityContext"],
                         "initContainers": [{"name": m["initContainer"]["name"],
                                             "image": m["initContainer"]["image"],
                                             "command": m["initContainer"]["command"],
                                             "volumeMounts": m["initContainer"]["extraVolumeMounts"]}],
                         "containers": [{"name": "vllm", "image": f'{m["repository"]}:{m["tag"]}',
                                         "command": ["vllm", "serve", m["modelURL"], "--host", "0.0.0.0",
                                                     "--port", "8000", *m["vllmConfig"]["extraArgs"]],
                                         "env": m["env"],
                                         "ports": [{"name": "container-port", "containerPort": 8000}],
                                         "volumeMounts": m["extraVolumeMounts"]}],
                         "volumes": m["extraVolumes"]}}}}


def test_post_renderer_adds_the_exporter_sidecar(tmp_path):
    if shutil.which("sh") is None:
        pytest.fail("sh not on PATH")
    kubectl()
    stdin = yaml.safe_dump(stand_in_deployment())
    out = subprocess.run([str(PS / "post-render.sh")], input=stdin, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.load_all(out.stdout, Loader=_Loader) if d]
    for obj in objects:
        validate(obj)
    assert {o["kind"] for o in objects} >= {"Deployment", "PodMonitor", "PrometheusRule",
                                            "AlertmanagerConfig", "ConfigMap"}
    dep = next(o for o in objects if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["install-middleware", "signing-key", "exporter"]
    signing, exporter = pod["initContainers"][1:]
    assert exporter["restartPolicy"] == "Always"
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in exporter["volumeMounts"]} <= volumes
    vllm_mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    exp_mounts = {m["mountPath"]: m["name"] for m in exporter["volumeMounts"]}
    assert vllm_mounts["/logs"] == exp_mounts["/logs"]  # the files vLLM writes, the exporter reads
    # the key the signing-key container makes is the one the exporter signs with
    assert {m["mountPath"]: m["name"] for m in signing["volumeMounts"]}["/signing"] == exp_mounts["/signing"]
    assert "--signing-key-file=/signing/signing.key" in exporter["args"]
    pm = next(o for o in objects if o["kind"] == "PodMonitor")
    ports = {p["name"] for c in pod["containers"] + pod["initContainers"] for p in c.get("ports", [])}
    assert {ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]} == {"container-port", "metrics"} <= ports
    assert pm["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert ("monitoring.coreos.com/v1", "PodMonitor") in CRD_SCHEMAS
