"""The stack runner does what its docstring says Compose does (small stacks,
no vLLM): a healthcheck that only passes inside the emulated container —
as the image's user, with the secret, config, volume and bind mount at their
container paths and the other service reachable by name — makes the service
healthy; a dependency that turns unhealthy stops ``up`` before its
dependent starts, like ``dependency failed to start``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.stack.runner import REPO, Stack, StackError, make_work_dir

pytestmark = pytest.mark.live

CHECK = ("import os, sys, urllib.request; "
         "ok = (os.getuid(), os.getgid()) == (10001, 0) "
         "and open('/run/secrets/token').read() == 'v3ry-secret' "
         "and open('/etc/demo/settings.txt').read() == 'from configs' "
         "and os.path.isfile('/src/compose.yaml') "
         "and os.access('/alerts', os.W_OK) and not os.access('/src', os.W_OK) "
         "and os.environ['GREETING'] == 'hi there' and os.environ['EMPTY'] == 'fallback' "
         "and urllib.request.urlopen('http://loki:3100/ready', timeout=5).status == 200; "
         "sys.exit(0 if ok else 1)")


def compose_file(tmp, check: str, loki_check: str) -> list:
    (tmp / "compose.yaml").write_text(textwrap.dedent(f"""\
        services:
          loki:
            image: grafana/loki:3.7.6
            command: ["-config.file=/etc/loki/loki-config.yaml", "-config.expand-env=true"]
            volumes: ["./loki:/etc/loki:ro"]
            healthcheck:
              test: {loki_check}
              interval: 1s
              retries: 2
          alert-log:
            image: vllm-audit-exporter:local
            command: ["alert-log", "--web.listen-address=0.0.0.0:9095"]
            environment:
              GREETING: ${{GREETING:?set GREETING}}
              EMPTY: ${{EMPTY:-fallback}}
            secrets: [token]
            configs:
              - source: settings
                target: /etc/demo/settings.txt
            volumes: ["alerts:/alerts", "./:/src:ro"]
            depends_on:
              loki:
                condition: service_healthy
            healthcheck:
              test: ["CMD", "python", "-c", "{check}"]
              interval: 1s
              retries: 3
        configs:
          settings:
            content: from configs
        secrets:
          token:
            environment: TOKEN
        volumes:
          alerts:
        """))
    (tmp / "loki").mkdir()
    shutil.copy(REPO / "loki/loki-config.yaml", tmp / "loki" / "loki-config.yaml")
    return [tmp / "compose.yaml"]


def test_a_service_is_healthy_only_inside_its_emulated_container():
    work = make_work_dir()
    project = work / "project"
    project.mkdir()
    files = compose_file(project, CHECK.replace('"', '\\"'), '["CMD", "/usr/bin/loki", "-health"]')
    stack = Stack(work / "run", files=files, project_dir=project,
                  env={"GREETING": "hi there", "EMPTY": "", "TOKEN": "v3ry-secret"})
    try:
        stack.up(timeout=120)
        svc = stack.services["alert-log"]
        assert svc.health.status == "healthy", svc.health.history
        assert stack.services["loki"].health.status == "healthy"
        # the same check outside the emulated container fails: it proves the emulation
        assert subprocess.run([sys.executable, "-c", CHECK], capture_output=True).returncode != 0
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)


def test_an_unhealthy_dependency_stops_up_before_its_dependent_starts():
    work = make_work_dir()
    project = work / "project"
    project.mkdir()
    files = compose_file(project, "import sys; sys.exit(0)", '["CMD", "false"]')
    stack = Stack(work / "run", files=files, project_dir=project,
                  env={"GREETING": "hi", "TOKEN": "t"})
    try:
        with pytest.raises(StackError, match="dependency failed to start: loki is unhealthy"):
            stack.up(timeout=120)
        assert stack.services["alert-log"].proc is None
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
