"""``vllm-audit-exporter alert-log``: the stack's default Alertmanager receiver.

Alertmanager's receivers in ``prometheus/alertmanager.yml`` post their
webhook JSON here (compose service ``alert-log``), so the shipped defaults
reach someone: every notification is printed as one line per alert on
stdout (``docker compose logs -f alert-log``) and, with ``--alert-log-file``,
appended as JSON to a file. One setting each then also forwards it:

- ``--alert-webhook-url`` (env ``VLLM_AUDIT_ALERT_WEBHOOK_URL``): the
  notification JSON as Alertmanager sent it, POSTed unchanged;
- ``--alert-slack-webhook-url``: a Slack incoming-webhook message;
- ``--alert-email-to``: an e-mail through ``--alert-smtp-host``.

Rules:
- The local line is written first, always: a broken forward never hides an
  alert from the log.
- Any forward that fails makes the answer 502, so Alertmanager retries the
  notification and counts ``alertmanager_notifications_failed_total``, which
  the ``VllmAuditNotificationsFailing`` alert watches (a retry prints the
  notification again; each line carries Alertmanager's ``groupKey``).
- Standard library only; no state besides the optional file.
"""

from __future__ import annotations

import json
import smtplib
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Targets:
    webhook_url: str | None = None
    slack_webhook_url: str | None = None
    email_to: str | None = None
    smtp_host: str = "localhost:25"
    smtp_from: str = "vllm-audit@localhost"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    timeout: float = 10.0

    def names(self) -> list[str]:
        return [n for n, v in (("webhook", self.webhook_url), ("slack", self.slack_webhook_url),
                               ("email", self.email_to)) if v]


def summary_lines(body: dict) -> list[str]:
    """One line per alert: status, name, severity, the grouping labels, the summary."""
    out = []
    for alert in body.get("alerts") or []:
        labels = dict(alert.get("labels") or {})
        name = labels.pop("alertname", "?")
        severity = labels.pop("severity", "?")
        shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        summary = (alert.get("annotations") or {}).get("summary", "")
        out.append(f"ALERT {alert.get('status', body.get('status', '?'))} {name} "
                   f"severity={severity} {shown} :: {summary}".rstrip(" :"))
    return out


def _post(url: str, payload: dict, timeout: float) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def _email(t: Targets, body: dict, lines: list[str]) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"[{str(body.get('status', '')).upper()}] " + (lines[0] if lines else "alert")
    msg["From"], msg["To"] = t.smtp_from, t.email_to
    msg.set_content("\n".join(lines) + "\n")
    host, _, port = t.smtp_host.rpartition(":")
    with smtplib.SMTP(host or t.smtp_host, int(port or 25), timeout=t.timeout) as smtp:
        if t.smtp_starttls:
            smtp.starttls()
        if t.smtp_username:
            smtp.login(t.smtp_username, t.smtp_password or "")
        smtp.send_message(msg)


def forward(t: Targets, body: dict, lines: list[str]) -> list[str]:
    """Send to every configured target; the failures as ``target: error`` strings."""
    failed = []
    for name in t.names():
        try:
            if name == "webhook":
                _post(t.webhook_url, body, t.timeout)
            elif name == "slack":
                _post(t.slack_webhook_url, {"text": "\n".join(lines)}, t.timeout)
            else:
                _email(t, body, lines)
        except Exception as exc:  # every failure is reported, none stops the others
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


class AlertLog:
    def __init__(self, targets: Targets, file: str | None = None, out=None, err=None):
        self.targets, self.file = targets, file
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self._lock = threading.Lock()

    def handle(self, body: dict) -> list[str]:
        lines = summary_lines(body)
        with self._lock:
            for line in lines:
                print(line, file=self.out, flush=True)
            if self.file:
                with open(self.file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"received_unix": time.time(), **body}) + "\n")
        failed = forward(self.targets, body, lines)
        for f in failed:
            print(f"alert-log: forward failed: {f}", file=self.err, flush=True)
        return failed


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, code: int, text: str = "") -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path in ("/-/ready", "/-/healthy", "/"):
            self._answer(200, "ok\n")
        else:
            self._answer(404)

    def do_POST(self):  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._answer(400, f"expected Alertmanager's webhook JSON: {exc}\n")
            return
        failed = self.server.alert_log.handle(body)
        self._answer(502 if failed else 200, "\n".join(failed))


def serve(alert_log: AlertLog, host: str, port: int) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((host, port), _Handler)
    httpd.daemon_threads = True
    httpd.alert_log = alert_log
    return httpd


def main(opts: dict, password: str | None) -> int:
    host, _, port = opts["listen_address"].rpartition(":")
    targets = Targets(webhook_url=opts.get("alert_webhook_url") or None,
                      slack_webhook_url=opts.get("alert_slack_webhook_url") or None,
                      email_to=opts.get("alert_email_to") or None,
                      smtp_host=opts.get("alert_smtp_host") or "localhost:25",
                      smtp_from=opts.get("alert_smtp_from") or "vllm-audit@localhost",
                      smtp_username=opts.get("alert_smtp_username") or None,
                      smtp_password=password, smtp_starttls=bool(opts.get("alert_smtp_starttls")))
    log = AlertLog(targets, file=opts.get("alert_log_file") and str(opts["alert_log_file"]))
    httpd = serve(log, host.strip("[]") or "0.0.0.0", int(port))
    print(f"alert-log: listening on {opts['listen_address']}; forwarding to: "
          f"{', '.join(targets.names()) or 'nothing (log only)'}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
