"""The middleware set-up: real vLLM 0.28.0, 0.31.0, 0.32.0 with exporter.middleware.AuditMiddleware.

Replaying vLLM's log together with the middleware's JSONL must give exactly
one record per HTTP request — rejected and empty ones included — with the
right user, outcome, tokens equal to the response's ``usage``, and empty flag.
Expectations come from the recorded responses (tests/fixtures/vllm-<version>/middleware/).
"""

from __future__ import annotations

import json
import re

import pytest

from real_captures import VERSIONS, replay, responses, setup_dir


@pytest.fixture(scope="module", params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture(scope="module")
def records(version, tmp_path_factory):
    setup = setup_dir(version, "middleware")
    if not (setup / "middleware.jsonl").exists():
        pytest.fail(f"fixture missing: run tools/record_fixtures.py --version {version} --setup middleware")
    return replay(tmp_path_factory.mktemp("mw"), [setup / "vllm.log", setup / "middleware.jsonl"],
                  ["--model", "tiny"])


def _responses(version):
    return responses(version, "middleware")


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


def test_exactly_one_record_per_http_request(version, records):
    responses = _responses(version)
    assert len(records) == len(responses)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids))
    assert all(r["sources"] == ["vllm_log", "middleware"] or r["status"] == "rejected" for r in records)


def test_each_record_matches_its_response(version, records):
    by_id = {r["request_id"]: r for r in records}
    log_text = (setup_dir(version, "middleware") / "vllm.log").read_text(errors="replace")
    rejected = [r for r in records if r["status"] == "rejected"]
    for resp in _responses(version):
        name = resp["scenario"]
        if resp["status"] == 400:
            assert len(rejected) == 1, name
            rec = rejected[0]
            assert rec["http_status"] == 400 and "maximum context length" in rec["error"], name
            # vLLM states "at least N" (0.32: N = context + 1; 0.28/0.31: N = context -
            # max_tokens + 1): the stated lower bound, flagged as such
            stated = re.search(r"contains at least (\d+) input tokens", resp["response"]["error"]["message"])
            assert stated is not None, resp["response"]
            assert rec["prompt_tokens"] == int(stated.group(1)), name
            assert "prompt_tokens_at_least" in rec["flags"], name
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
            # vLLM's view decides (see test_fixtures_sanity): aborted, or completed
            # with every token sent when the close came too late.
            if rec["status"] == "completed":
                assert rec["finish_reason"] == "length", name
                assert f"Request {rid} aborted." not in log_text, name
            else:
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


def test_identity_source_of_recorded_lines(version, records):
    """The recorded lines predate ``identity_source``: the record derives it
    where the line's own precedence makes it certain (user field, key hash)
    and leaves it null for a header user (bare or behind the secret: the old
    line does not say)."""
    by_id = {r["request_id"]: r for r in records}
    for resp in _responses(version):
        if resp["status"] == 400:
            continue
        rec = by_id.get(resp["response_id"]) or by_id.get(resp["response_id"] + "-0")
        headers = {k.lower() for k in resp["request_headers"]}
        if rec["user"] is None:
            want = None
        elif headers & {"x-openwebui-user-email", "x-openwebui-user-name", "x-openwebui-user-id"}:
            want = None
        elif resp["request_body"].get("user") is not None:
            want = "user_field"
        else:
            want = "api_key"
        assert rec["identity_source"] == want, (resp["scenario"], rec["user"])
