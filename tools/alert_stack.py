"""Step 5 of ``vllm-audit-exporter demo``: the repo's alert rules firing for real.

``show_alert(exporter_url)`` renders the committed ``prometheus/`` directory
for localhost with ``tools/render_stack.py`` (exporter target = the demo's
``/metrics``, no vLLM target, 1 s intervals, every ``for:`` 0 s), starts the
Debian ``prometheus`` and ``alertmanager`` binaries in a temporary directory
with a webhook receiver as the only notification target, waits (bounded)
until Alertmanager delivers ``VllmEmptyResponses`` for the replayed empty
responses, prints it and stops everything.

The runner pieces (``AlertStack``, ``WebhookReceiver``) are shared with the
live end-to-end test (``tests/live/stack.py`` imports them from here). This
is test and demo infrastructure for a checkout, so it lives in ``tools/``,
outside the installed package; ``exporter/demo.py`` loads it from the
checkout when there is one. Standard library only, apart from
render_stack's PyYAML.

Rules:
- The committed configuration is the source: it is rendered, never copied
  or edited. Only what render_stack offers is changed (addresses, intervals,
  ``for:``, webhook URL); Alertmanager's routing timings (``group_wait`` 30 s
  for warnings, 10 s for critical) are the committed ones.
- The demo needs a checkout: ``prometheus/`` and ``tools/`` next to the
  ``exporter`` package. Without them it says so and returns.
- Processes are started by us and stopped by us (terminate, then kill after
  10 s), by their own handle; their output goes to files in the work dir so
  a failure can show the tail.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT = 60.0  # seconds to wait for the VllmEmptyResponses notification


class StackError(RuntimeError):
    """A binary is missing, or a process exited / did not become ready."""


# --------------------------------------------------------------------------- locating things

def find_checkout(root: Path = REPO_ROOT) -> Path | None:
    """The repository root when the package runs from a checkout, else None."""
    if ((root / "prometheus" / "prometheus.yml").is_file()
            and (root / "prometheus" / "alertmanager.yml").is_file()
            and (root / "prometheus" / "rules").is_dir()
            and (root / "tools" / "render_stack.py").is_file()):
        return root
    return None


def load_render_stack(root: Path = REPO_ROOT):
    """Import ``tools/render_stack.py`` of a checkout (it needs PyYAML)."""
    path = root / "tools" / "render_stack.py"
    spec = importlib.util.spec_from_file_location("vllm_audit_render_stack", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    """Upstream names it ``alertmanager``; Debian's package ``prometheus-alertmanager``."""
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def host_port(url: str) -> str:
    """``http://127.0.0.1:9400/metrics`` -> ``127.0.0.1:9400``."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port}"


# --------------------------------------------------------------------------- webhook receiver

class _HookHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_invalid": raw.decode("utf-8", "replace")}
        self.server.receiver._add(self.path, body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookReceiver:
    """Collects Alertmanager webhook notifications (its JSON, version 4)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/vllm-audit"):
        self.host, self.port, self.path = host, port, path
        self._httpd = None
        self._cond = threading.Condition()
        self._received: list[tuple[float, str, dict]] = []  # (time.time(), path, body)

    def start(self) -> "WebhookReceiver":
        self._httpd = ThreadingHTTPServer((self.host, self.port), _HookHandler)
        self._httpd.daemon_threads = True
        self._httpd.receiver = self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def _add(self, path: str, body: dict) -> None:
        with self._cond:
            self._received.append((time.time(), path, body))
            self._cond.notify_all()

    def notifications(self) -> list[tuple[float, str, dict]]:
        """Every POST so far: (arrival unix time, request path, JSON body)."""
        with self._cond:
            return list(self._received)

    def alerts(self, since: float = 0.0) -> list[tuple[float, dict, dict]]:
        """(arrival, notification, alert) for every alert of every notification after ``since``."""
        return [(at, body, alert) for at, _, body in self.notifications() if at >= since
                for alert in body.get("alerts", []) or []]

    def wait_for(self, predicate, timeout: float, since: float = 0.0):
        """First (arrival, notification, alert) with ``predicate(alert, notification)``, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, _, body in self._received:
                    if at < since:
                        continue
                    for alert in body.get("alerts", []) or []:
                        if predicate(alert, body):
                            return at, body, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))


# --------------------------------------------------------------------------- processes

class _Process:
    """One child process with its output in a file; stopped by its own handle."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None:
                raise StackError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} not ready at {url} after {timeout}s:\n{self.tail()}")
            time.sleep(0.2)  # polling a child process: no event to wait on

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class AlertStack:
    """Prometheus + Alertmanager running the repo's rendered configuration.

    ``targets`` maps committed addresses to local ones (``{"vllm:8000":
    "127.0.0.1:41234", "exporter:9400": "127.0.0.1:41235"}``); the
    Alertmanager address is added here. Everything else is passed to
    ``render_stack.render`` as is.

    Prometheus runs with ``--rules.alert.resend-delay=1s`` (a server flag, not
    configuration): alerts that fire on the very first evaluations, before
    the notifier has discovered Alertmanager, are dropped and by default only
    resent a minute later (``prometheus_notifications_dropped_total``).
    """

    def __init__(self, workdir: Path, targets: dict[str, str], *, webhook_url: str,
                 scrape_interval: str = "1s", evaluation_interval: str = "1s",
                 for_overrides=("0s",), repo: Path = REPO_ROOT,
                 prometheus_args=("--rules.alert.resend-delay=1s",), scrape_configs=None):
        self.workdir = Path(workdir)
        self.targets = dict(targets)
        self.webhook_url = webhook_url
        self.scrape_interval, self.evaluation_interval = scrape_interval, evaluation_interval
        self.for_overrides = list(for_overrides)
        self.repo = repo
        self.prometheus_args = list(prometheus_args)
        # Replaces the rendered scrape jobs (the multi-replica test scrapes
        # several replicas the way the Kubernetes PodMonitor does); rules,
        # alerting and Alertmanager stay the committed ones.
        self.scrape_configs = scrape_configs
        self.prom_addr = self.am_addr = None
        self.paths: dict[str, Path] = {}
        self._procs: list[_Process] = []

    @property
    def prom_url(self) -> str:
        return f"http://{self.prom_addr}"

    @property
    def am_url(self) -> str:
        return f"http://{self.am_addr}"

    def start(self) -> "AlertStack":
        prometheus, alertmanager = prometheus_binary(), alertmanager_binary()
        missing = [n for n, b in (("prometheus", prometheus),
                                  ("alertmanager (or prometheus-alertmanager)", alertmanager)) if not b]
        if missing:
            raise StackError(f"not on PATH: {', '.join(missing)} "
                             "(apt-get install -y prometheus prometheus-alertmanager)")
        if find_checkout(self.repo) is None:
            raise StackError(f"no prometheus/ and tools/render_stack.py under {self.repo}")
        render_stack = load_render_stack(self.repo)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prom_addr = f"127.0.0.1:{free_port()}"
        self.am_addr = f"127.0.0.1:{free_port()}"
        targets = {"alertmanager:9093": self.am_addr, "localhost:9090": self.prom_addr,
                   **self.targets}
        self.paths = render_stack.render(
            self.workdir / "config", targets=targets, scrape_interval=self.scrape_interval,
            evaluation_interval=self.evaluation_interval, for_overrides=self.for_overrides,
            webhook_url=self.webhook_url, source_dir=self.repo / "prometheus")
        if self.scrape_configs is not None:
            import yaml  # render_stack needs PyYAML already
            path = self.paths["prometheus"]
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            config["scrape_configs"] = list(self.scrape_configs)
            path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        try:
            am = _Process("alertmanager", [
                alertmanager, f"--config.file={self.paths['alertmanager']}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address={self.am_addr}",
                "--cluster.listen-address=",  # no HA gossip: no extra port, no peers
            ], self.workdir / "alertmanager.log")
            self._procs.append(am)
            am.wait_ready(f"{self.am_url}/-/ready")
            prom = _Process("prometheus", [
                prometheus, f"--config.file={self.paths['prometheus']}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={self.prom_addr}",
                *self.prometheus_args,
            ], self.workdir / "prometheus.log")
            self._procs.append(prom)
            prom.wait_ready(f"{self.prom_url}/-/ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        while self._procs:
            self._procs.pop().stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self._procs)

    def query(self, expr: str) -> list[dict]:
        """Instant query; the result vector (raises StackError on an API error)."""
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise StackError(f"query {expr!r} failed: {body.get('error')}")
        return body["data"]["result"]

    def alertmanager_alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.am_url}/api/v2/alerts", timeout=10) as resp:
            return json.load(resp)


# --------------------------------------------------------------------------- the demo step

def _describe(alert: dict) -> str:
    labels, ann = alert.get("labels", {}), alert.get("annotations", {})
    return (f"   alertname={labels.get('alertname')}  model={labels.get('model', '-')}  "
            f"user={labels.get('user', '-')}  severity={labels.get('severity')}\n"
            f"   summary:     {ann.get('summary')}\n"
            f"   description: {ann.get('description')}")


def show_alert(exporter_url: str, timeout: float = DEMO_TIMEOUT) -> None:
    """Run Prometheus + Alertmanager on the demo's /metrics until VllmEmptyResponses arrives."""
    root = find_checkout()
    if root is None:
        print("   the alert demo needs a checkout of the repository (prometheus/ and "
              "tools/render_stack.py next to the exporter package); skipped")
        return
    try:
        load_render_stack(root)
    except ImportError as exc:
        print(f"   the alert demo needs PyYAML to render the configuration ({exc}); skipped")
        return
    with tempfile.TemporaryDirectory(prefix="vllm-audit-alerts-") as tmp:
        hook = WebhookReceiver().start()
        # No vLLM here: its job is dropped from the rendered config, so
        # VllmDown fires too (absent target); it does not inhibit this alert.
        stack = AlertStack(Path(tmp), {"exporter:9400": host_port(exporter_url)},
                           webhook_url=hook.url, for_overrides=["0s"], repo=root)
        try:
            try:
                stack.start()
            except StackError as exc:
                print(f"   could not start Prometheus/Alertmanager: {exc}")
                return
            print(f"   rules: {root / 'prometheus' / 'rules'} (rendered into {stack.paths['prometheus'].parent})")
            print(f"   Prometheus {stack.prom_url}, Alertmanager {stack.am_url}, webhook {hook.url}")
            print(f"   waiting up to {timeout:.0f}s for the VllmEmptyResponses notification "
                  "(Alertmanager's committed group_wait for warnings is 30s) ...", flush=True)
            started = time.monotonic()
            got = hook.wait_for(lambda a, n: a.get("labels", {}).get("alertname") == "VllmEmptyResponses"
                                and a.get("status") == "firing", timeout)
            if got is None:
                firing = [a["labels"].get("alertname") for a in stack.alertmanager_alerts()]
                print(f"   no VllmEmptyResponses notification within {timeout:.0f}s "
                      f"(alerts in Alertmanager: {', '.join(sorted(set(firing))) or 'none'})")
                return
            _, notification, _ = got
            print(f"   webhook received after {time.monotonic() - started:.0f}s "
                  f"(receiver {notification.get('receiver')!r}, status {notification.get('status')}):")
            for alert in notification.get("alerts", []):
                if alert.get("labels", {}).get("alertname") == "VllmEmptyResponses":
                    print(_describe(alert))
            others = sorted({a["labels"].get("alertname") for _, _, a in hook.alerts()} - {"VllmEmptyResponses"})
            if others:
                print(f"   also notified: {', '.join(others)} (the demo runs no vLLM)")
        finally:
            stack.stop()
            hook.stop()
