"""With default settings, no raw PII from a prompt or output reaches Loki.

The whole path runs: replay (parser → correlator → detectors → archive) →
Loki pusher → the strict Loki-protocol test server. Every stored line, label
and structured-metadata value is searched for the raw values; the local
archive keeps them (its default policy is ``full``) and flags the record.
"""

from __future__ import annotations

import json
import time

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.record import format_ts
from exporter.settings import build as build_settings

try:
    from tests.loki_server import LokiServer
except ImportError:  # tests/ run as rootdir without package
    from loki_server import LokiServer

RAW = {
    "email": "zhang.wei@example.com",
    "cn_mobile": "13812345678",
    "e164": "+4915112345678",
    "cn_id": "11010519491231002X",  # valid MOD 11-2 check digit
    "card": "4111111111111111",  # Luhn-valid
    "ipv4": "192.168.10.24",
    "secret": "sk-abcdefghijklmnopqrstuvwx123456",
}


def _middleware_line(i: int, prompt: str, output: str, now: float) -> str:
    return json.dumps({
        "type": "vllm_audit_middleware", "v": 1, "request_id": f"req-{i}",
        "request_id_generated": False, "response_id": f"chatcmpl-req-{i}",
        "received_at": format_ts(now + i), "finished_at": format_ts(now + i + 0.5),
        "method": "POST", "path": "/v1/chat/completions", "endpoint": "chat",
        "client": "127.0.0.1:1", "user": f"user{i}", "identity": None, "status_code": 200,
        "status": "completed", "error": None, "model": "tiny", "stream": False,
        "params": {"max_tokens": 8, "temperature": 0, "n": 1, "json_mode": False},
        "prompt": [{"role": "user", "content": prompt}],
        "choices": [{"index": 0, "text": output, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "usage_source": "response", "empty_response": False, "latency_seconds": 0.5,
        "ttft_seconds": None, "aborted": False, "rejected_prompt_tokens": None,
    }, ensure_ascii=False)


def test_default_policy_keeps_raw_pii_out_of_loki(tmp_path):
    now = time.time() - 60
    lines = []
    for i, (kind, value) in enumerate(RAW.items()):
        prompt = f"请联系我 {value} today, kind={kind}\nsecond line {value}"
        lines.append(_middleware_line(i, prompt, f"noted: {value}", now))
    log = tmp_path / "middleware.jsonl"
    log.write_text("\n".join(lines) + "\n")

    with LokiServer() as loki:
        argv = ["replay", str(log), "--archive-dir", str(tmp_path / "archive"), "--no-progress",
                "--loki-url", loki.url, "--loki-structured-metadata"]
        settings = build_settings("replay", make_parser().parse_args(argv), {})
        rt, _ = replay_into(settings, quiet=True)
        while rt.loki.backlog() > 0:
            rt.loki.run_once()
        rt.loki.close()
        entries = loki.entries()

    assert len(entries) == len(RAW)  # every record arrived, once
    shipped = json.dumps(entries, ensure_ascii=False)
    for kind, value in RAW.items():
        assert value not in shipped, f"raw {kind} reached Loki"
    assert "[EMAIL]" in shipped and "[BANK_CARD]" in shipped and "[CN_ID]" in shipped

    archived = [json.loads(x) for x in next((tmp_path / "archive").glob("audit-*.jsonl")).read_text().splitlines()]
    kept = json.dumps(archived, ensure_ascii=False)
    assert all(value in kept for value in RAW.values())  # archive default: full
    assert all(any(f.startswith(("pii_", "secret")) for f in r["flags"]) for r in archived)


# -- client input outside prompt/output, and the user label (issue #18, item 4) -------

EMAIL_USER = "li.na@example.com"


def _rejected_line(i: int, now: float) -> str:
    # vLLM's 400 for a malformed request echoes the client's input in the error.
    line = json.loads(_middleware_line(i, "x", "", now))
    line.update(status_code=400, status="error", choices=None, usage=None, empty_response=None,
                user=EMAIL_USER,
                error="1 validation error for ChatCompletionRequest\nmessages.0\n  Input should be a "
                      "valid dictionary [type=dict_type, input_value='my number is 13812345678, "
                      "mail zhang.wei@example.com', input_type=str]",
                identity={"headers": {"x-openwebui-user-email": EMAIL_USER}, "user_field": None,
                          "api_key_hash": None,
                          "untrusted_headers": {"x-openwebui-user-email": "+4915112345678"}})
    return json.dumps(line, ensure_ascii=False)


def _replay_to_loki(tmp_path, lines, *extra):
    log = tmp_path / "middleware.jsonl"
    log.write_text("\n".join(lines) + "\n")
    with LokiServer() as loki:
        argv = ["replay", str(log), "--archive-dir", str(tmp_path / "archive"), "--no-progress",
                "--loki-url", loki.url, *extra]
        settings = build_settings("replay", make_parser().parse_args(argv), {})
        rt, _ = replay_into(settings, quiet=True)
        while rt.loki.backlog() > 0:
            rt.loki.run_once()
        rt.loki.close()
        return rt, loki.entries()


def test_error_echo_and_identity_reach_loki_redacted_and_labels_pseudonymous(tmp_path):
    from prometheus_client import generate_latest
    now = time.time() - 60
    rt, entries = _replay_to_loki(tmp_path, [_rejected_line(0, now)])
    assert len(entries) == 1
    labels, _, line = entries[0][:3]
    shipped = json.loads(line)
    assert "13812345678" not in line and "zhang.wei@example.com" not in line and "+4915112345678" not in line
    assert "[PHONE]" in shipped["error"] and "[EMAIL]" in shipped["error"]
    assert shipped["identity"]["headers"] == {"x-openwebui-user-email": "[EMAIL]"}
    assert shipped["user"] == EMAIL_USER  # the record's user field is the full record's
    # Labels: pseudonymous by default, in Loki and Prometheus alike.
    assert labels["user"].startswith("u:") and len(labels["user"]) == 18
    exposition = generate_latest(rt.registry).decode()
    assert EMAIL_USER not in exposition and f'user="{labels["user"]}"' in exposition
    # The archive keeps everything, and the pseudonym is stable across runs (keyed, not random).
    archived = json.loads(next((tmp_path / "archive").glob("audit-*.jsonl")).read_text())
    assert EMAIL_USER in archived["user"] and "13812345678" in archived["error"]
    key_file = tmp_path / "archive" / ".state" / "user-label.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    from exporter.labels import UserLabels
    assert UserLabels(key=bytes.fromhex(key_file.read_text())).label(EMAIL_USER) == labels["user"]


def test_raw_user_labels_only_when_the_operator_asks(tmp_path):
    now = time.time() - 60
    _, entries = _replay_to_loki(tmp_path, [_rejected_line(0, now)], "--user-label-mode", "raw")
    assert entries[0][0]["user"] == EMAIL_USER


def test_hashed_user_labels_hide_plain_names_too(tmp_path):
    now = time.time() - 60
    _, entries = _replay_to_loki(tmp_path, [_middleware_line(0, "hi", "hello", now)],
                                 "--user-label-mode", "hashed", "--hmac-key", "k" * 32)
    assert entries[0][0]["user"].startswith("u:")
    assert not (tmp_path / "archive" / ".state" / "user-label.key").exists()  # derived from the HMAC key
