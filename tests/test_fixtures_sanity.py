"""Sanity of the recorded vLLM 0.28.0 / 0.31.0 / 0.32.0 fixtures (tools/record_fixtures.py).

A re-recording that silently breaks (server logging switched off, wrong
logging config, ids no longer in the log) must fail here. The rules are the
behaviour observed in the recordings (tests/fixtures/vllm-<version>/README.md):
every accepted request has a ``Received request`` line with its id; rejected
ones have none; outputs are logged for non-empty chat responses only;
streams end with ``(streaming complete)``; a client disconnect logs
``Request <id> aborted.``; at DEBUG each request has a ``JSON body`` line
whose bare id equals the response id unless the client (or the middleware)
sent ``X-Request-Id`` (0.31+; 0.31 cuts the body's last character, 0.28 logs
no body). 0.28 puts ``(APIServer pid=N)`` before every physical line by
wrapping stdout (uvicorn's access lines too); 0.31+ only before vLLM's records.
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from real_captures import DEBUG_SETUPS, JSON_SETUPS, LOG_ONLY_SETUPS, has_json_body, setup_dir

CASES = [(v, s) for v, setups in LOG_ONLY_SETUPS.items() for s in [*setups, "middleware"]]
DEBUG_CASES = [(v, s) for v, s in CASES if s in DEBUG_SETUPS]
JSON_CASES = [(v, s) for v, s in CASES if s in JSON_SETUPS]
VERSIONS = list(LOG_ONLY_SETUPS)
NO_DELTA_SETUPS = {"nodeltas"}
TEXT_HEADER = re.compile(r"^\((\w[\w-]*) pid=\d+\) (DEBUG|INFO|WARNING|ERROR) \d\d-\d\d [\d:]{8} \[[^\]]+\] ")
JSON_KEYS = {"asctime", "levelname", "name", "processName", "process", "message", "vllm_process_name"}


def load(version: str, setup: str):
    responses = [json.loads(line) for line in (setup_dir(version, setup) / "responses.jsonl").open()]
    messages = []
    for line in (setup_dir(version, setup) / "vllm.log").read_text(encoding="utf-8").splitlines():
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


@pytest.mark.parametrize("version,setup", CASES)
def test_files_present_and_modest(version, setup):
    for name in ("vllm.log", "responses.jsonl", "metrics.txt"):
        path = setup_dir(version, setup) / name
        assert path.is_file() and 0 < path.stat().st_size < 2_000_000, path
    assert "vllm:request_success_total" in (setup_dir(version, setup) / "metrics.txt").read_text()
    # The log is the version it claims to be (vLLM's start-up banner / engine config).
    assert f"(v{version})" in (setup_dir(version, setup) / "vllm.log").read_text(errors="replace")


@pytest.mark.parametrize("version,setup", CASES)
def test_accepted_requests_are_logged_by_id(version, setup):
    responses, messages = load(version, setup)
    accepted = [r for r in responses if r["status"] == 200]
    assert len(accepted) >= 20
    for resp in accepted:
        assert count(messages, f"Received request {logged_id(resp)}: params: ") == 1, resp["scenario"]
    # Rejected requests never reach "Received": the totals match exactly.
    assert count(messages, "Received request ") == len(accepted)


@pytest.mark.parametrize("version,setup", CASES)
def test_rejected_request_is_http_400_without_id(version, setup):
    responses, _ = load(version, setup)
    rejected = [r for r in responses if r["status"] != 200]
    assert [r["scenario"] for r in rejected] == ["chat_over_context"]
    assert rejected[0]["status"] == 400 and rejected[0]["response_id"] is None
    assert "maximum context length is 512" in rejected[0]["response"]["error"]["message"]


@pytest.mark.parametrize("version,setup", CASES)
def test_outputs_logged_as_observed(version, setup):
    responses, messages = load(version, setup)
    for resp in (r for r in responses if r["status"] == 200):
        rid, scenario = resp["response_id"], resp["scenario"]
        plain = count(messages, f"Generated response {rid}: output: ")
        complete = count(messages, f"Generated response {rid} (streaming complete): output: ")
        deltas = count(messages, f"Generated response {rid} (streaming delta): output: ")
        if resp["endpoint"] == "/v1/completions" or scenario == "chat_empty":
            assert plain == complete == deltas == 0, scenario
        elif resp.get("client_disconnected"):
            # Usually vLLM notices the close and aborts. On 2 busy cores the tiny
            # model can send all tokens first (seen in 0.28's middleware capture):
            # then the stream completed from vLLM's side. Either way, consistently.
            aborted = count(messages, f"Request {rid} aborted.")
            assert plain == 0 and aborted + complete == 1, (scenario, aborted, complete)
        elif "stream_chunks" in resp:
            assert complete == 1 and plain == 0, scenario
            has_text = bool(resp["stream_text"])
            expect_deltas = has_text and setup not in NO_DELTA_SETUPS
            assert (deltas > 0) == expect_deltas, scenario
        else:
            assert plain == 1 and complete == deltas == 0, scenario


@pytest.mark.parametrize("version,setup", DEBUG_CASES)
def test_debug_lines_and_body_ids(version, setup):
    responses, messages = load(version, setup)
    bodies = [m.split(" ", 2)[1] for m in messages if " JSON body: " in m]
    for resp in (r for r in responses if r["status"] == 200):
        assert count(messages, f"Request {logged_id(resp)} details: prompt: ") == 1
    if not has_json_body(version):
        assert bodies == []  # 0.28 has no JSON-body line
        return
    # One body line per request, the rejected one included.
    assert len(bodies) == len(responses)
    for resp in (r for r in responses if r["status"] == 200):
        bare = resp["response_id"].split("-", 1)[1]
        custom_id = "X-Request-Id" in resp["request_headers"] or setup == "middleware"
        # The body id is a fresh one whenever an X-Request-Id header set the request id.
        assert (bare in bodies) != custom_id, resp["scenario"]


@pytest.mark.parametrize("version,setup", JSON_CASES)
def test_json_formatter_lines(version, setup):
    lines = [line for line in (setup_dir(version, setup) / "vllm.log").read_text().splitlines()
             if line.startswith('{"asctime"')]
    assert len(lines) > 50
    for line in lines:
        assert JSON_KEYS <= set(json.loads(line)), line[:120]


@pytest.mark.parametrize("version", VERSIONS)
def test_info_has_no_debug_lines(version):
    _, messages = load(version, "info")
    assert not any(" JSON body: " in m or " details: " in m for m in messages)


@pytest.mark.parametrize("version", VERSIONS)
def test_max_log_len_truncates_body_and_prompt(version):
    _, messages = load(version, "maxloglen")
    for m in messages:
        if " JSON body: " in m:
            assert len(m.split(" JSON body: ", 1)[1]) <= 20
        elif " details: prompt: " in m:
            prompt_repr = m.split(" details: prompt: ", 1)[1].split(", prompt_token_ids: ")[0]
            assert len(ast.literal_eval(prompt_repr)) <= 20


@pytest.mark.parametrize("version", VERSIONS)
def test_middleware_lines_match_responses(version):
    responses, _ = load(version, "middleware")
    lines = [json.loads(line) for line in (setup_dir(version, "middleware") / "middleware.jsonl").open()]
    assert len(lines) == len(responses)
    by_response = {m["response_id"]: m for m in lines if m.get("response_id")}
    for resp in (r for r in responses if r["status"] == 200):
        assert resp["response_id"] in by_response, resp["scenario"]


@pytest.mark.parametrize("version", VERSIONS)
def test_version_specific_log_shapes(version):
    """What differs between the versions, as seen in the captures."""
    text = (setup_dir(version, "debug") / "vllm.log").read_text(encoding="utf-8")
    access = [line for line in text.splitlines() if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
    assert access
    # 0.28 wraps stdout: the prefix reaches uvicorn's access lines too.
    assert all(line.startswith("(APIServer pid=") == (version == "0.28.0") for line in access)
    bodies = [line.split(" JSON body: ", 1)[1] for line in text.splitlines() if " JSON body: " in line]
    if version == "0.31.0":
        # 0.31 slices the body [:-1] when --max-log-len is unset: the closing brace is gone.
        assert bodies and all(not b.endswith("}") for b in bodies)
    elif version == "0.32.0":
        assert bodies and all(json.loads(b) for b in bodies)
    else:
        assert bodies == []
