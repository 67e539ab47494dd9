"""The middleware set-up: real vLLM 0.32 with exporter.middleware.AuditMiddleware.

Replaying vLLM's log together with the middleware's JSONL must give exactly
one record per HTTP request — rejected and empty ones included — with the
right user, outcome, tokens equal to the response's ``usage``, and empty flag.
Expectations come from the recorded responses (tests/fixtures/.../middleware/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

SETUP = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "middleware"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    archive = tmp_path_factory.mktemp("mw") / "archive"
    argv = ["replay", str(SETUP / "vllm.log"), str(SETUP / "middleware.jsonl"),
            "--archive-dir", str(archive), "--model", "tiny", "--no-progress"]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    out = []
    for f in sorted(archive.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def _responses():
    return [json.loads(line) for line in (SETUP / "responses.jsonl").open()]


def _expected_user(resp: dict) -> str | None:
    headers = {k.lower(): v for k, v in resp["request_headers"].items()}
    for h in ("x-openwebui-user-email", "x-openwebui-user-name", "x-openwebui-user-id"):
        if h in headers:
            return headers[h]
    if resp["request_body"].get("user") is not None:
        return resp["request_body"]["user"]
    if "authorization" in headers:
        return "key:"  # a salted hash, never the key: checked by prefix
    return None


def _usage(resp: dict) -> dict:
    return resp.get("usage") or (resp.get("response") or {}).get("usage") or {}


def test_exactly_one_record_per_http_request(records):
    responses = _responses()
    assert len(records) == len(responses)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids))
    assert all(r["sources"] == ["vllm_log", "middleware"] or r["status"] == "rejected" for r in records)


def test_each_record_matches_its_response(records):
    by_id = {r["request_id"]: r for r in records}
    rejected = [r for r in records if r["status"] == "rejected"]
    for resp in _responses():
        name = resp["scenario"]
        if resp["status"] == 400:
            assert len(rejected) == 1, name
            rec = rejected[0]
            assert rec["http_status"] == 400 and "maximum context length" in rec["error"], name
            # vLLM states "at least N": a lower bound, flagged as such, above the context
            assert rec["prompt_tokens"] > 512 and "prompt_tokens_at_least" in rec["flags"], name
            assert rec["sources"] == ["middleware"], name
            continue
        rid = resp["response_id"]
        rec = by_id.get(rid) or by_id.get(rid + "-0")
        assert rec is not None, name
        user = _expected_user(resp)
        if user == "key:":
            assert rec["user"].startswith("key:") and "sk-" not in json.dumps(rec), name
        else:
            assert rec["user"] == user, name
        usage = _usage(resp)
        if resp.get("client_disconnected"):
            assert rec["status"] == "aborted" and rec["finish_reason"] == "abort", name
            continue
        assert rec["status"] == "completed" and rec["http_status"] == 200, name
        if usage:
            assert rec["prompt_tokens"] == usage["prompt_tokens"], name
            assert rec["completion_tokens"] == usage["completion_tokens"], name
            assert rec["tokens_source"] == "usage", name
        if "stream_text" in resp:
            text, finish = resp["stream_text"], resp.get("finish_reason")
            assert rec["ttft_seconds"] is None or rec["ttft_seconds"] >= 0, name
        else:
            ch = resp["response"]["choices"][0]
            text, finish = ch.get("message", {}).get("content", ch.get("text")), ch["finish_reason"]
            if len(resp["response"]["choices"]) > 1:
                assert [c["text"] for c in rec["choices"]] == [
                    c["text"] for c in sorted(resp["response"]["choices"], key=lambda c: c["index"])], name
        assert rec["output"] == text, name
        assert rec["finish_reason"] == finish, name
        assert rec["empty_response"] == (text == ""), name
        assert rec["latency_seconds"] is not None and rec["latency_seconds"] >= 0, name


def test_empty_answers_are_caught_that_stock_vllm_never_logs(records):
    empty = [r for r in records if r["empty_response"]]
    assert {r["stream"] for r in empty} == {True, False}
    assert all("empty_response" in r["flags"] for r in empty)
