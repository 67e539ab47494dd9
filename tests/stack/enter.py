"""Become one compose service's "container", then exec its program.

Run by the stack runner as root, already inside the stack's network
namespace and a fresh private mount namespace
(``nsenter --net=... unshare --mount --propagation private python enter.py SPEC``).
SPEC (JSON) says what Docker would set up; this does it and execs:

- ``root_view``: for a non-root image user, ``/root`` (0700 here) is covered
  by a 0755 tmpfs holding only read-only binds of ``/root/.pyenv`` and
  ``/root/.cache/vllm-audit`` (where the interpreters and cached venvs are),
  so the user can run them as it could run an image's own Python.
- ``mounts``: ``[source, target, read_only]`` bind mounts, in order (volumes,
  bind mounts, configs, secrets, the per-service ``/etc/hosts``). A missing
  target is created as a directory or an empty file, like Docker does in an
  image; on this host that means an empty mount point on the root file
  system (nothing is written through it: it is covered), which the runner
  removes again at ``down`` when no other stack is running.
- ``uid``/``gid``: the image's user (supplementary groups dropped, as Docker
  with a numeric ``USER``); ``cwd``; ``env`` replaces the environment;
  ``argv`` is exec'd (``argv[0]`` already resolved on the image's PATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def ensure_target(source: str, target: str) -> None:
    if os.path.lexists(target):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()


def bind(source: str, target: str, read_only: bool) -> None:
    ensure_target(source, target)
    mount("--bind", source, target)
    if read_only:
        mount("-o", "remount,bind,ro", target)


def root_view(stage: str) -> None:
    os.makedirs(stage, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", stage)
    for sub in (".pyenv", ".cache/vllm-audit"):
        src = os.path.join("/root", sub)
        if os.path.isdir(src):
            dst = os.path.join(stage, sub)
            os.makedirs(dst, exist_ok=True)
            mount("--bind", src, dst)
            mount("-o", "remount,bind,ro", dst)
    mount("--rbind", stage, "/root")  # with the binds inside it


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("root_view"):
        root_view(spec["root_view"])
    for source, target, read_only in spec["mounts"]:
        bind(source, target, read_only)
    uid, gid = spec["uid"], spec["gid"]
    if gid != 0 or uid != 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.umask(0o022)  # Docker's default in a container
    os.chdir(spec.get("cwd") or "/")
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
