"""Sanity of the recorded vLLM 0.32 fixtures (tools/record_fixtures.py).

A re-recording that silently breaks (server logging switched off, wrong
logging config, ids no longer in the log) must fail here. The rules are the
behaviour observed in the recordings (tests/fixtures/vllm-0.32.0/README.md):
every accepted request has a ``Received request`` line with its id; rejected
ones have none; outputs are logged for non-empty chat responses only;
streams end with ``(streaming complete)``; a client disconnect logs
``Request <id> aborted.``; at DEBUG each request has a ``JSON body`` line
whose bare id equals the response id unless the client (or the middleware)
sent ``X-Request-Id``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.32.0"
SETUPS = sorted(p.name for p in FIXTURES.iterdir() if (p / "responses.jsonl").is_file())
DEBUG_SETUPS = {"debug", "jsondebug", "maxloglen", "forceusage", "middleware", "engine"}
# Set-ups that drove every scenario (``engine`` drove only the concurrent one).
FULL_SETUPS = [s for s in SETUPS if s != "engine"]
JSON_SETUPS = {"json", "jsondebug"}
NO_DELTA_SETUPS = {"nodeltas"}
TEXT_HEADER = re.compile(r"^\((\w[\w-]*) pid=\d+\) (DEBUG|INFO|WARNING|ERROR) \d\d-\d\d [\d:]{8} \[[^\]]+\] ")
JSON_KEYS = {"asctime", "levelname", "name", "processName", "process", "message", "vllm_process_name"}


def load(setup: str):
    responses = [json.loads(line) for line in (FIXTURES / setup / "responses.jsonl").open()]
    messages = []
    for line in (FIXTURES / setup / "vllm.log").read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            try:
                messages.append(json.loads(line)["message"])
                continue
            except (ValueError, KeyError):
                pass
        match = TEXT_HEADER.match(line)
        if match:
            messages.append(line[match.end():])
    return responses, messages


def logged_id(resp: dict) -> str:
    """The id vLLM logs for a request: completions add the prompt index."""
    rid = resp["response_id"]
    return rid + "-0" if rid.startswith("cmpl-") else rid


def count(messages, prefix):
    return sum(1 for m in messages if m.startswith(prefix))


def test_all_setups_recorded():
    assert {"info", "debug", "json", "maxloglen", "nodeltas"} <= set(SETUPS)


@pytest.mark.parametrize("setup", SETUPS)
def test_files_present_and_modest(setup):
    for name in ("vllm.log", "responses.jsonl", "metrics.txt"):
        path = FIXTURES / setup / name
        assert path.is_file() and 0 < path.stat().st_size < 2_000_000, path
    assert "vllm:request_success_total" in (FIXTURES / setup / "metrics.txt").read_text()


@pytest.mark.parametrize("setup", FULL_SETUPS)
def test_accepted_requests_are_logged_by_id(setup):
    responses, messages = load(setup)
    accepted = [r for r in responses if r["status"] == 200]
    assert len(accepted) >= 20
    for resp in accepted:
        assert count(messages, f"Received request {logged_id(resp)}: params: ") == 1, resp["scenario"]
    # Rejected requests never reach "Received": the totals match exactly.
    assert count(messages, "Received request ") == len(accepted)


@pytest.mark.parametrize("setup", FULL_SETUPS)
def test_rejected_request_is_http_400_without_id(setup):
    responses, _ = load(setup)
    rejected = [r for r in responses if r["status"] != 200]
    assert [r["scenario"] for r in rejected] == ["chat_over_context"]
    assert rejected[0]["status"] == 400 and rejected[0]["response_id"] is None
    assert "maximum context length is 512" in rejected[0]["response"]["error"]["message"]


@pytest.mark.parametrize("setup", SETUPS)
def test_outputs_logged_as_observed(setup):
    responses, messages = load(setup)
    for resp in (r for r in responses if r["status"] == 200):
        rid, scenario = resp["response_id"], resp["scenario"]
        plain = count(messages, f"Generated response {rid}: output: ")
        complete = count(messages, f"Generated response {rid} (streaming complete): output: ")
        deltas = count(messages, f"Generated response {rid} (streaming delta): output: ")
        if resp["endpoint"] == "/v1/completions" or scenario == "chat_empty":
            assert plain == complete == deltas == 0, scenario
        elif resp.get("client_disconnected"):
            assert plain == complete == 0, scenario
            assert count(messages, f"Request {rid} aborted.") == 1
        elif "stream_chunks" in resp:
            assert complete == 1 and plain == 0, scenario
            has_text = bool(resp["stream_text"])
            expect_deltas = has_text and setup not in NO_DELTA_SETUPS
            assert (deltas > 0) == expect_deltas, scenario
        else:
            assert plain == 1 and complete == deltas == 0, scenario


@pytest.mark.parametrize("setup", sorted(DEBUG_SETUPS & set(SETUPS)))
def test_debug_lines_and_body_ids(setup):
    responses, messages = load(setup)
    bodies = [m.split(" ", 2)[1] for m in messages if " JSON body: " in m]
    # One body line per request, the rejected one included.
    assert len(bodies) == len(responses)
    for resp in (r for r in responses if r["status"] == 200):
        assert count(messages, f"Request {logged_id(resp)} details: prompt: ") == 1
        bare = resp["response_id"].split("-", 1)[1]
        custom_id = "X-Request-Id" in resp["request_headers"] or setup == "middleware"
        # The body id is a fresh one whenever an X-Request-Id header set the request id.
        assert (bare in bodies) != custom_id, resp["scenario"]


@pytest.mark.parametrize("setup", sorted(JSON_SETUPS & set(SETUPS)))
def test_json_formatter_lines(setup):
    lines = [line for line in (FIXTURES / setup / "vllm.log").read_text().splitlines()
             if line.startswith('{"asctime"')]
    assert len(lines) > 50
    for line in lines:
        assert JSON_KEYS <= set(json.loads(line)), line[:120]


def test_info_has_no_debug_lines():
    _, messages = load("info")
    assert not any(" JSON body: " in m or " details: " in m for m in messages)


def test_max_log_len_truncates_body_and_prompt():
    _, messages = load("maxloglen")
    for m in messages:
        if " JSON body: " in m:
            assert len(m.split(" JSON body: ", 1)[1]) <= 20
        elif " details: prompt: " in m:
            prompt_repr = m.split(" details: prompt: ", 1)[1].split(", prompt_token_ids: ")[0]
            assert len(ast.literal_eval(prompt_repr)) <= 20


@pytest.mark.skipif(not (FIXTURES / "middleware" / "middleware.jsonl").is_file(),
                    reason="middleware set-up not recorded")
def test_middleware_lines_match_responses():
    responses, _ = load("middleware")
    lines = [json.loads(line) for line in (FIXTURES / "middleware" / "middleware.jsonl").open()]
    assert len(lines) == len(responses)
    by_response = {m["response_id"]: m for m in lines if m.get("response_id")}
    for resp in (r for r in responses if r["status"] == 200):
        assert resp["response_id"] in by_response, resp["scenario"]
