"""Hypothesis strategies for the correlator's entries and the assembly
context, as build_record sees them (shared by the pure-Python reference
differential, tests/test_assemble_differential.py, and the C-against-Python
one, tests/test_assemble_c.py)."""

from __future__ import annotations

from hypothesis import strategies as st

from exporter.assemble import AssembleContext
from exporter.record import ENGINE_FIELDS

SMALL_TEXT = st.sampled_from(["", "hi", "你好", "x" * 12, "<streaming_complete: 7 tokens>", " ", "{}", "[1]"]) \
    | st.text(max_size=6)
MAYBE_TEXT = st.none() | SMALL_TEXT
NUMBER = st.none() | st.integers(-1, 40) | st.sampled_from([0.0, 0.7, 1.5])
TIME = st.none() | st.sampled_from([0.0, 1795314449.0, 1795314449.123, 1795314450.5])
ISO = st.none() | st.sampled_from(["2026-11-22T02:27:29.123Z", "2026-11-22T02:27:29+00:00", "garbage", "", 5])
IDS = st.none() | st.integers(0, 40) | st.lists(st.integers(0, 9), max_size=12)
FLAGS = st.none() | st.lists(st.sampled_from(["body_dropped", "prompt_escaped", "x"]), max_size=3)
ENDPOINTS = st.sampled_from([None, "chat", "completion", "responses", "embeddings", "other"])
VALUE = st.none() | st.booleans() | st.integers(-2, 5) | st.sampled_from(["yes", "", 0.0])


def subdict(fields: dict):
    """A dict holding any subset of ``fields`` (keys in a drawn order)."""
    return st.lists(st.sampled_from(sorted(fields)), unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys}).map(
            lambda d, keys=keys: {k: d[k] for k in keys}))


PARAMS = subdict({"max_tokens": NUMBER, "temperature": NUMBER, "n": NUMBER, "json_mode": VALUE, "extra": VALUE})
FORMAT = st.none() | st.sampled_from(["json_object", {"type": "json_object"}, {"type": "json_schema"},
                                      {"type": "text"}, {}, {"type": None}])
BODY = st.none() | st.sampled_from(["not a dict", [1], 3]) | subdict({
    "model": MAYBE_TEXT, "user": st.none() | SMALL_TEXT | st.integers(0, 9), "stream": VALUE,
    "max_tokens": NUMBER, "max_completion_tokens": NUMBER, "max_output_tokens": NUMBER, "temperature": NUMBER,
    "n": NUMBER, "response_format": FORMAT, "text": st.none() | st.sampled_from(["t"]) | subdict({"format": FORMAT}),
    "input_flags": FLAGS})
IDENTITY = st.none() | subdict({
    "invalid_reason": st.none() | st.sampled_from(["expired", "missing"]),
    "headers": st.none() | st.dictionaries(st.sampled_from(["x-user", "x-id"]), SMALL_TEXT, max_size=2),
    "user_field": MAYBE_TEXT, "api_key_hash": st.none() | st.sampled_from(["abc123", "ffff"])})
CHOICE = subdict({"index": st.none() | st.integers(0, 3), "text": MAYBE_TEXT | st.just(["x"]),
                  "finish_reason": st.none() | st.sampled_from(["stop", "length", "None", "streaming_complete"])})
MW = subdict({
    "received_at": ISO, "response_id": MAYBE_TEXT, "request_id": MAYBE_TEXT, "endpoint": ENDPOINTS,
    "model": MAYBE_TEXT, "user": st.none() | st.sampled_from(["alice", "key:abc", "bob", "x-user-value"]),
    "identity_source": st.none() | st.sampled_from(["jwt", "header", "user_field", "api_key"]),
    "identity": IDENTITY, "stream": VALUE,
    "prompt": st.none() | SMALL_TEXT | st.just([{"role": "user", "content": "hi"}]),
    "choices": st.none() | st.lists(CHOICE, max_size=3), "params": st.none() | PARAMS,
    "usage": st.none() | subdict({"prompt_tokens": NUMBER, "completion_tokens": NUMBER}),
    "rejected_prompt_tokens": NUMBER,
    "error": st.none() | st.sampled_from(["at least 9000 input tokens", "boom", ""]),
    "status": st.none() | st.sampled_from(["completed", "rejected", "aborted", ""]), "empty_response": VALUE,
    "latency_seconds": NUMBER, "ttft_seconds": NUMBER, "status_code": st.none() | st.sampled_from([200, 400]),
    "client": MAYBE_TEXT, "input_flags": FLAGS})
OUTPUT = st.fixed_dictionaries({"text": MAYBE_TEXT, "finish_reason": st.none() | st.sampled_from(
    ["stop", "length", "None", "streaming_complete"]), "ids": st.none() | st.integers(0, 30)})
LOGGED = subdict({"prompt": MAYBE_TEXT, "prompt_token_ids": IDS, "params": st.none() | PARAMS})
ENTRY = st.fixed_dictionaries({
    "key": st.sampled_from(["k1", "0000000005000000"]),
    "log_id": st.none() | st.sampled_from(["chatcmpl-abc", "chat-1", "cmpl-x-0", "embd-y-1", "resp_z", "odd", ""]),
    "endpoint": ENDPOINTS, "first_t": TIME, "last_t": TIME, "received_t": TIME, "done_t": TIME,
    "status": st.none(), "received": st.none() | LOGGED, "details": st.none() | LOGGED, "body": BODY,
    "outputs": st.lists(OUTPUT, max_size=3), "deltas": st.integers(0, 3), "delta_ids": st.none() | st.integers(0, 9),
    "delta_ids_known": st.booleans(), "last_finish": st.none() | st.sampled_from(["stop", "length"]),
    "complete": st.lists(MAYBE_TEXT, max_size=3), "out_ids": st.none() | st.integers(0, 30),
    "mw": st.none() | MW, "aborted": st.booleans(), "failed": st.none() | st.sampled_from(["oom", ""]),
    "stream": st.none() | st.booleans(), "precise": st.booleans(), "order": st.just(0),
}, optional={
    "summary": st.none() | subdict({"model": MAYBE_TEXT, "prompt_tokens": NUMBER, "completion_tokens": NUMBER,
                                    "finish_reason": st.none() | st.sampled_from(["abort", "stop"])}),
    "cfg": st.none() | subdict({"max_log_len": st.none() | st.integers(1, 20), "model": MAYBE_TEXT}),
    "engine": st.none() | subdict({k: NUMBER for k in ENGINE_FIELDS}),
    "out_ids_truncated": st.booleans(),
})


def _count(text, is_chat):
    return None if "x" in text else len(text) + is_chat


CONTEXT = st.builds(AssembleContext, model=st.none() | st.just("served"), instance=st.none() | st.just("i-1"),
                    max_log_len=st.none() | st.integers(1, 20), oversized_input_tokens=st.integers(0, 30),
                    count_tokens=st.none() | st.just(_count))
