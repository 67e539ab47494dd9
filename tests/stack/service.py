"""One compose service as a process: what Docker would set up for it (argv
from entrypoint/command or the image's, the environment, volumes, binds,
configs, secrets and /etc/hosts as mounts, the image's user) written as a spec
for tests/stack/enter.py, started inside the stack's network namespace and a
private mount namespace, and stopped as ``docker stop`` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.stack.compose import environment, healthcheck, mounts
from tests.stack.health import Health, watch
from tests.stack.images import Image, StackError

ENTER = Path(__file__).with_name("enter.py")


class Service:
    def __init__(self, stack, name: str, config: dict, image: Image, address: str):
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
            threading.Thread(target=watch, args=(self, self._stop), name=f"health-{self.name}",
                             daemon=True).start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
