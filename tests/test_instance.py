"""--instance / VLLM_AUDIT_INSTANCE: the replica identity in records and Loki labels.

On Kubernetes every replica runs its own exporter (deploy/kubernetes/); the
pod's NAMESPACE/POD comes in through the downward API. It is part of every
hashed record (a record cannot be moved to another replica's archive without
breaking the chain) and the Loki label ``vllm_instance``, named like the
Prometheus label the PodMonitor sets, so one dashboard variable filters both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.loki.config import LokiSettings
from exporter.loki.entries import build_entry
from exporter.record import RECORD_FIELDS
from exporter.replay import replay_into
from exporter.settings import SettingsError, build

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "middleware"


def _settings(argv, env=None):
    return build("replay", make_parser().parse_args(["replay", *argv]), env or {})


def _replay(tmp_path, *extra, env=None):
    settings = _settings([str(FIXTURE / "vllm.log"), str(FIXTURE / "middleware.jsonl"),
                          "--archive-dir", str(tmp_path / "archive"), "--model", "tiny",
                          "--no-progress", *extra], env)
    replay_into(settings, quiet=True)
    lines = [json.loads(x) for p in sorted((tmp_path / "archive").glob("audit-*.jsonl"))
             for x in p.read_text().splitlines()]
    assert lines, "the real capture yields records"
    return lines


# The record's fields as they were when `instance` was added: fields are only
# ever appended (engine came later), so this stays RECORD_FIELDS' prefix.
FIELDS_UP_TO_INSTANCE = (
    "ts", "request_id", "model", "user", "endpoint", "stream", "prompt", "output", "prompt_tokens",
    "completion_tokens", "tokens_source", "finish_reason", "status", "empty_response",
    "latency_seconds", "params", "flags", "ttft_seconds", "http_status", "error", "client",
    "identity", "choices", "sources", "identity_source", "instance")


def test_instance_is_appended_after_the_contract_fields_and_null_by_default(tmp_path):
    assert RECORD_FIELDS[:len(FIELDS_UP_TO_INSTANCE)] == FIELDS_UP_TO_INSTANCE  # existing order unchanged
    records = _replay(tmp_path)
    assert all(r["instance"] is None for r in records)
    assert list(records[0])[:len(RECORD_FIELDS)] == list(RECORD_FIELDS)


def test_flag_and_env_var_put_the_replica_into_every_record(tmp_path):
    by_flag = _replay(tmp_path / "a", "--instance", "llm/vllm-audit-1")
    assert {r["instance"] for r in by_flag} == {"llm/vllm-audit-1"}
    by_env = _replay(tmp_path / "b", env={"VLLM_AUDIT_INSTANCE": "llm/vllm-audit-0"})
    assert {r["instance"] for r in by_env} == {"llm/vllm-audit-0"}
    # hashed like every other field: the chains of the two replicas differ
    assert by_flag[0]["hash"] != by_env[0]["hash"]


@pytest.mark.parametrize("bad", ["", " pod", "pod\n", "a\tb", "x" * 254])
def test_bad_instance_is_one_line_error_naming_the_flag(bad):
    with pytest.raises(SettingsError, match="--instance"):
        _settings(["/dev/null", "--instance", bad])


def test_loki_label_vllm_instance_only_when_set(tmp_path):
    records = _replay(tmp_path, "--instance", "llm/vllm-audit-1")
    line = json.dumps(records[0])
    settings = LokiSettings(url="http://loki:3100")
    entry = build_entry(line, settings, lambda u: u, lambda r: r)
    assert dict(entry.labels)["vllm_instance"] == "llm/vllm-audit-1"
    plain = dict(records[0], instance=None)
    labels = dict(build_entry(json.dumps(plain), settings, lambda u: u, lambda r: r).labels)
    assert "vllm_instance" not in labels
