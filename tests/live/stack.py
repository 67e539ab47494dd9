"""Shared helpers for the live end-to-end tests.

The Prometheus + Alertmanager runner and the webhook receiver live in
``tools/alert_stack.py`` (also used by ``vllm-audit-exporter
demo``); this module adds what only tests need: failing (never skipping)
when a binary is missing, the exporter process, bounded waits, archive and
vLLM ``/metrics`` readers. Nothing here edits the committed configuration:
``AlertStack`` renders ``prometheus/`` with tools/render_stack.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
for _p in (str(REPO), str(REPO / "tools"), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from alert_stack import (  # noqa: E402,F401  (re-exported for the tests)
    AlertStack, StackError, WebhookReceiver, alertmanager_binary, free_port, prometheus_binary,
)
from loki_server import LokiServer  # noqa: E402,F401
from vllm_proc import (  # noqa: E402,F401
    DEFAULT_MODEL_DIR, DEFAULT_PYTHON, VllmServer, VllmStartError, post_json, post_stream,
)

INSTALL_HINT = "bash tools/setup.sh --live (apt-get install -y prometheus prometheus-alertmanager)"


def require_platform() -> None:
    """Fail (CI fails on a skip) with the reason when a live piece is missing."""
    missing = []
    if prometheus_binary() is None:
        missing.append("prometheus binary not on PATH")
    if alertmanager_binary() is None:
        missing.append("alertmanager / prometheus-alertmanager binary not on PATH")
    if not Path(DEFAULT_PYTHON).exists():
        missing.append(f"vLLM venv python missing: {DEFAULT_PYTHON}")
    if not (Path(DEFAULT_MODEL_DIR) / "config.json").exists():
        missing.append(f"tiny model missing: {DEFAULT_MODEL_DIR} (python tools/make_tiny_model.py)")
    if missing:
        msg = "live end-to-end test cannot run: " + "; ".join(missing) + f". Install: {INSTALL_HINT}"
        print(msg, file=sys.stderr)
        pytest.fail(msg)


def wait_until(fn, timeout: float, what, interval: float = 0.25):
    """Poll ``fn()`` until it returns a truthy value; return it, or fail naming ``what``
    (a string, or a callable giving one at the time of failure)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except (OSError, StackError, ValueError) as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            if callable(what):
                try:
                    what = what()
                except Exception as exc:  # diagnostics must not hide the timeout
                    what = f"(diagnostics failed: {exc!r})"
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


class ExporterProcess:
    """``python -m exporter run ...`` from the project venv, output in a file."""

    def __init__(self, args: list[str], listen: str, log_path: Path, env: dict | None = None):
        self.listen, self.log_path = listen, log_path
        self._log = open(log_path, "wb")
        python = REPO / ".venv" / "bin" / "python"
        self.proc = subprocess.Popen(
            [str(python if python.exists() else sys.executable), "-m", "exporter", "run",
             *args, "--web.listen-address", listen],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env})

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"exporter exited with {self.proc.returncode}:\n{self.tail()}")
            return http_ok(self.url + "/metrics")
        wait_until(ready, timeout, f"the exporter at {self.url}/metrics")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def archive_records(archive_dir: Path) -> list[dict]:
    """Every complete line of every daily archive file, in order."""
    out = []
    for path in sorted(Path(archive_dir).glob("audit-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


def metric_sum(text: str, name: str) -> float | None:
    """Sum of every sample of ``name`` (exact metric name) in a text exposition."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0].strip() == name:
            total += float(value)
            seen = True
    return total if seen else None


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode("utf-8", "replace")
