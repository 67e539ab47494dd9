"""The stack's network: one network namespace (its own loopback, no route
out: as offline as the journey needs), each service's name on its own
10.89.0.x on that loopback through a per-service ``/etc/hosts``, and a thread
pool inside the namespace from which the test talks to the services."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.stack.images import StackError

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


class Network:
    def __init__(self, addresses: dict[str, str]):
        self.addresses = addresses  # service name -> its address
        self._holder: subprocess.Popen | None = None
        self._client: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def netns(self) -> str:
        return f"/proc/{self._holder.pid}/ns/net"

    def start(self) -> None:
        addrs = " && ".join(f"ip addr add {a}/32 dev lo" for a in self.addresses.values())
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && {addrs} && echo up && exec sleep 100000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        if self._holder.stdout.readline().strip() != b"up":
            raise StackError("could not create the stack's network namespace")
        self._client = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, initializer=_setns, initargs=(self.netns,))

    def hosts_file(self, path: Path) -> Path:
        """An /etc/hosts that names every service by its address."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
        lines += [f"{addr}\t{svc}" for svc, addr in sorted(self.addresses.items())]
        path.write_text("\n".join(lines) + "\n")
        return path

    def call(self, fn, *args, **kwargs):
        """Run ``fn`` on a thread inside the namespace (service addresses reachable)."""
        return self._client.submit(fn, *args, **kwargs).result()

    def stop(self) -> None:
        if self._client is not None:
            self._client.shutdown(wait=False, cancel_futures=True)
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait(10)


def http(method: str, url: str, data: bytes | None, headers: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
