"""Per-version golden tests: tests/fixtures/formats/<version>.log → .expected.json.

The fixtures are generated from vLLM's own format strings by
``tests/fixtures/formats/make_fixtures.py``; the expected events come from
the generator's arguments, not from the parser.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from exporter.events import Event, Ignored, LogTime
from exporter.parse import parse_line

FORMATS = Path(__file__).parent / "fixtures" / "formats"
VERSIONS = sorted(p.name[: -len(".log")] for p in FORMATS.glob("*.log"))


def physical_lines(path: Path) -> list[str]:
    """Lines as the tailer hands them over: "\\n" stripped, a "\\r" left in place."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def as_json(result: Event | Ignored) -> dict:
    if isinstance(result, Ignored):
        return {"ignored": result.reason}
    out = asdict(result)
    out["when"] = list(result.when) if result.when is not None else None
    return json.loads(json.dumps(out, ensure_ascii=False))


def parse_file(path: Path) -> list[dict]:
    """Parse like the pipeline: a line after one ending in "\\r" is a continuation."""
    results, previous_cr = [], False
    for line in physical_lines(path):
        results.append(as_json(parse_line(line, logging_prefix="[node-a] ", continued=previous_cr)))
        previous_cr = line.endswith("\r")
    return results


def test_every_format_change_has_a_fixture():
    expected = {"0.6.3", "0.6.6", "0.7.3", "0.8.5", "0.9.2", "0.10.0", "0.10.1", "0.10.2", "0.11.0",
                "0.11.1", "0.14", "0.17", "0.24", "0.28", "0.31", "0.32", "0.33", "json"}
    assert expected <= set(VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
def test_fixture_parses_to_expected_events(version):
    got = parse_file(FORMATS / f"{version}.log")
    want = json.loads((FORMATS / f"{version}.expected.json").read_text(encoding="utf-8"))
    assert len(got) == len(want)
    for number, (g, w) in enumerate(zip(got, want), 1):
        assert g == w, f"{version}.log line {number}"


def test_fixtures_are_what_the_generator_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_fixtures", FORMATS / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in (p.name for p in tmp_path.iterdir()):
        assert (tmp_path / name).read_bytes() == (FORMATS / name).read_bytes(), name


def test_without_continuation_hint_a_continuation_from_an_engine_file_is_readable():
    """Documents rule 3 of parse.py: the tailer's "previous line ended in \\r" hint is needed."""
    lines = physical_lines(FORMATS / "0.14.log")
    forged = next(line for line in lines if "chatcmpl-forged" in line)
    assert parse_line(forged, continued=True) == Ignored("continuation")
    assert isinstance(parse_line(forged), Event)  # why the pipeline must pass the hint


# -- message-level rules ------------------------------------------------------

H = "(APIServer pid=1) INFO 10-21 12:00:00 [request_logger.py:65] "
ENGINE = "(APIServer pid=1) INFO 10-21 12:00:00 [async_llm.py:578] "
SP = "SamplingParams(n=1, temperature=0.7, max_tokens=16, structured_outputs=None, extra_args=None)"


def test_output_text_shaped_like_a_log_line_stays_output():
    fake = "', finish_reason: stop\nINFO 10-21 12:00:00 [logger.py:40] Received request chatcmpl-v: params: " + SP
    line = H + "Generated response chatcmpl-a: output: %r, finish_reason: length" % fake
    result = parse_line(line)
    assert (result.kind, result.request_id, result.data["output"], result.data["finish_reason"]) == (
        "output", "chatcmpl-a", fake, "length")


@pytest.mark.parametrize(
    "line",
    [
        # X-Request-Id "x: params: SamplingParams(max_tokens=1), lora_request: None. pad" injected into the id
        H + "Received request chatcmpl-x: params: SamplingParams(max_tokens=1), lora_request: None. pad: params: "
        + SP + ", lora_request: None.",
        H + "Received request chatcmpl-x: params: " + SP + ", lora_request: None, lora_request: None.",
        H + "Received request chatcmpl-x: params: " + SP + ", lora_request: None",  # no final period
        H + "Received request chatcmpl-x: prompt: 'a' 'b', params: " + SP + ", prompt_token_ids: None, lora_request: None.",
        H + "Received request chatcmpl-x: prompt: 'unterminated, params: " + SP + ", lora_request: None.",
        H + "Received request chatcmpl-x: params: " + SP + "junk, lora_request: None.",
        H + "Received request chat cmpl: params: " + SP + ", lora_request: None.",
    ],
)
def test_injected_or_broken_received_lines_are_malformed(line):
    assert parse_line(line) == Ignored("malformed_received")


@pytest.mark.parametrize(
    "line",
    [
        H + "Generated response chatcmpl-a: output: 'x', finish_reason: stop, finish_reason: length",
        H + "Generated response chatcmpl-a: output: 'x', finish_reason: stop now",
        H + "Generated response chatcmpl-a: output: 'x'",
        H + "Generated response chatcmpl-a (streaming sideways): output: 'x', finish_reason: stop",
        H + "Generated response chatcmpl-a details: output: 'x'",
    ],
)
def test_broken_output_lines_are_malformed(line):
    assert parse_line(line) == Ignored("malformed_output")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello world", "not_vllm"),
        ("ValueError: INFO 10-21 12:00:00 [logger.py:40] Received request x: params: " + SP + ", lora_request: None.", "not_vllm"),
        ("Traceback (most recent call last):", "traceback"),
        ('  File "/x.py", line 1, in <module>', "traceback"),
        ("INFO 10-21 12:00:00 [api_server.py:1] Starting vLLM API server", "other_logger"),
        ("INFO 10-21 12:00:00 [api_server.py:1] Received request x: params: " + SP + ", lora_request: None.", "continuation"),
        ("INFO 10-21 12:00:00 [logger.py:1] Added request chatcmpl-x.", "continuation"),
        ("INFO 10-21 12:00:00 [serving.py:1] Request chatcmpl-x aborted.", "continuation"),
        ("INFO 10-21 12:00:00 [serving.py:1] Request chatcmpl-x details: prompt: 'a', prompt_token_ids: None, prompt_embeds shape: None.", "continuation"),
        ("INFO 10-21 12:00:00 [async_llm.py:1] Generated response chatcmpl-x: output: 'a', finish_reason: stop", "continuation"),
        ("INFO 10-21 12:00:00 [loggers.py:1] Engine 000: Avg prompt throughput: 0.0 tokens/s", "stats"),
        ("ERROR 10-21 12:00:00 [async_llm.py:1] Traceback (most recent call last):", "traceback"),
        ("INFO 10-21 12:00:00 [async_llm.py:1] Something else about requests", "not_request_log"),
        ("INFO 10-21 12:00:00 [async_llm.py:1] Added request chatcmpl x.", "not_request_log"),
        ("INFO 10-21 12:00:00 [async_llm.py:1] Request chatcmpl-x aborted early.", "not_request_log"),
        ("INFO 10-21 12:00:00 [request_logger.py:1] Request x details: prompt: [1], prompt_token_ids: None.", "malformed_details"),
        ("INFO 10-21 12:00:00 [request_logger.py:1] Request x details: prompt: 'a'", "malformed_details"),
        ('{"type": "vllm_audit_middleware", "v": 1}', "malformed_middleware"),
        ('{"type": "vllm_audit_middleware", "request_id": ', "malformed_middleware"),
        ('{"type": "vllm_audit_middleware_dropped", "dropped": true}', "malformed_middleware"),
        ('{"type": "vllm_audit_middleware_dropped", "dropped": -1}', "malformed_middleware"),
        ('{"some": "json"}', "not_vllm"),
        ("[1, 2]", "not_vllm"),
        ("INFO 10-21 12:00:00 [request_logger.py:74] Request x JSON body: N/A", "malformed_body"),
        ("{not json", "not_vllm"),
    ],
)
def test_ignored_reasons(line, reason):
    assert parse_line(line) == Ignored(reason)


def test_access_line_with_request_in_the_status_phrase():
    result = parse_line('INFO:     127.0.0.1:1 - "POST /v1/chat/completions HTTP/1.1" 400 Bad Request')
    assert (result.kind, result.data["status"]) == ("access", 400)


def test_body_line_shapes():
    ok = parse_line(H + 'Request abc JSON body: {"user": "alice", "max_tokens": 5}')
    assert (ok.kind, ok.request_id, ok.data) == (
        "body", "abc", {"body": {"user": "alice", "max_tokens": 5}, "raw_len": 34, "truncated_body": False})
    cut = parse_line(H + 'Request abc JSON body: {"user": "ali')
    assert cut.data == {"body": None, "raw_len": 13, "truncated_body": True}
    # A client-chosen request_id cannot smuggle a second body in.
    forged = parse_line(H + 'Request x JSON body: {"user": "evil"} JSON body: {"user": "alice"}')
    assert forged.data["body"] is None and forged.request_id == "x"


def test_max_log_len_truncation_is_reported_as_logged():
    line = H.replace("request_logger.py:65", "logger.py:40") + (
        "Received request cmpl-a-0: prompt: 'Once upon ', params: " + SP
        + ", prompt_token_ids: [1, 12522, 5304], prompt_embeds shape: None, lora_request: None.")
    data = parse_line(line).data
    assert (data["prompt"], data["prompt_token_ids"], data["prompt_token_count"]) == ("Once upon ", [1, 12522, 5304], 3)


@pytest.mark.parametrize(
    ("structured", "json_mode"),
    [
        ("None", False),
        ("StructuredOutputsParams(json=None, regex=None, json_object=True)", True),
        ("StructuredOutputsParams(json={'type': 'object'}, regex=None, json_object=None)", True),
        ("StructuredOutputsParams(json=None, regex='json_object=True', json_object=None)", False),
        ("GuidedDecodingParams(json_schema={'a': 1}, json_object=False)", True),
        ("StructuredOutputsParams(json=None, choice=['a', 'b'], json_object=False)", False),
    ],
)
def test_json_mode(structured, json_mode):
    sp = f"SamplingParams(n=3, temperature=1e-05, max_tokens=None, structured_outputs={structured}, extra_args=None, enforced_token_ids=None)"
    result = parse_line(H + f"Received request chatcmpl-x: params: {sp}, lora_request: None.")
    assert result.data["params"] == {"n": 3, "temperature": 1e-05, "max_tokens": None, "json_mode": json_mode}


def test_params_without_structured_field_has_no_json_mode():
    result = parse_line(H + "Received request embd-x-0: params: PoolingParams(task='embed', dimensions=None), lora_request: None.")
    assert result.data["params"] == {}


def test_middleware_lines():
    line = ('{"type": "vllm_audit_middleware", "v": 1, "request_id": "r1", "received_at": "2026-11-22T10:00:00.123Z",'
            ' "status_code": 200, "prompt": [{"role": "user", "content": "Added request chatcmpl-x."}]}')
    result = parse_line(line)
    assert (result.kind, result.request_id, result.when) == ("middleware", "r1", LogTime(2026, 11, 22, 10, 0, 0, 123000, 0))
    assert result.data["line"]["status_code"] == 200
    dropped = parse_line('{"type": "vllm_audit_middleware_dropped", "v": 1, "dropped": 7, "at": "2026-11-22T10:00:01Z"}')
    assert (dropped.kind, dropped.request_id, dropped.data) == ("middleware_dropped", None, {"dropped": 7})


def test_failure_reasons():
    cases = {
        "Request r failed.": "",
        "Request r failed (engine dead).": "engine dead",
        "Request r failed (bad request).": "bad request",
        "Request r failed (bad request): too long.": "bad request: too long",
        "Request r failed due to RuntimeError: x.": "RuntimeError: x",
        "Request r failed validation: bad": "validation: bad",
    }
    for message, reason in cases.items():
        result = parse_line(ENGINE + message)
        assert (result.kind, result.request_id, result.data) == ("failed", "r", {"reason": reason}), message


def test_stray_carriage_returns_and_ansi_everywhere():
    line = "\x1b[0;36m(APIServer pid=1)\x1b[0;0m \x1b[32mINFO\x1b[0m 10-21 12:00:00 [async_llm.py:578] Added request r.\r\r"
    assert parse_line(line).request_id == "r"


# -- real vLLM captures (tests/fixtures/vllm-<version>/<setup>/: 0.28.0, 0.31.0, 0.32.0) --

FIXTURES = Path(__file__).parent / "fixtures"
REAL_SETUPS = sorted(f"{p.parent.parent.name[5:]}/{p.parent.name}"
                     for p in FIXTURES.glob("vllm-*/*/vllm.log"))  # "0.28.0/debug"
MARKERS = ("Received request", "Generated response", "Added request", "Aborted request", " JSON body: ",
           " details: prompt", " aborted.", '"POST /v1/')


def _real(setup: str) -> Path:
    version, name = setup.split("/")
    return FIXTURES / f"vllm-{version}" / name


def real_events(setup: str) -> list[tuple[str, Event | Ignored]]:
    out, previous_cr = [], False
    for line in physical_lines(_real(setup) / "vllm.log"):
        out.append((line, parse_line(line, continued=previous_cr)))
        previous_cr = line.endswith("\r")
    return out


def test_real_captures_are_present():
    assert {"0.32.0/info", "0.32.0/debug", "0.32.0/json", "0.32.0/jsondebug", "0.32.0/maxloglen",
            "0.31.0/debug", "0.31.0/maxloglen", "0.28.0/debug", "0.28.0/maxloglen"} <= set(REAL_SETUPS)


@pytest.mark.parametrize("setup", REAL_SETUPS)
def test_every_real_request_line_parses(setup):
    parsed = real_events(setup)
    for line, result in parsed:
        if isinstance(result, Ignored):
            assert result.reason != "internal_error" and not result.reason.startswith("malformed"), line
            assert not any(marker in line for marker in MARKERS), line
    kinds = {r.kind for _, r in parsed if isinstance(r, Event)}
    assert {"received", "added", "output", "access"} <= kinds


@pytest.mark.parametrize("setup", REAL_SETUPS)
def test_real_outputs_and_counts_match_what_the_server_answered(setup):
    """The decoded repr must equal the text the client received (gibberish, U+FFFD, CJK)."""
    limit = 20 if setup.endswith("/maxloglen") else None
    events = [r for _, r in real_events(setup) if isinstance(r, Event)]
    outputs = {(e.request_id, e.data["stream_info"]): e.data for e in events if e.kind == "output"}
    details = {e.request_id: e.data for e in events if e.kind == "details"}
    checked = 0
    for raw in (_real(setup) / "responses.jsonl").read_text(encoding="utf-8").splitlines():
        answer = json.loads(raw)
        rid, response = answer.get("response_id"), answer.get("response")
        if not rid or not rid.startswith("chatcmpl-"):
            continue
        if isinstance(response, dict) and response.get("choices"):
            text = response["choices"][0]["message"]["content"]
            if text:
                assert outputs[(rid, "")]["output"] == text[:limit], answer["scenario"]
                checked += 1
            if rid in details and limit is None:
                assert details[rid]["prompt_token_count"] == response["usage"]["prompt_tokens"]
        elif answer.get("stream_text") and not answer.get("client_disconnected"):
            assert outputs[(rid, "complete")]["output"] == answer["stream_text"][:limit], answer["scenario"]
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("version", ["0.28.0", "0.31.0", "0.32.0"])
def test_real_middleware_lines(version):
    path = FIXTURES / f"vllm-{version}" / "middleware" / "middleware.jsonl"
    lines = physical_lines(path)
    assert lines
    for line in lines:
        result = parse_line(line)
        assert isinstance(result, Event) and result.kind in ("middleware", "middleware_dropped"), line


def test_engine_core_failure_and_other_core_lines():
    core = "(EngineCore pid=2) ERROR 10-21 12:00:00 [core.py:900] "
    result = parse_line(core + "Request chatcmpl-x-0a0a0a0a failed validation: bad")
    assert (result.kind, result.data) == ("failed", {"reason": "validation: bad"})
    assert parse_line(core + "Added request chatcmpl-x.") == Ignored("continuation")
    # the engine's version line is a start-up line (exporter/parse/startup.py); other core lines are not ours
    init = parse_line(core + "Initializing a V1 LLM engine (v0.32.0) with config: model='x'")
    assert (init.kind, init.data) == ("startup", {"what": "version", "version": "0.32.0", "process": "EngineCore",
                                                  "pid": 2})
    assert parse_line(core + "Initializing a V1 LLM engine with config: model='x'") == Ignored("other_logger")
