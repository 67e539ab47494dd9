"""With default settings, no raw PII from a prompt or output reaches Loki.

The whole path runs: replay (parser → correlator → detectors → archive) →
Loki pusher → the strict Loki-protocol test server. Every stored line, label
and structured-metadata value is searched for the raw values; the local
archive keeps them (its default policy is ``full``) and flags the record.
"""

from __future__ import annotations

import json
import time

from exporter.cli import make_parser, replay_into
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
