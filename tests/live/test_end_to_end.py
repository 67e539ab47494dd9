"""Live end to end: real vLLM + middleware -> exporter -> Prometheus -> Alertmanager -> webhook, and Loki.

One scenario for the module (one vLLM start), run by the ``e2e`` fixture;
each test then checks one promise on what it collected:

- vLLM 0.32 CPU build on the tiny offline model (tools/vllm_proc.py) with
  ``--enable-log-requests --enable-log-outputs --enable-force-include-usage``,
  the request logger at DEBUG and ``--middleware exporter.middleware.AuditMiddleware``;
- the exporter (``python -m exporter run``) tailing vLLM's log and the
  middleware's file, scraping vLLM, pushing to the strict Loki-protocol test
  server (tests/loki_server.py);
- the Debian ``prometheus`` and ``alertmanager`` binaries running the repo's
  own ``prometheus/`` rules and Alertmanager config, rendered for localhost
  by tools/render_stack.py (targets, 1 s scrape/evaluation, every ``for:``
  0 s except ``VllmDown``/``VllmAuditExporterDown``, 15 s: see ``FOR``;
  webhook URL). Alertmanager's routing timings are the committed ones
  (``group_wait`` 30 s for warnings, 10 s for critical, ``group_interval`` 5m).

Requests, as Open WebUI (trusted ``X-OpenWebUI-User-*`` headers), with the
OpenAI ``user`` field, with an API key: chats, a stream, a completion, an
empty answer (EOS forced by ``logit_bias``), an accepted ~400-token prompt
(below the 500-token threshold), a prompt over the 512-token context (HTTP
400) and a stream the client abandons. Then vLLM is stopped.

Nothing is skipped: a missing binary, model or venv fails with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .stack import (
    DEFAULT_MODEL_DIR, AlertStack, ExporterProcess, LokiServer, StackError, VllmServer,
    WebhookReceiver, archive_records, free_port, get_text, metric_sum, post_json, post_stream,
    require_platform, wait_until,
)

pytestmark = pytest.mark.live

MODEL = "tiny"
EOS_ID = 2  # tiny-llama's <|im_end|> (tools/make_tiny_model.py: SPECIAL_TOKENS[2])
CONTEXT = 512  # tools/vllm_proc.py --max-model-len
THRESHOLD = 500  # exporter --oversized-input-tokens
SALT = "e2e-api-key-salt"
API_KEY = "sk-e2e-0001"
KEY_USER = "key:" + hmac.new(SALT.encode(), API_KEY.encode(), hashlib.sha256).hexdigest()[:16]
ANA = {"X-OpenWebUI-User-Name": "Ana", "X-OpenWebUI-User-Email": "ana@example.org",
       "X-OpenWebUI-User-Id": "u-ana", "X-OpenWebUI-User-Role": "user",
       "X-OpenWebUI-Chat-Id": "chat-ana-1"}
EMMA = {"X-OpenWebUI-User-Name": "emma", "X-OpenWebUI-User-Id": "u-emma",
        "X-OpenWebUI-Chat-Id": "chat-emma-1"}
# Prometheus evaluates rules from its start but scrapes a target only once
# service discovery and the scrape manager have passed it on (each batches
# updates every 5 s): the first scrape comes up to ~10 s after start, and
# until then `absent(up{job="vllm"})` is true. With a shorter `for:` VllmDown
# fires and resolves at start-up, and Alertmanager keeps that group (Prometheus
# resends the resolved alert) so the real VllmDown would wait for its 5m
# group_interval. 15 s is longer than the start-up window.
FOR = ["0s", "VllmDown=15s", "VllmAuditExporterDown=15s"]
ALERT_WAIT = 90.0  # rule evaluation + Alertmanager's 30 s group_wait, with slack for 2 busy cores


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0, **extra}


@dataclass
class Sent:
    name: str
    user: str
    status: str  # the record status the request must end with
    http_status: int | None = None
    archive_id: str | None = None  # the record's request_id this request must produce
    body: object = None


@dataclass
class Run:
    tmp: Path
    vllm_addr: str = ""
    sent: list[Sent] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    loki_entries: list[tuple] = field(default_factory=list)
    loki_received: int = 0
    vllm_metrics_text: str = ""
    vllm_success_sum: float | None = None
    prom_gap: dict = field(default_factory=dict)
    empty_alerts: list = field(default_factory=list)
    oversized_alerts: list = field(default_factory=list)
    down_alert: tuple | None = None
    early_down: list = field(default_factory=list)
    stopped_at: float = 0.0
    diagnostics: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    def mark(self, what: str, t0: float) -> None:
        line = f"{time.monotonic() - t0:6.1f}s {what}"
        self.timeline.append(line)
        print(line, flush=True)


def _alerts_named(hook: WebhookReceiver, name: str, since: float = 0.0) -> list:
    return [(at, n, a) for at, n, a in hook.alerts(since)
            if a["labels"].get("alertname") == name and a.get("status") == "firing"]


def _send_requests(base: str, run: Run) -> None:
    """Empty and oversized first: their Alertmanager group_wait starts earliest."""
    sent = run.sent

    status, body = post_json(base, "/v1/chat/completions",
                             chat("Say nothing at all.", logit_bias={str(EOS_ID): 100}), EMMA)
    sent.append(Sent("empty answer (Open WebUI headers)", "emma", "completed", status,
                     body.get("id") if isinstance(body, dict) else None, body))

    over = chat(" ".join(["hello world"] * 400), user="olaf")
    status, body = post_json(base, "/v1/chat/completions", over, {"X-Request-Id": "e2e-over-context"})
    # vLLM logs nothing for a rejected request: the record keeps the middleware's id
    sent.append(Sent("prompt over the context (HTTP 400)", "olaf", "rejected", status,
                     "e2e-over-context", body))

    status, body = post_json(base, "/v1/chat/completions", chat("Hello, how are you today?"), ANA)
    sent.append(Sent("chat (Open WebUI headers)", "ana@example.org", "completed", status,
                     body.get("id") if isinstance(body, dict) else None, body))

    status, body = post_json(base, "/v1/chat/completions",
                             chat("The quick brown fox jumps over the lazy dog.", user="bob"))
    sent.append(Sent("chat (user field)", "bob", "completed", status,
                     body.get("id") if isinstance(body, dict) else None, body))

    status, chunks, err = post_stream(base, "/v1/chat/completions",
                                      chat("Please summarise the weather.", user="bob", stream=True))
    first = json.loads(chunks[0]) if chunks and chunks[0] != "[DONE]" else {}
    sent.append(Sent("stream (user field)", "bob", "completed", status, first.get("id"),
                     {"chunks": chunks, "error": err}))

    status, body = post_json(base, "/v1/chat/completions", chat("Numbers: 1 2 3"),
                             {"Authorization": f"Bearer {API_KEY}"})
    sent.append(Sent("chat (API key)", KEY_USER, "completed", status,
                     body.get("id") if isinstance(body, dict) else None, body))

    status, body = post_json(base, "/v1/completions",
                             {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8,
                              "temperature": 0, "user": "carl"},
                             {"X-Request-Id": "e2e-completion"})
    # vLLM names a completion's prompt 0 `cmpl-<X-Request-Id>-0` in its log
    sent.append(Sent("completion (user field)", "carl", "completed", status,
                     "cmpl-e2e-completion-0", body))

    # a prompt of about 400 tokens: accepted, and below the oversized threshold
    unit = "The weather in Paris is sunny; the weather in Berlin is rainy. "
    count = lambda k: post_json(base, "/tokenize", {"model": MODEL, "messages": [  # noqa: E731
        {"role": "user", "content": unit * k}]})[1]["count"]
    c10, c20 = count(10), count(20)
    k = 10 + round((400 - c10) / ((c20 - c10) / 10))
    status, body = post_json(base, "/v1/chat/completions", chat(unit * k, user="lena"))
    sent.append(Sent(f"~400-token prompt ({count(k)} tokens, accepted)", "lena", "completed", status,
                     body.get("id") if isinstance(body, dict) else None, body))

    # a stream the client abandons after 3 chunks: normally `aborted` and not
    # counted by vLLM (see _abandoned_outcome for the race). Every token forced to "a": vLLM sends no chunk for a token whose
    # text is empty (special tokens, partial UTF-8), and a random model can
    # produce only those, finishing the stream before the client leaves.
    [a_id] = post_json(base, "/tokenize", {"model": MODEL, "prompt": "a",
                                           "add_special_tokens": False})[1]["tokens"]
    status, chunks, err = post_stream(base, "/v1/chat/completions",
                                      chat("Tell me a long story.", user="dave", stream=True,
                                           max_tokens=CONTEXT - 40, ignore_eos=True,
                                           logit_bias={str(a_id): 100}),
                                      {"X-Request-Id": "e2e-abandoned"}, disconnect_after=3)
    sent.append(Sent("stream abandoned by the client", "dave", "aborted", status,
                     "chatcmpl-e2e-abandoned", {"chunks": chunks, "error": err}))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    require_platform()
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("e2e")
    run = Run(tmp)
    archive = tmp / "archive"
    middleware_file = tmp / "middleware.jsonl"
    hook = WebhookReceiver().start()
    loki = LokiServer().start()
    srv = VllmServer(
        DEFAULT_MODEL_DIR, tmp / "vllm.log",
        extra_args=["--enable-log-requests", "--enable-log-outputs", "--enable-force-include-usage"],
        env={"VLLM_AUDIT_MIDDLEWARE_FILE": str(middleware_file), "VLLM_AUDIT_API_KEY_SALT": SALT,
             "VLLM_AUDIT_MIDDLEWARE_FSYNC_MS": "100"},
        request_logger_debug=True, middleware="exporter.middleware.AuditMiddleware")
    exporter = stack = None
    try:
        try:
            srv.start()
        except Exception as exc:  # VllmStartError, OSError: the platform cannot run vLLM
            pytest.fail(f"the real vLLM CPU server did not start: {exc}")
        run.vllm_addr = f"127.0.0.1:{srv.port}"
        run.mark(f"vLLM healthy at {srv.base_url}", t0)

        exporter = ExporterProcess(
            ["--log", str(srv.log_path), "--log", str(middleware_file), "--from-start",
             "--archive-dir", str(archive), "--vllm-url", srv.base_url, "--scrape-interval", "1",
             "--model", MODEL, "--loki-url", loki.url, "--merge-grace", "1",
             "--oversized-input-tokens", str(THRESHOLD)],
            f"127.0.0.1:{free_port()}", tmp / "exporter.log")
        exporter.wait_ready()
        stack = AlertStack(tmp / "stack", {"vllm:8000": run.vllm_addr,
                                           "exporter:9400": exporter.listen},
                           webhook_url=hook.url, for_overrides=FOR)
        try:
            stack.start()
        except StackError as exc:
            pytest.fail(f"Prometheus/Alertmanager did not start: {exc}")
        wait_until(lambda: len(stack.query('up{job=~"vllm|vllm-audit-exporter"} == 1')) == 2, 30,
                   "Prometheus scraping vLLM and the exporter")
        run.mark("exporter, Prometheus, Alertmanager up; both targets scraped", t0)

        _send_requests(srv.base_url, run)
        run.mark(f"{len(run.sent)} requests sent", t0)

        want_ids = {s.archive_id for s in run.sent}
        wait_until(lambda: {r["request_id"] for r in archive_records(archive)} >= want_ids
                   and len(archive_records(archive)) >= len(run.sent), 60,
                   lambda: f"archive records for {sorted(map(str, want_ids))}"
                   f" (have {[r['request_id'] for r in archive_records(archive)]})")
        time.sleep(2)  # a late duplicate would show up by now (merge-grace 1 s)
        run.records = archive_records(archive)
        run.mark(f"archive holds {len(run.records)} records", t0)

        wait_until(lambda: len(loki.entries()) >= len(run.records), 30, "Loki entries")
        run.mark(f"Loki holds {len(loki.entries())} entries", t0)

        # completeness, just before stopping vLLM: vLLM's own counter, read
        # directly, through the exporter and through Prometheus
        run.vllm_metrics_text = get_text(srv.base_url + "/metrics")
        run.vllm_success_sum = metric_sum(run.vllm_metrics_text, "vllm:request_success_total")
        want = run.vllm_success_sum

        def prom_agrees():
            got = {
                "prometheus sum(vllm:request_success_total)": 'sum(vllm:request_success_total{job="vllm"})',
                "exporter vllm_audit_vllm_requests_finished": 'sum(vllm_audit_vllm_requests_finished)',
                "audited completed": 'sum(vllm_audit_requests_total{status="completed"})',
                "gap": 'sum(vllm_audit_vllm_requests_finished) - sum(vllm_audit_requests_total{status="completed"})',
            }
            vals = {k: (float(r[0]["value"][1]) if (r := stack.query(q)) else None) for k, q in got.items()}
            run.prom_gap = vals
            return all(v == want for k, v in vals.items() if k != "gap") and vals["gap"] == 0
        try:
            wait_until(prom_agrees, 20, "Prometheus to agree on the completeness figures")
        except pytest.fail.Exception as exc:
            run.diagnostics.append(str(exc))
        run.mark(f"vllm:request_success_total = {want}; Prometheus: {run.prom_gap}", t0)

        try:
            wait_until(lambda: _alerts_named(hook, "VllmEmptyResponses")
                       and _alerts_named(hook, "VllmOversizedInput"), ALERT_WAIT,
                       lambda: "VllmEmptyResponses and VllmOversizedInput notifications at the webhook"
                       f" (Alertmanager: {[a['labels'] for a in stack.alertmanager_alerts()]};"
                       f" Prometheus: {[a['metric'] for a in stack.query('ALERTS')]})")
        except pytest.fail.Exception as exc:  # reported by the alert tests; go on with VllmDown
            run.diagnostics.append(str(exc))
        run.mark("VllmEmptyResponses / VllmOversizedInput notified: "
                 f"{bool(_alerts_named(hook, 'VllmEmptyResponses'))} / "
                 f"{bool(_alerts_named(hook, 'VllmOversizedInput'))}", t0)
        run.early_down = _alerts_named(hook, "VllmDown") + [
            r["metric"] for r in stack.query('max_over_time(ALERTS{alertname="VllmDown", alertstate="firing"}[10m])')]

        run.stopped_at = time.time()
        srv.stop()
        run.mark("vLLM stopped", t0)
        got = hook.wait_for(lambda a, n: a["labels"].get("alertname") == "VllmDown"
                            and a.get("status") == "firing", 60, since=run.stopped_at)
        run.down_alert = got
        if got is None:
            run.diagnostics.append(f"no VllmDown; Prometheus ALERTS: {stack.query('ALERTS')}")
        run.mark(f"VllmDown notified: {got is not None}", t0)

        # Loki and the archive once more, after everything (nothing doubled late)
        time.sleep(1.5)
        run.records = archive_records(archive)
        run.loki_entries = loki.entries()
        run.loki_received = loki.received
        run.empty_alerts = _alerts_named(hook, "VllmEmptyResponses")
        run.oversized_alerts = _alerts_named(hook, "VllmOversizedInput")
        yield run
    finally:
        srv.stop()
        if stack is not None:
            stack.stop()
        if exporter is not None:
            exporter.stop()
        loki.stop()
        hook.stop()
        print("\n".join(["e2e timeline:", *run.timeline, f"work dir: {tmp}"]), flush=True)


# --------------------------------------------------------------------------- requests as sent

def test_requests_got_the_http_answers_they_should(e2e):
    got = {s.name: s.http_status for s in e2e.sent}
    want = {s.name: 400 if s.status == "rejected" else 200 for s in e2e.sent}
    assert got == want, [(s.name, s.http_status, str(s.body)[:300]) for s in e2e.sent]
    [empty] = [s for s in e2e.sent if s.name.startswith("empty")]
    assert empty.body["choices"][0]["message"]["content"] == "", empty.body
    [over] = [s for s in e2e.sent if s.status == "rejected"]
    assert "context" in json.dumps(over.body).lower() or "maximum" in json.dumps(over.body).lower()
    [long] = [s for s in e2e.sent if s.user == "lena"]
    assert 300 <= long.body["usage"]["prompt_tokens"] <= THRESHOLD, long.body["usage"]


# --------------------------------------------------------------------------- archive

def test_archive_has_every_request_exactly_once(e2e):
    ids = [r["request_id"] for r in e2e.records]
    assert sorted(ids) == sorted(s.archive_id for s in e2e.sent), (ids, [s.archive_id for s in e2e.sent])


def _abandoned_outcome(e2e) -> str:
    """What vLLM itself logged for the stream the client dropped. On 2 cores
    the tiny model can finish all its tokens before vLLM notices the closed
    socket (seen once: 472 tokens in 1.2 s, `(streaming complete)`, no abort);
    then the true record is `completed`, otherwise `aborted`."""
    log = (e2e.tmp / "vllm.log").read_text(errors="replace")
    aborted = ("Request chatcmpl-e2e-abandoned aborted." in log
               or re.search(r"Aborted request\(s\) [^\n]*chatcmpl-e2e-abandoned", log) is not None)
    complete = "Generated response chatcmpl-e2e-abandoned (streaming complete)" in log
    assert aborted != complete, "vLLM logged neither or both an abort and a complete stream"
    return "aborted" if aborted else "completed"


def test_archive_records_name_the_user_and_status(e2e):
    by_id = {r["request_id"]: r for r in e2e.records}
    got = {s.name: (by_id.get(s.archive_id, {}).get("user"), by_id.get(s.archive_id, {}).get("status"),
                    by_id.get(s.archive_id, {}).get("model")) for s in e2e.sent}
    want = {s.name: (s.user, s.status, MODEL) for s in e2e.sent}
    want["stream abandoned by the client"] = ("dave", _abandoned_outcome(e2e), MODEL)
    assert got == want
    assert {r["request_id"] for r in e2e.records if r["empty_response"]} == \
        {s.archive_id for s in e2e.sent if s.name.startswith("empty")}
    assert {r["request_id"] for r in e2e.records if "oversized_input" in r["flags"]} == {"e2e-over-context"}
    assert all(r["sources"] and "middleware" in r["sources"] for r in e2e.records)


def test_archive_chain_verifies(e2e):
    from exporter.compliance.verify import verify_main
    assert verify_main(str(e2e.tmp / "archive")) == 0


# --------------------------------------------------------------------------- Loki

def test_loki_has_every_record_exactly_once_labelled_by_user(e2e):
    got = {}
    for labels, _ts, line, _sm in e2e.loki_entries:
        rec = json.loads(line)
        got.setdefault(rec["request_id"], []).append((labels.get("user"), labels.get("model"), rec["user"]))
    # The stream label is the user as --user-label-mode shows it (default
    # pseudonymous: an e-mail address is u:<keyed hash> with the key the
    # exporter keeps in its state directory); the line keeps the record's user.
    from exporter.labels import UserLabels, user_label_key
    shown = UserLabels(key=user_label_key(None, e2e.tmp / "archive" / ".state")).label
    want = {r["request_id"]: [(shown(r["user"]), MODEL, r["user"])] for r in e2e.records}
    assert got == want
    assert any(label.startswith("u:") and "@" in user for v in got.values() for label, _, user in v)
    assert e2e.loki_received == len(e2e.records), "every record pushed once (no resend was needed)"


# --------------------------------------------------------------------------- completeness

def test_audit_completeness_gap_is_zero(e2e):
    """vLLM counts only requests its engine finished: not the rejected one, nor the
    abandoned one when vLLM aborted it (if it finished first, it is counted and
    its record is `completed`)."""
    completed = sum(1 for r in e2e.records if r["status"] == "completed")
    by_reason = {line.split('finished_reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                 for line in e2e.vllm_metrics_text.splitlines()
                 if line.startswith("vllm:request_success_total{")}
    assert e2e.vllm_success_sum == completed, (by_reason, completed)
    assert e2e.vllm_success_sum - completed == 0
    assert by_reason.get("abort", 0) == 0, by_reason
    assert e2e.prom_gap == {"prometheus sum(vllm:request_success_total)": completed,
                            "exporter vllm_audit_vllm_requests_finished": completed,
                            "audited completed": completed, "gap": 0}, e2e.diagnostics


# --------------------------------------------------------------------------- alerts

def _check_rendered(alert: dict) -> None:
    for key, value in alert["annotations"].items():
        assert "{{" not in value and "<no value>" not in value, (key, value)
    assert alert["annotations"]["runbook_url"].startswith("https://")


def test_empty_response_notifies_vllm_empty_responses_naming_user_and_model(e2e):
    assert e2e.empty_alerts, f"no VllmEmptyResponses notification: {e2e.diagnostics}"
    users = {a["labels"].get("user") for _, _, a in e2e.empty_alerts}
    assert users == {"emma"}, users
    _, notification, alert = e2e.empty_alerts[0]
    assert notification["receiver"] == "default" and notification["status"] == "firing"
    assert notification["groupLabels"] == {"alertname": "VllmEmptyResponses", "model": MODEL}
    labels = alert["labels"]
    assert (labels["alertname"], labels["model"], labels["user"], labels["severity"],
            labels["vllm_instance"]) == ("VllmEmptyResponses", MODEL, "emma", "warning", e2e.vllm_addr)
    _check_rendered(alert)
    assert alert["annotations"]["summary"] == "vLLM returned empty responses."
    assert alert["annotations"]["description"] == \
        f"1 empty responses from model {MODEL} to user emma in the last 10 minutes."
    assert "var-user=emma" in alert["annotations"]["dashboard_url"]


def test_over_long_prompt_notifies_vllm_oversized_input(e2e):
    assert e2e.oversized_alerts, f"no VllmOversizedInput notification: {e2e.diagnostics}"
    got = {(a["labels"].get("user"), a["labels"].get("status")) for _, _, a in e2e.oversized_alerts}
    assert got == {("olaf", "rejected")}, got  # the accepted ~400-token prompt is not oversized
    _, notification, alert = e2e.oversized_alerts[0]
    assert notification["receiver"] == "default" and notification["status"] == "firing"
    labels = alert["labels"]
    assert (labels["alertname"], labels["model"], labels["user"], labels["severity"],
            labels["vllm_instance"]) == ("VllmOversizedInput", MODEL, "olaf", "warning", e2e.vllm_addr)
    _check_rendered(alert)
    assert alert["annotations"]["summary"] == "Prompts above the size threshold were sent."
    assert alert["annotations"]["description"] == (
        f"1 prompts above the oversized-input threshold were sent to model {MODEL} by user olaf "
        "in the last 10 minutes (rejected).")


def test_stopping_vllm_notifies_vllm_down(e2e):
    assert not e2e.early_down, f"VllmDown notified while vLLM was up: {e2e.early_down}"
    assert e2e.down_alert is not None, e2e.diagnostics
    at, notification, alert = e2e.down_alert
    assert at >= e2e.stopped_at
    assert notification["receiver"] == "critical" and notification["status"] == "firing"
    labels = alert["labels"]
    assert (labels["alertname"], labels["severity"], labels["vllm_instance"]) == \
        ("VllmDown", "critical", e2e.vllm_addr)
    _check_rendered(alert)
    assert alert["annotations"]["summary"] == "vLLM is down."
    assert e2e.vllm_addr in alert["annotations"]["description"]
