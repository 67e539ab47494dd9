"""deploy/kubernetes/: every replica signs its own transparency log (issue 15).

The rendered StatefulSet's ``signing-key`` init container and the exporter
sidecar's signing flags, run on this machine as the kubelet would run them
for two pods: the downward-API variables set to the pod's name and
namespace, ``$(VAR)`` expanded from the container's own env, the pod's
mount paths mapped to per-replica directories. Then the promise an auditor
relies on: the exporter's archive verifies with the ``signing.pub`` the init
container printed and nothing else, each replica under its own origin and key,
and a restarted pod keeps its key (``--keep-existing``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_kubernetes import _by_name, one, render

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "tests" / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"
NAMESPACE = "llm"
PODS = ("vllm-audit-0", "vllm-audit-1")


def container_env(container: dict, pod: str) -> dict[str, str]:
    """The kubelet's view of ``env``: downward API fields, then ``$(VAR)``
    expanded from variables defined earlier in the list."""
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), var["value"])
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    out = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)
    assert "$(" not in out, arg
    return out


def mount(container: dict, path: str) -> dict:
    [m] = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return m


def exporter_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})})


@pytest.fixture(scope="module")
def pod_spec() -> dict:
    return one(render("gpu"), "StatefulSet")["spec"]["template"]["spec"]


def test_the_key_is_made_on_the_replicas_volume_before_the_exporter_starts(pod_spec):
    names = [c["name"] for c in pod_spec["initContainers"]]
    assert names.index("signing-key") < names.index("exporter")
    init = _by_name(pod_spec["initContainers"])
    signing, exporter = init["signing-key"], init["exporter"]
    assert "restartPolicy" not in signing  # a one-shot init step, not a sidecar
    assert signing["args"][0] == "keygen" and "--keep-existing" in signing["args"]
    made, used = mount(signing, "/signing"), mount(exporter, "/signing")
    # the same directory of the per-replica claim, writable by the exporter:
    # it replaces the key by each day's and erases the previous one
    assert made["name"] == used["name"] == "audit"
    assert made["subPath"] == used["subPath"] and not used.get("readOnly")
    # the claim template (kept with the replica), not a volume living as long as the pod
    assert "audit" not in {v["name"] for v in pod_spec["volumes"]}
    # never where vLLM (or anything it runs) can read it
    vllm = _by_name(pod_spec["containers"])["vllm"]
    assert made["subPath"] not in {m.get("subPath") for m in vllm["volumeMounts"]}
    key_flag = next(a for a in exporter["args"] if a.startswith("--signing-key-file="))
    assert key_flag == "--signing-key-file=/signing/signing.key"
    # one origin for the key's name and the checkpoints, per replica
    assert "--name=$(VLLM_AUDIT_LOG_ORIGIN)" in signing["args"]
    assert _by_name(signing["env"])["VLLM_AUDIT_LOG_ORIGIN"] == _by_name(exporter["env"])["VLLM_AUDIT_LOG_ORIGIN"]


def test_each_replicas_archive_verifies_with_its_printed_public_key_alone(pod_spec, tmp_path):
    init = _by_name(pod_spec["initContainers"])
    signing, exporter = init["signing-key"], init["exporter"]
    seen_keys, seen_origins = set(), set()
    for pod in PODS:
        keys, archive = tmp_path / pod / "signing", tmp_path / pod / "archive"
        keys.mkdir(parents=True)
        senv = container_env(signing, pod)
        args = [expand(a, senv).replace("=/signing", f"={keys}") for a in signing["args"]]
        first = exporter_cli(args)
        assert first.returncode == 0, first.stderr
        pub = (keys / "signing.pub").read_text().strip()
        assert pub in first.stdout  # what `kubectl logs -c signing-key` shows
        origin = senv["VLLM_AUDIT_LOG_ORIGIN"]
        assert origin == f"cluster.local/{NAMESPACE}/{pod}" and pub.startswith(origin + "+")
        # the pod restarts: the key is kept, the same verifier key printed
        again = exporter_cli(args)
        assert again.returncode == 0, again.stderr
        assert (keys / "signing.pub").read_text().strip() == pub and pub in again.stdout

        # the sidecar's signing flags and origin, on a real capture
        eenv = container_env(exporter, pod)
        flags = [a.replace("=/signing/", f"={keys}/") for a in exporter["args"]
                 if a.startswith("--signing-key-file=")]
        out = exporter_cli(["replay", str(CAPTURE), "--archive-dir", str(archive), *flags],
                           {"VLLM_AUDIT_LOG_ORIGIN": eenv["VLLM_AUDIT_LOG_ORIGIN"]})
        assert out.returncode == 0, out.stderr
        ok = exporter_cli(["verify", str(archive), "--public-key", str(keys / "signing.pub")])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert re.search(r"OK: 22 record\(s\) in a tree of 22, [1-9]\d* signed checkpoint", ok.stdout), ok.stdout
        seen_keys.add(pub)
        seen_origins.add(origin)
    assert len(seen_keys) == len(seen_origins) == len(PODS)
    # and one replica's key does not vouch for the other's log
    wrong = exporter_cli(["verify", str(tmp_path / PODS[0] / "archive"),
                          "--public-key", str(tmp_path / PODS[1] / "signing" / "signing.pub")])
    assert wrong.returncode != 0, wrong.stdout
