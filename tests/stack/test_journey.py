"""The user's journey, on compose.yaml itself (issue 12).

`.env` filled the way `.env.example` says (every "(required)" secret set; the
model set to the offline tiny model, as a user sets VLLM_MODEL), then the
stack runner's "up" of compose.yaml + compose.cpu.yaml (tests/stack/runner.py:
every service as the real program with what compose gives it). Then:

1. the idle fresh stack is healthy (exporter included, no middleware.jsonl yet);
2. two Open WebUI users chat — the admin signs up, adds the second user with
   ``/api/v1/auths/add`` — each a plain and a streaming chat;
3. the archive holds exactly one completed record per chat, ``user`` = that
   person's Open WebUI e-mail (from Open WebUI's signed token, verified by the
   middleware: ``identity_source`` jwt);
4. Loki (stand-in) has each record once, in the stream labelled by that user;
5. Prometheus has per-user token series for both;
6. an empty answer fires ``VllmEmptyResponses`` and Alertmanager delivers it
   to the documented default receiver (``docker compose logs alert-log``);
7. vLLM's stdout/stderr (``docker logs vllm``) holds no prompt or output text
   (which ``/logs/vllm.log`` does hold);
8. the exporter's compose healthcheck passed every time from start to end;
   vLLM's log rotates (VLLM_LOG_MAX_BYTES set small) and the exporter, as
   10001:0 on the shared volume, deletes every generation it followed once
   read and committed (``--prune-rotated``), none failing;
9. Grafana (not run): its datasources reach the running services and every
   dashboard query evaluates on the running Prometheus;
10. the exporter signed checkpoints with the key the signing-key service made
    (signing.pub printed in its log): ``vllm-audit-exporter verify ARCHIVE
    --public-key signing.pub`` passes with that public key alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.live.stack import archive_records
from tests.stack.compose import parse_dotenv
from tests.stack.runner import OWUI_VENV, REPO, TINY_MODEL, VLLM_VENV, Stack, make_work_dir

pytestmark = pytest.mark.live

REQUIRED = ("VLLM_AUDIT_API_KEY_SALT", "VLLM_AUDIT_OPENWEBUI_JWT_SECRET", "VLLM_AUDIT_HMAC_KEY",
            "WEBUI_SECRET_KEY", "GRAFANA_ADMIN_PASSWORD")
MODEL = "tiny"
EOS_ID = 2  # tiny-llama's <|im_end|> (tools/make_tiny_model.py)
PASSWORD = "Journey-passw0rd!"
ALERT_WAIT = 240.0  # 15 s scrape + 15 s rule evaluation + 30 s group_wait, on 2 busy cores
TAG = secrets.token_hex(4)
PROMPTS = {  # (user, stream) -> a prompt no log line could hold by chance
    ("admin", False): f"journey plain question from the admin {TAG}",
    ("admin", True): f"journey streaming question from the admin {TAG}",
    ("ana", False): f"journey plain question from ana {TAG}",
    ("ana", True): f"journey streaming question from ana {TAG}",
}
EMAILS = {"admin": "admin@example.org", "ana": "ana@example.org"}


LOG_MAX_BYTES = 16384


def exporter_samples(stack: Stack) -> dict[tuple, float]:
    """The exporter's own /metrics: {(name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    status, body = stack.get("exporter", 9400, "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body if isinstance(body, str) else body.decode())
            for s in fam.samples}


def pruned(stack: Stack) -> dict | None:
    """Once every rotation the exporter followed in vllm.log has been deleted."""
    got = exporter_samples(stack)
    src = (("source", "/logs/vllm.log"),)
    facts = {"rotations": got.get(("vllm_audit_rotations_total", src), 0),
             "deleted": got.get(("vllm_audit_rotated_files_deleted_total", src), 0),
             "failures": {dict(k[1])["reason"]: v for k, v in got.items()
                          if k[0] == "vllm_audit_rotated_file_delete_failures_total" and v}}
    return facts if facts["rotations"] and facts["deleted"] >= facts["rotations"] else None


def write_env(path: Path) -> dict[str, str]:
    """cp .env.example .env, fill in every (required) value, choose the model."""
    text = (REPO / ".env.example").read_text()
    for var in REQUIRED:
        text = text.replace(f"\n{var}=\n", f"\n{var}={secrets.token_hex(32)}\n")
    # what a user changes for a small CPU model
    for var, value in (("VLLM_MODEL", str(TINY_MODEL)), ("VLLM_SERVED_MODEL_NAME", MODEL),
                       ("VLLM_MAX_MODEL_LEN", "512"), ("VLLM_CPU_KVCACHE_SPACE", "1"),
                       # small generations: the journey rotates and prunes vllm.log
                       ("VLLM_LOG_MAX_BYTES", str(LOG_MAX_BYTES))):
        text = "\n".join(f"{var}={value}" if line.startswith(f"{var}=") else line
                         for line in text.splitlines()) + "\n"
    path.write_text(text)
    return parse_dotenv(text)


# --------------------------------------------------------------------------- Open WebUI, from inside

def _req(method, url, body=None, token=None, timeout=180):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _stream(url, body, token, timeout=180):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text, ids = [], set()
    with opener.open(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("id"):
                ids.add(chunk["id"])
            for choice in chunk.get("choices") or ():
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), ids


def _wait(fn, timeout, what, interval=1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def prom_query(stack: Stack, expr: str) -> dict:
    status, body = stack.get("prometheus", 9090, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)


def per_user_tokens(stack: Stack) -> dict | None:
    result = prom_query(stack, "sum by (user) (vllm_audit_prompt_tokens_total)")["data"]["result"]
    return {r["metric"].get("user"): float(r["value"][1]) for r in result} if len(result) >= 2 else None


def loki_streams(stack: Stack, want: int) -> list | None:
    q = urllib.parse.urlencode({"query": '{service_name="vllm-audit"}', "limit": "1000"})
    result = json.loads(stack.get("loki", 3100, "/loki/api/v1/query_range?" + q)[1])["data"]["result"]
    return result if sum(len(s["values"]) for s in result) >= want else None


@pytest.fixture(scope="module")
def journey():
    missing = [p for p in (VLLM_VENV / "bin" / "python", OWUI_VENV / "bin" / "open-webui",
                           TINY_MODEL / "config.json") if not p.exists()]
    missing += [b for b in ("prometheus", "prometheus-alertmanager", "unshare", "nsenter")
                if not shutil.which(b)]
    if missing:
        pytest.fail(f"the stack journey cannot run: missing {missing} (bash tools/setup.sh --live)")
    work = make_work_dir()
    env = write_env(work / ".env")
    stack = Stack(work, files=[REPO / "compose.yaml", REPO / "compose.cpu.yaml"], env=env)
    facts: dict = {"stack": stack, "work": work, "env": env, "timings": {}}
    t0 = time.monotonic()
    try:
        stack.up(timeout=900)
        facts["timings"]["up"] = time.monotonic() - t0
        facts["idle_health"] = stack.get("exporter", 9400, "/health")
        owui = stack.url("open-webui", 8080, "")
        admin = stack.call(_req, "POST", owui + "/api/v1/auths/signup",
                           {"name": "Admin", "email": EMAILS["admin"], "password": PASSWORD})
        stack.call(_req, "POST", owui + "/api/v1/auths/add",
                   {"name": "Ana", "email": EMAILS["ana"], "password": PASSWORD, "role": "user"},
                   admin["token"])
        ana = stack.call(_req, "POST", owui + "/api/v1/auths/signin",
                         {"email": EMAILS["ana"], "password": PASSWORD})
        facts["roles"] = {"admin": admin.get("role"), "ana": ana.get("role")}
        tokens = {"admin": admin["token"], "ana": ana["token"]}
        _wait(lambda: MODEL in [m["id"] for m in stack.call(_req, "GET", owui + "/api/models", None,
                                                            tokens["ana"])["data"]],
              120, "Open WebUI to list vLLM's model for the second user")
        chats = {}
        for (who, stream), prompt in PROMPTS.items():
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                    "stream": stream, "max_tokens": 12}
            if stream:
                text, ids = stack.call(_stream, owui + "/api/chat/completions", body, tokens[who])
            else:
                out = stack.call(_req, "POST", owui + "/api/chat/completions", body, tokens[who])
                text, ids = out["choices"][0]["message"]["content"], {out["id"]}
            chats[(who, stream)] = {"text": text, "ids": ids, "prompt": prompt}
        facts["chats"] = chats
        archive = stack.volume_path("audit-archive")
        facts["records"] = _wait(lambda: (lambda r: r if len(r) >= len(PROMPTS) else None)(
            archive_records(archive)), 60, "a record per chat in the archive")
        # the empty answer: EOS forced, through Open WebUI as ana
        t_empty = time.time()
        empty = stack.call(_req, "POST", owui + "/api/chat/completions",
                           {"model": MODEL, "messages": [{"role": "user", "content": f"Say nothing {TAG}."}],
                            "max_tokens": 8, "logit_bias": {str(EOS_ID): 100}}, tokens["ana"])
        facts["empty_answer"] = empty["choices"][0]["message"]["content"]
        facts["alert_line"] = _wait(
            lambda: next((line for line in stack.logs("alert-log").splitlines()
                          if line.startswith("ALERT firing VllmEmptyResponses")), None),
            ALERT_WAIT, "VllmEmptyResponses in `docker compose logs alert-log`", interval=2)
        facts["timings"]["alert"] = time.time() - t_empty
        facts["records"] = _wait(lambda: (lambda r: r if len(r) >= len(PROMPTS) + 1 else None)(
            archive_records(archive)), 60, "the empty answer's record")
        from exporter.labels import UserLabels, user_label_key
        from exporter.secrets import read_secret
        # the exporter's pseudonym key derives from its HMAC key (the compose secret)
        hmac_key = read_secret(work / "secrets" / "audit_hmac_key", "audit_hmac_key")
        facts["shown"] = UserLabels(key=user_label_key(hmac_key, archive / ".state")).label
        facts["prom_tokens"] = _wait(lambda: per_user_tokens(stack), 120,
                                     "per-user token series in Prometheus", interval=2)
        facts["loki"] = _wait(lambda: loki_streams(stack, len(facts["records"])), 60, "every record in Loki")
        facts["end_health"] = stack.get("exporter", 9400, "/health")
        facts["pruned"] = _wait(lambda: pruned(stack), 60, "every followed vllm.log.N deleted")
        facts["log_volume"] = sorted(os.listdir(stack.volume_path("vllm-logs")))
        facts["log_volume_mode"] = os.stat(stack.volume_path("vllm-logs")).st_mode & 0o777
        print("journey log pruning:", facts["pruned"], "left:", facts["log_volume"])
        facts["vllm_stdout"] = stack.logs("vllm")
        facts["vllm_log_file"] = (stack.volume_path("vllm-logs") / "vllm.log").read_text(errors="replace")
        facts["exporter_health"] = list(stack.services["exporter"].health.history)
        # 10. a compliance officer's check, with signing.pub only (copied off
        # the host as the README says), after `docker compose stop exporter`
        # (its shutdown checkpoint covers every record)
        stack.services["exporter"].stop()
        facts["signing_log"] = stack.logs("signing-key")
        keys = stack.volume_path("audit-signing-key")
        facts["key_stat"] = (keys / "signing.key").stat()
        officer = work / "officer"
        officer.mkdir()
        shutil.copy(keys / "signing.pub", officer / "signing.pub")
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
        clean_env["PYTHONPATH"] = str(REPO)  # this checkout's exporter, whatever the venv points at
        facts["verify"] = subprocess.run(
            [sys.executable, "-m", "exporter", "verify", str(archive), "--public-key",
             str(officer / "signing.pub"), "--format", "json"],
            capture_output=True, text=True, cwd=officer, env=clean_env, timeout=300)
        facts["signing_pub"] = (officer / "signing.pub").read_text().strip()
        facts["records_at_verify"] = len(archive_records(archive))
        facts["timings"]["total"] = time.monotonic() - t0
        print("journey timings (s):", {k: round(v, 1) for k, v in facts["timings"].items()})
        yield facts
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)


def test_idle_fresh_stack_is_healthy(journey):
    status, body = journey["idle_health"]
    report = json.loads(body)
    assert status == 200, report["problems"]
    assert report["sources"]["/logs/middleware.jsonl"]["waiting"] is True
    for name, svc in journey["stack"].services.items():
        assert svc.health.status == "healthy" or not svc.check, name
    assert set(journey["stack"].not_started) == {"grafana"}


def test_admin_signed_up_and_added_the_second_user(journey):
    assert journey["roles"] == {"admin": "admin", "ana": "user"}


def test_exactly_one_completed_record_per_chat_with_the_users_email(journey):
    records = journey["records"]
    for (who, stream), chat in journey["chats"].items():
        mine = [r for r in records if chat["prompt"] in (r.get("prompt") or "")]
        assert len(mine) == 1, (who, stream, len(mine))
        rec = mine[0]
        assert rec["status"] == "completed" and rec["user"] == EMAILS[who], rec
        assert rec["identity_source"] == "jwt", rec  # Open WebUI's signed token, verified
        assert bool(rec["stream"]) is stream
    assert len(records) == len(PROMPTS) + 1  # + the empty answer, nothing doubled


def test_loki_lines_are_labelled_by_their_user(journey):
    shown = journey["shown"]
    got = {}
    for stream in journey["loki"]:
        for _ts, line in stream["values"]:
            rec = json.loads(line)
            got.setdefault(rec["request_id"], []).append((stream["stream"].get("user"), rec["user"]))
    want = {r["request_id"]: [(shown(r["user"]), r["user"])] for r in journey["records"]}
    assert got == want
    assert shown(EMAILS["admin"]) != shown(EMAILS["ana"])


def test_prometheus_has_per_user_token_series(journey):
    shown = journey["shown"]
    tokens = journey["prom_tokens"]
    for email in EMAILS.values():
        assert tokens.get(shown(email), 0) > 0, (email, tokens)


def test_empty_answer_fires_vllm_empty_responses_and_reaches_the_default_receiver(journey):
    assert journey["empty_answer"] == ""
    line = journey["alert_line"]
    assert f"user={journey['shown'](EMAILS['ana'])}" in line and f"model={MODEL}" in line, line
    kept = (journey["stack"].volume_path("alert-log") / "notifications.jsonl").read_text()
    assert "VllmEmptyResponses" in kept


def test_vllm_stdout_holds_no_prompt_or_output_text(journey):
    stdout, logfile = journey["vllm_stdout"], journey["vllm_log_file"]
    assert "Avg prompt throughput" in stdout or "Starting vLLM" in stdout, "stdout was captured"
    for chat in journey["chats"].values():
        # the exporter's file had them (unless in a generation it has read
        # and deleted since: the journey rotates vllm.log every 16 KiB) ...
        assert chat["prompt"] in logfile or journey["pruned"]["deleted"] > 0
        assert chat["prompt"] not in stdout  # ... docker logs does not
        if len(chat["text"].strip()) >= 12:
            assert chat["text"] not in stdout


def test_the_exporter_deletes_the_rotated_logs_it_has_read(journey):
    facts = journey["pruned"]
    assert facts["deleted"] == facts["rotations"] > 0 and not facts["failures"], facts
    assert journey["log_volume_mode"] == 0o770  # dirMode: group 0 (the exporter) may delete
    assert "vllm.log" in journey["log_volume"], journey["log_volume"]  # never the live file


def test_exporter_healthy_from_start_to_end(journey):
    history = journey["exporter_health"]
    assert len(history) >= 3, history
    failed = [(t, out) for t, ok, out in history if not ok]
    assert not failed, failed
    assert journey["end_health"][0] == 200


def test_grafana_datasources_reach_the_services_and_dashboard_queries_evaluate(journey):
    stack = journey["stack"]
    sources = yaml.safe_load((REPO / "grafana/provisioning/datasources/datasources.yml").read_text())
    ready = {"prometheus": "/-/ready", "loki": "/ready", "alertmanager": "/-/ready"}
    for ds in sources["datasources"]:
        parts = urllib.parse.urlsplit(ds["url"])
        status, _ = stack.get(parts.hostname, parts.port, ready[parts.hostname])
        assert status == 200, ds
    from tests.test_stack_promql_live import expressions
    exprs = {k: v for k, v in expressions().items() if ".json:" in k}
    assert exprs
    for name, expr in exprs.items():
        result = prom_query(stack, expr)
        assert result["status"] == "success", (name, result.get("error"))


def test_archive_verifies_with_the_public_key_alone(journey):
    result = journey["verify"]
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == [], report
    records = journey["records_at_verify"]
    assert records >= len(journey["records"]) > 0
    assert report["records"] == report["tree_size"] == report["signed_size"] == records, report
    assert report["checkpoints"] >= 2 and report["epochs"][0]["key"] == journey["signing_pub"], report
    assert journey["signing_pub"] in journey["signing_log"].splitlines()  # printed for the operator
    key = journey["key_stat"]
    assert (key.st_uid, key.st_mode & 0o777) == (10001, 0o600)
