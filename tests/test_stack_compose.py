"""compose.yaml: schema-valid and consistent with the rest of the stack.

No Docker engine runs here, so the stack is checked statically: against the
Compose specification's JSON schema (read from ../shared/data, never copied
into the repo), and cross-checked with prometheus.yml, the Grafana
datasources and the files it mounts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO.parent / "shared" / "data" / "compose-spec.schema.json"
SERVICES = {"vllm", "exporter", "prometheus", "alertmanager", "alert-log", "loki", "grafana", "open-webui",
            "dcgm-exporter", "signing-key"}
ONE_SHOT = {"signing-key"}  # runs to completion before the exporter (no healthcheck, no restart)


from tests.stack.compose import ComposeLoader, container_ports, interpolate, merge, strip_resets  # noqa: E402


def load(name: str) -> dict:
    return yaml.load((REPO / name).read_text(), Loader=ComposeLoader)


def validate(doc: dict, schema: dict) -> None:
    # the schema declares draft-07 by an id jsonschema does not know verbatim
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.fixture(scope="module")
def schema() -> dict:
    if not SCHEMA.exists():
        pytest.fail(f"compose schema missing: {SCHEMA} (the Compose spec's schema/compose-spec.json, "
                    "see ../shared/data/README.md); the project keeps no copy")
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("compose.yaml")


def test_compose_yaml_is_valid_against_the_compose_spec(schema, compose):
    validate(compose, schema)
    assert set(compose["services"]) == SERVICES


def test_cpu_override_is_valid_alone_and_merged(schema, compose):
    override = load("compose.cpu.yaml")
    validate(strip_resets(override), schema)
    merged = merge(compose, override)
    validate(merged, schema)
    vllm = merged["services"]["vllm"]
    assert "deploy" not in vllm
    assert "cpu" in vllm["image"]
    assert vllm["environment"]["VLLM_TARGET_DEVICE"] == "cpu"
    assert vllm["command"] == compose["services"]["vllm"]["command"]


def test_vllm_runs_with_request_logging_middleware_and_shared_log_volume(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["image"].split(":-")[-1].startswith("vllm/vllm-openai:")
    args = vllm["command"]
    for flag in ("--enable-log-requests", "--enable-log-outputs", "--enable-force-include-usage",
                 "--middleware=exporter.middleware.AuditMiddleware"):
        assert flag in args, flag
    env = vllm["environment"]
    assert env["PYTHONPATH"] == "/opt/vllm-audit"
    assert "./exporter:/opt/vllm-audit/exporter:ro,z" in vllm["volumes"]
    assert env["VLLM_AUDIT_MIDDLEWARE_FILE"] == "/logs/middleware.jsonl"
    assert "vllm-logs:/logs" in vllm["volumes"]
    config_target = {c["source"]: c["target"] for c in vllm["configs"]}["vllm-logging"]
    assert env["VLLM_LOGGING_CONFIG_PATH"] == config_target
    logging_config = json.loads(interpolate(compose["configs"]["vllm-logging"]["content"], {}, []))
    files = {h.get("filename") for h in logging_config["handlers"].values()}
    assert "/logs/vllm.log" in files
    assert logging_config["loggers"]["vllm"]["handlers"].count("vllm_file") == 1
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_exporter_command_matches_the_issue(compose):
    exporter = compose["services"]["exporter"]
    assert exporter["build"] == "."
    args = exporter["command"]
    assert args[0] == "run"
    for arg in ("--log=/logs/vllm.log", "--log=/logs/middleware.jsonl", "--archive-dir=/archive",
                "--vllm-url=http://vllm:8000", "--web.listen-address=0.0.0.0:9400",
                "--loki-url=http://loki:3100"):
        assert arg in args, arg
    # --prune-rotated deletes the vllm.log.N it has read and committed: /logs writable
    assert "--prune-rotated" in args
    assert "vllm-logs:/logs" in exporter["volumes"]
    assert any(v.startswith("audit-archive:/archive") for v in exporter["volumes"])


def test_every_service_has_a_healthcheck_except_optional_gpu_metrics(compose):
    for name, service in compose["services"].items():
        if name == "dcgm-exporter":
            assert service["profiles"] == ["gpu-metrics"]
            continue
        if name in ONE_SHOT:
            # `up --wait` treats a one-shot's exit 0 as done only when a
            # running service waits for it with this condition
            assert service["healthcheck"] == {"disable": True} and service["restart"] == "no", name
            assert any((s.get("depends_on") or {}).get(name, {}).get("condition")
                       == "service_completed_successfully" for s in compose["services"].values()), name
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 2, name


def test_ports_are_published_on_loopback_by_default(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_named_volumes_are_declared_and_bind_mounts_exist(compose):
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                used.add(source)
    assert used == declared, (used, declared)


def container_mounts(compose, service: str) -> dict[str, Path]:
    """container path -> repo path of the service's bind mounts."""
    out = {}
    for volume in compose["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = REPO / source
    return out


def resolve(mounts: dict[str, Path], container_path: str) -> Path:
    for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == target:
            return source
        if container_path.startswith(target + "/"):
            return source / container_path[len(target) + 1:]
    raise AssertionError(f"{container_path} is not mounted from the repo")


def test_service_configs_point_at_mounted_repo_files(compose):
    prom = container_mounts(compose, "prometheus")
    args = compose["services"]["prometheus"]["command"]
    config = next(a.split("=", 1)[1] for a in args if a.startswith("--config.file="))
    prom_yml = resolve(prom, config)
    assert prom_yml == REPO / "prometheus/prometheus.yml"
    rules_dir = resolve(prom, "/etc/prometheus/rules")
    for pattern in yaml.safe_load(prom_yml.read_text())["rule_files"]:
        assert list(prom_yml.parent.glob(pattern)), pattern
        assert (Path("/etc/prometheus") / pattern).parent.as_posix() == "/etc/prometheus/rules"
    assert list(rules_dir.glob("*.yml"))

    am = container_mounts(compose, "alertmanager")
    args = compose["services"]["alertmanager"]["command"]
    am_yml = resolve(am, next(a.split("=", 1)[1] for a in args if a.startswith("--config.file=")))
    assert am_yml == REPO / "prometheus/alertmanager.yml"
    for pattern in yaml.safe_load(am_yml.read_text())["templates"]:
        assert list(resolve(am, f"/etc/alertmanager/{Path(pattern).parent}").glob(Path(pattern).name))

    loki = container_mounts(compose, "loki")
    args = compose["services"]["loki"]["command"]
    loki_cfg = resolve(loki, next(a.split("=", 1)[1] for a in args if a.startswith("-config.file=")))
    assert loki_cfg == REPO / "loki/loki-config.yaml"
    ruler_dir = yaml.safe_load(loki_cfg.read_text())["ruler"]["storage"]["local"]["directory"]
    assert list(resolve(loki, ruler_dir).glob("fake/*.yaml"))

    grafana = container_mounts(compose, "grafana")
    assert resolve(grafana, "/etc/grafana/provisioning/datasources") == REPO / "grafana/provisioning/datasources"
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    dash_dir = resolve(grafana, provider["providers"][0]["options"]["path"])
    assert sorted(p.name for p in dash_dir.glob("*.json")) == ["audit-log.json", "overview.json",
                                                               "users.json"]


def container_port(compose, service: str) -> int:
    """The port the service listens on (published or only exposed)."""
    ports = container_ports(compose["services"][service])
    assert len(ports) == 1, (service, ports)
    return ports.pop()


def test_prometheus_targets_agree_with_compose_services_and_ports(compose):
    prom = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prom["scrape_configs"]}
    expected = {"vllm": "vllm", "vllm-audit-exporter": "exporter", "alertmanager": "alertmanager",
                "loki": "loki", "grafana": "grafana"}
    for job, service in expected.items():
        host, port = targets[job].split(":")
        assert host == service and service in compose["services"], job
        assert int(port) == container_port(compose, service), job
    assert targets["vllm-audit-exporter"] == "exporter:9400"
    assert targets["dcgm"].split(":")[0] == "dcgm-exporter"
    am = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert am == f"alertmanager:{container_port(compose, 'alertmanager')}"
    # the exporter's vllm_instance label names the vllm target
    exporter_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "vllm-audit-exporter")
    assert exporter_job["static_configs"][0]["labels"]["vllm_instance"] == targets["vllm"]
    # the exporter scrapes the same vLLM and pushes to the same Loki
    args = compose["services"]["exporter"]["command"]
    assert f"--vllm-url=http://{targets['vllm']}" in args
    assert f"--loki-url=http://{targets['loki']}" in args


def test_grafana_datasources_agree_with_compose_services(compose):
    sources = yaml.safe_load((REPO / "grafana/provisioning/datasources/datasources.yml").read_text())
    urls = {d["uid"]: d["url"] for d in sources["datasources"]}
    assert urls == {
        "vllm-audit-prometheus": f"http://prometheus:{container_port(compose, 'prometheus')}",
        "vllm-audit-loki": f"http://loki:{container_port(compose, 'loki')}",
        "vllm-audit-alertmanager": f"http://alertmanager:{container_port(compose, 'alertmanager')}",
    }
    loki_cfg = yaml.safe_load((REPO / "loki/loki-config.yaml").read_text())
    assert loki_cfg["server"]["http_listen_port"] == container_port(compose, "loki")
    assert loki_cfg["ruler"]["alertmanager_url"] == f"http://alertmanager:{container_port(compose, 'alertmanager')}"


def test_secrets_come_from_the_env_file(compose):
    text = (REPO / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    used |= {s["environment"] for s in compose["secrets"].values()}
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    cpu = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "compose.cpu.yaml").read_text()))
    ports = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "compose.ports.yaml").read_text()))
    cpu |= ports
    image_overrides = {v for v in used if v.endswith("_IMAGE") and v != "VLLM_IMAGE"}
    missing = (used | cpu) - documented - image_overrides
    assert not missing, f"variables used by compose but not in .env.example: {sorted(missing)}"
    # no secret value is committed
    for line in (REPO / ".env.example").read_text().splitlines():
        if re.match(r"(HF_TOKEN|VLLM_AUDIT_HMAC_KEY|VLLM_AUDIT_API_KEY_SALT|GRAFANA_ADMIN_PASSWORD|"
                    r"VLLM_AUDIT_IDENTITY_SECRET|WEBUI_SECRET_KEY|ALERT_[A-Z_]+)=", line):
            assert line.endswith("="), line
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "--hmac-key-file=/run/secrets/audit_hmac_key" in compose["services"]["exporter"]["command"]


def test_loki_config_single_binary_filesystem_tsdb_v13_structured_metadata():
    cfg = yaml.safe_load((REPO / "loki/loki-config.yaml").read_text())
    assert cfg["auth_enabled"] is False
    assert cfg["common"]["storage"]["filesystem"]
    schema = cfg["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    limits = cfg["limits_config"]
    assert limits["allow_structured_metadata"] is True
    assert limits["retention_period"].startswith("${LOKI_RETENTION_PERIOD:-")
    assert cfg["compactor"]["retention_enabled"] is True


def test_dockerfile_and_dockerignore_build_only_the_package():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EXPOSE 9400" in dockerfile
    assert 'ENTRYPOINT ["vllm-audit-exporter"]' in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.M), "the image must not run as root"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:].count("!exporter/") == 1
