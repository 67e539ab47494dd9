"""alert-log, the stack's default Alertmanager receiver: prints every alert,
keeps the JSON, forwards to a webhook, Slack or e-mail; a failed forward is a
502 so Alertmanager retries and counts it (alertmanager_notifications_failed_total)."""

from __future__ import annotations

import io
import json
import socketserver
import threading
import urllib.error
import urllib.request

import pytest

from exporter.alertlog import AlertLog, Targets, serve
from tools.alert_stack import WebhookReceiver

NOTIFICATION = {
    "version": "4", "status": "firing", "receiver": "default", "groupKey": "{}:{alertname=\"VllmEmptyResponses\"}",
    "alerts": [{"status": "firing", "labels": {"alertname": "VllmEmptyResponses", "severity": "warning",
                                               "model": "tiny", "user": "alice@example.org"},
                "annotations": {"summary": "vLLM returned empty responses."}}],
}


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib.send_message: keeps each DATA body."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.strip().upper()
            if cmd.startswith((b"EHLO", b"HELO")):
                self.wfile.write(b"250 test\r\n")
            elif cmd == b"DATA":
                self.wfile.write(b"354 go\r\n")
                body = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    body.append(data)
                self.server.messages.append(b"".join(body).decode())
                self.wfile.write(b"250 ok\r\n")
            elif cmd == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    server.daemon_threads = True
    server.messages = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def running(log: AlertLog):
    httpd = serve(log, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/vllm-audit"


def test_default_prints_one_line_per_alert_and_keeps_the_json(tmp_path):
    out = io.StringIO()
    httpd, url = running(AlertLog(Targets(), file=str(tmp_path / "n.jsonl"), out=out))
    try:
        assert post(url, NOTIFICATION) == 200
    finally:
        httpd.shutdown()
    assert out.getvalue() == ("ALERT firing VllmEmptyResponses severity=warning model=tiny "
                              "user=alice@example.org :: vLLM returned empty responses.\n")
    kept = json.loads((tmp_path / "n.jsonl").read_text())
    assert kept["alerts"] == NOTIFICATION["alerts"] and kept["received_unix"] > 0


def test_forwards_to_webhook_slack_and_email(smtp):
    with WebhookReceiver(path="/hook") as hook, WebhookReceiver(path="/slack") as slack:
        targets = Targets(webhook_url=hook.url, slack_webhook_url=slack.url, email_to="oncall@example.org",
                          smtp_host=f"127.0.0.1:{smtp.server_address[1]}")
        httpd, url = running(AlertLog(targets, out=io.StringIO()))
        try:
            assert post(url, NOTIFICATION) == 200
        finally:
            httpd.shutdown()
        assert hook.notifications()[0][2] == NOTIFICATION  # unchanged
        assert "VllmEmptyResponses" in slack.notifications()[0][2]["text"]
    assert "To: oncall@example.org" in smtp.messages[0]
    assert "ALERT firing VllmEmptyResponses" in smtp.messages[0]


def test_failed_forward_is_logged_first_and_answered_502():
    out, err = io.StringIO(), io.StringIO()
    targets = Targets(webhook_url="http://127.0.0.1:9/nothing-listens", timeout=2)
    httpd, url = running(AlertLog(targets, out=out, err=err))
    try:
        assert post(url, NOTIFICATION) == 502
    finally:
        httpd.shutdown()
    assert "ALERT firing VllmEmptyResponses" in out.getvalue()
    assert "forward failed: webhook: " in err.getvalue()


def test_bad_json_is_400():
    httpd, url = running(AlertLog(Targets(), out=io.StringIO()))
    try:
        req = urllib.request.Request(url, data=b"[", method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 400
    finally:
        httpd.shutdown()


def test_settings_validate_the_targets_and_take_them_from_the_environment():
    from exporter.cli import make_parser
    from exporter.settings import SettingsError, alert_log_options
    ns = make_parser().parse_args(["alert-log"])
    opts, password = alert_log_options(ns, {"VLLM_AUDIT_ALERT_EMAIL_TO": "a@example.org",
                                            "VLLM_AUDIT_ALERT_WEBHOOK_URL": ""})
    assert opts["alert_email_to"] == "a@example.org" and opts["alert_webhook_url"] is None
    with pytest.raises(SettingsError, match="--alert-slack-webhook-url"):
        alert_log_options(ns, {"VLLM_AUDIT_ALERT_SLACK_WEBHOOK_URL": "hooks.slack.com/x"})
