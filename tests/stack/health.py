"""Every ``healthcheck`` run as Docker runs it: its ``CMD`` inside the
service's namespaces, as its user, with its environment, every ``interval``
(the first after one interval), ``timeout``, failures during ``start_period``
not counted, ``unhealthy`` after ``retries`` failures in a row; the history
is kept so a test can say "healthy from start to end"."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Health:
    status: str = "starting"  # starting, healthy, unhealthy
    history: list = field(default_factory=list)  # (unix time, ok, output tail)
    failures: int = 0


def watch(svc, stop: threading.Event) -> None:
    """Run the service's healthcheck until ``stop`` or the service exits."""
    c = svc.check
    while not stop.wait(c["interval"]):
        if not svc.running():
            svc.health.status = "exited"
            return
        ok, out = run_check(svc)
        now = time.time()
        svc.health.history.append((now, ok, out[-300:]))
        in_start = now - svc.started_at < c["start_period"]
        if ok:
            svc.health.status, svc.health.failures = "healthy", 0
        elif not in_start or svc.health.status == "healthy":
            svc.health.failures += 1
            if svc.health.failures >= c["retries"]:
                svc.health.status = "unhealthy"


def run_check(svc) -> tuple[bool, str]:
    """One run of the healthcheck's test, inside the service's namespaces, as its user."""
    test = svc.check["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if test[0] == "NONE":
        return True, ""
    argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else svc.resolve(list(test[1:]))
    env = svc.env()
    cmd = ["nsenter", f"--target={svc.proc.pid}", "--mount", "--net",
           f"--setuid={svc.image.uid}", f"--setgid={svc.image.gid}",
           f"--wd={svc.image.workdir}", "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=svc.check["timeout"])
    except subprocess.TimeoutExpired:
        return False, "timeout"
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
