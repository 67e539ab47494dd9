"""The deploy review's findings (issue 12, ../shared/reference/deploy-audit.md),
one static check each, on the compose files as Compose reads them
(tests/stack/compose.py: .env, interpolation, merge). Each of these failed on
the compose files before the fix; the runner (tests/stack/) then runs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.stack.compose import (
    InterpolationError, container_ports, depends_on, environment, healthcheck, load_project, load_yaml,
    mounts, parse_dotenv,
)

REPO = Path(__file__).resolve().parent.parent
FILES = [REPO / "compose.yaml"]
CPU = [*FILES, REPO / "compose.cpu.yaml"]
REQUIRED = ("VLLM_AUDIT_API_KEY_SALT", "VLLM_AUDIT_OPENWEBUI_JWT_SECRET", "VLLM_AUDIT_HMAC_KEY",
            "WEBUI_SECRET_KEY", "GRAFANA_ADMIN_PASSWORD")


def example_env(**filled) -> dict[str, str]:
    env = parse_dotenv((REPO / ".env.example").read_text())
    env.update(filled)
    return env


def filled_env() -> dict[str, str]:
    """.env.example filled the way it says: every (required) value set."""
    return example_env(**{k: f"test-{k.lower()}" for k in REQUIRED})


@pytest.fixture(scope="module")
def project() -> dict:
    return load_project(CPU, filled_env())


def test_unfilled_env_example_stops_up_naming_every_required_secret():
    """Row 1/2/12: `cp .env.example .env && up` must fail at once, naming each
    secret (no admin/admin, no exporter restart loop on an empty HMAC key)."""
    with pytest.raises(InterpolationError) as exc:
        load_project(FILES, example_env())
    text = str(exc.value)
    for var in REQUIRED:
        assert f"required variable {var} is missing a value" in text, var
    for var in REQUIRED:  # each alone is enough to stop it
        env = filled_env()
        env[var] = ""
        with pytest.raises(InterpolationError, match=var):
            load_project(FILES, env)
    for secret in load_yaml(REPO / "compose.yaml")["secrets"].values():
        assert secret["environment"] in REQUIRED


def test_exporter_never_waits_for_loki(project):
    """Row 4: any Loki trouble kept the exporter from starting while vLLM served."""
    exporter = project["services"]["exporter"]
    assert "loki" not in depends_on(exporter)
    assert not any(a.startswith("--from-end") for a in exporter["command"])
    for name, service in project["services"].items():
        for dep, cond in depends_on(service).items():
            assert not (dep == "loki" and name == "exporter"), cond


def test_alert_receivers_reach_a_compose_service_with_the_shipped_defaults(project):
    """Row 14: both receivers posted to 127.0.0.1:5001 inside Alertmanager."""
    am = yaml.safe_load((REPO / "prometheus/alertmanager.yml").read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs") or []]
    assert urls
    for url in urls:
        m = re.match(r"http://([a-z0-9-]+):(\d+)/", url)
        assert m, url
        host, port = m.group(1), int(m.group(2))
        assert host in project["services"] and host != "alertmanager", url
        assert port in container_ports(project["services"][host]), url
    routed = {am["route"]["receiver"]} | {r["receiver"] for r in am["route"]["routes"]}
    for name in routed - {"blackhole"}:
        receiver = next(r for r in am["receivers"] if r["name"] == name)
        assert receiver.get("webhook_configs"), name


def test_one_env_variable_each_switches_to_webhook_slack_or_email():
    env = filled_env()
    env.update(ALERT_WEBHOOK_URL="https://hooks.example.org/x",
               ALERT_SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T/B/X",
               ALERT_EMAIL_TO="oncall@example.org")
    alert_log = environment(load_project(FILES, env)["services"]["alert-log"])
    assert alert_log["VLLM_AUDIT_ALERT_WEBHOOK_URL"] == "https://hooks.example.org/x"
    assert alert_log["VLLM_AUDIT_ALERT_SLACK_WEBHOOK_URL"] == "https://hooks.slack.com/services/T/B/X"
    assert alert_log["VLLM_AUDIT_ALERT_EMAIL_TO"] == "oncall@example.org"
    default = environment(load_project(FILES, filled_env())["services"]["alert-log"])
    assert default["VLLM_AUDIT_ALERT_WEBHOOK_URL"] == ""  # empty = log only (settings: empty = default)


def test_an_alert_watches_failed_notifications():
    rules = yaml.safe_load((REPO / "prometheus/rules/vllm-audit.alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert "alertmanager_notifications_failed_total" in alerts["VllmAuditNotificationsFailing"]["expr"]
    prom = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    assert any(j["job_name"] == "alertmanager" for j in prom["scrape_configs"])


# Current releases when bumped (2026-12): the image tag must be at least this.
MIN_IMAGES = {"loki": ("grafana/loki", (3, 6, 5)), "prometheus": ("prom/prometheus", (3, 14, 0)),
              "alertmanager": ("prom/alertmanager", (0, 34, 0)), "grafana": ("grafana/grafana", (13, 1, 3)),
              "dcgm-exporter": ("nvcr.io/nvidia/k8s/dcgm-exporter", (4, 5, 3))}


def version(tag: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"v?(\d+(?:\.\d+)*)", tag).group(1).split("."))


def test_images_are_current_and_healthchecks_work_in_them():
    """Rows 3, 20-24: Loki >= 3.6 is distroless (no wget, no shell): its own
    `loki -health`; every image bumped."""
    services = load_project(FILES, filled_env())["services"]
    for name, (repo, minimum) in MIN_IMAGES.items():
        image, _, tag = services[name]["image"].rpartition(":")
        assert image == repo and version(tag) >= minimum, (name, services[name]["image"])
    loki_test = healthcheck(services["loki"])["test"]
    assert loki_test[0] == "CMD" and loki_test[1] == "/usr/bin/loki" and "-health" in loki_test
    for name in ("prometheus", "loki"):
        assert healthcheck(services[name])["start_period"] >= 300, name  # row 18: WAL replay


def test_request_logger_writes_to_the_file_only_and_docker_logs_are_bounded(project):
    """Row 10: prompts, token ids and outputs reached vLLM's stdout (docker logs)."""
    vllm = project["services"]["vllm"]
    config = json.loads(project["configs"]["vllm-logging"]["content"])
    request_logger = config["loggers"]["vllm.entrypoints.serve.utils.request_logger"]
    assert request_logger["handlers"] == ["vllm_file"] and request_logger["propagate"] is False
    assert config["handlers"]["vllm_file"]["filename"] == "/logs/vllm.log"
    for name in ("vllm_file", "uvicorn_access_file"):  # the shared log volume is bounded
        handler = config["handlers"][name]
        assert handler["class"] == "exporter.middleware.logfile.SharedRotatingFileHandler", name
        assert handler["maxBytes"] * (handler["backupCount"] + 1) <= 2 << 30, name
        # ... and the exporter (10001:0) may delete what it has read (--prune-rotated)
        assert handler["dirMode"] == "0770", name
    assert "--prune-rotated" in project["services"]["exporter"]["command"]
    logging_opts = vllm["logging"]
    assert logging_opts["driver"] in ("local", "json-file") and logging_opts["options"]["max-size"]


def test_only_open_webui_grafana_and_vllm_are_published(project):
    """Row 15: one BIND_ADDRESS published Prometheus (/-/quit), Alertmanager and Loki's APIs."""
    published = {n for n, s in project["services"].items() if s.get("ports")}
    assert published == {"vllm", "grafana", "open-webui"}
    assert "--web.enable-lifecycle" not in project["services"]["prometheus"]["command"]


def test_loki_delete_api_off_and_retention_separate_from_max_age():
    """Row 9: LOKI_RETENTION_PERIOD=0s also set the max sample age: Loki rejected everything."""
    cfg = yaml.safe_load((REPO / "loki/loki-config.yaml").read_text())
    limits = cfg["limits_config"]
    assert limits["deletion_mode"] == "disabled"
    assert limits["retention_period"] == "${LOKI_RETENTION_PERIOD:-2160h}"
    assert limits["reject_old_samples_max_age"] == "${LOKI_REJECT_OLD_SAMPLES_MAX_AGE:-2160h}"
    env = environment(load_project(FILES, {**filled_env(), "LOKI_RETENTION_PERIOD": "0s"})["services"]["loki"])
    assert env["LOKI_RETENTION_PERIOD"] == "0s" and env["LOKI_REJECT_OLD_SAMPLES_MAX_AGE"] == "2160h"


def test_every_bind_mount_is_relabelled_for_selinux(project):
    """Row 8: EACCES on every bind mount of SELinux-enforcing hosts."""
    binds = [(n, m) for n, s in project["services"].items() for m in mounts(s) if m.bind]
    assert binds
    for name, m in binds:
        assert "z" in m.options or "Z" in m.options, (name, m)


def test_open_webui_forwards_a_signed_identity_that_vllm_verifies(project):
    owui = environment(project["services"]["open-webui"])
    vllm = environment(project["services"]["vllm"])
    assert owui["OPENAI_API_BASE_URLS"] == "http://vllm:8000/v1"
    assert owui["ENABLE_FORWARD_USER_INFO_HEADERS"] == "true"
    assert owui["FORWARD_USER_INFO_HEADER_JWT_SECRET"] == vllm["VLLM_AUDIT_OPENWEBUI_JWT_SECRET"] != ""
    assert owui["ENABLE_PERSISTENT_CONFIG"] == "false"  # the env wins at every start


def test_telemetry_off_internal_calls_bypass_proxies_and_grafana_url_follows_its_port():
    """Rows 26, 30, 31, 33."""
    env = filled_env()
    env["GRAFANA_PORT"] = "3300"
    services = load_project(CPU, env)["services"]
    assert environment(services["vllm"])["VLLM_NO_USAGE_STATS"] == "1"
    for name in ("vllm", "exporter", "alert-log", "open-webui", "grafana"):
        no_proxy = environment(services[name])["NO_PROXY"].split(",")
        assert {"vllm", "loki", "alert-log", "127.0.0.1"} <= set(no_proxy), name
    assert environment(services["grafana"])["GF_SERVER_ROOT_URL"] == "http://localhost:3300/"
    assert "shm_size" not in services["vllm"]  # ipc: host


def test_docs_state_the_host_prerequisites():
    ops = (REPO / "docs/operations.md").read_text()
    for needle in ("Docker Compose", "2.24", "580", "nvidia-container-toolkit", "SELinux", ":z",
                   "tools/preflight.sh"):
        assert needle in ops, needle


# --------------------------------------------------------------------------- preflight

def stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def preflight(tmp_path: Path, *args: str, compose="2.29.7", driver="580.65.06", runtimes='{"nvidia":{}}',
              env: dict | None = None, selinux="Disabled") -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub(bin_dir, "docker", f"""case "$1 $2" in
  "compose version") {'echo ' + compose if compose else 'exit 1'} ;;
  "info --format") echo '{runtimes}' ;;
esac""")
    if driver is not None:
        stub(bin_dir, "nvidia-smi", f"echo {driver}")
    stub(bin_dir, "getenforce", f"echo {selinux}")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (env or {}).items()))
    path = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run(["bash", str(REPO / "tools/preflight.sh"), *args], capture_output=True, text=True,
                          env={"PATH": path, "ENV_FILE": str(env_file), "HOME": os.environ.get("HOME", "/")})


def test_preflight_passes_on_a_ready_host(tmp_path):
    result = preflight(tmp_path, env={k: "x" for k in REQUIRED})
    assert result.returncode == 0, result.stdout
    assert "ok    Docker Compose 2.29.7" in result.stdout


@pytest.mark.parametrize("kwargs, needle", [
    ({"compose": "2.20.2"}, "Docker Compose 2.20.2 is older than 2.24.0"),
    ({"compose": ""}, "'docker compose' (the v2 plugin) not available"),
    ({"driver": "550.120"}, "NVIDIA driver 550.120 is older than 580"),
    ({"driver": None}, "nvidia-smi not found"),
    ({"runtimes": '{"runc":{}}'}, "NVIDIA Container Toolkit missing"),
])
def test_preflight_names_what_is_missing(tmp_path, kwargs, needle):
    result = preflight(tmp_path, env={k: "x" for k in REQUIRED}, **kwargs)
    assert result.returncode == 1 and needle in result.stdout, result.stdout


def test_preflight_checks_env_and_selinux(tmp_path):
    result = preflight(tmp_path, env={"VLLM_AUDIT_HMAC_KEY": "x"}, selinux="Enforcing")
    assert result.returncode == 1
    assert "FAIL  GRAFANA_ADMIN_PASSWORD is empty" in result.stdout
    assert "ok    VLLM_AUDIT_HMAC_KEY is set" in result.stdout
    assert "SELinux is enforcing" in result.stdout
    cpu = preflight(tmp_path, "--cpu", driver=None, runtimes="{}", env={k: "x" for k in REQUIRED})
    assert cpu.returncode == 0, cpu.stdout


def test_the_exporter_signs_checkpoints_with_a_key_made_once_on_a_writable_volume():
    """Issue 15 in compose: `docker compose up` gave no signed checkpoints (no
    key, no --signing-key-file). The key lives on a named volume, writable by
    the exporter (each UTC day's key replaces the file: not a read-only compose
    secret), made by a one-shot keygen that keeps an existing key, before the
    exporter starts; origin and witnesses come from .env, empty = default."""
    from exporter.cli import make_parser
    from exporter.settings import resolve
    from tests.stack.runner import dockerfile_user_and_dirs

    def resolved(**env):
        project_env = {**filled_env(), **env}
        project_env = {k: v for k, v in project_env.items() if v is not None}  # None: unset
        services = load_project(CPU, project_env)["services"]
        exporter = services["exporter"]
        return services, resolve("run", make_parser().parse_args(exporter["command"]), environment(exporter))

    services, run = resolved()
    exporter = services["exporter"]
    assert run["signing_key_file"] is not None, "the exporter gets no --signing-key-file"
    key = Path(run["signing_key_file"])
    assert key.name == "signing.key"
    volume = {m.target: m for m in mounts(exporter)}[str(key.parent)]
    assert not volume.bind and not volume.read_only, volume
    assert not str(key).startswith("/run/secrets/")
    keygens = {n: make_parser().parse_args(s["command"]) for n, s in services.items()
               if (s.get("command") or [None])[0] == "keygen"}
    assert len(keygens) == 1, keygens
    (name, keygen), = keygens.items()
    assert depends_on(exporter)[name]["condition"] == "service_completed_successfully"
    assert keygen.keep_existing and Path(keygen.out) == key.parent  # made once, never replaced
    assert {m.target: m for m in mounts(services[name])}[keygen.out].source == volume.source
    assert services[name]["image"] == exporter["image"] and services[name]["restart"] == "no"
    # a new named volume takes the image's owner and mode at its path
    uid, gid, dirs = dockerfile_user_and_dirs(REPO / "Dockerfile")
    owner, group, mode = dirs[str(key.parent)]
    assert (owner, mode & 0o700, mode & 0o077) == (uid, 0o700, 0), (uid, dirs[str(key.parent)])
    # .env.example's values; an empty one means the default, never the container's hostname
    example = parse_dotenv((REPO / ".env.example").read_text())
    assert example["VLLM_AUDIT_WITNESS"] == "" and example["VLLM_AUDIT_LOG_ORIGIN"] == run["log_origin"]
    for unset in ("", None):
        services, run_default = resolved(VLLM_AUDIT_LOG_ORIGIN=unset, VLLM_AUDIT_WITNESS=unset)
        assert run_default["log_origin"] == "localhost/vllm-audit" and run_default["witnesses"] == []
    services, chosen = resolved(VLLM_AUDIT_LOG_ORIGIN="audit.example.com/prod",
                                VLLM_AUDIT_WITNESS="https://w1.example/=KEY1 https://w2.example/=KEY2")
    assert chosen["log_origin"] == "audit.example.com/prod"
    assert chosen["witnesses"] == ["https://w1.example/=KEY1", "https://w2.example/=KEY2"]
    assert make_parser().parse_args(services[name]["command"]).name == "audit.example.com/prod"
