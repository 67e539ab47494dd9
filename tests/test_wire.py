"""One contract for both sides of the middleware line (exporter/wire.py):
the producer inside vLLM and the exporter read a request body the same way
(the two copies this replaced disagreed on max_output_tokens, Responses'
text.format and json_mode)."""

from __future__ import annotations

import json

import pytest

from exporter.assemble import AssembleContext, build_record
from exporter.correlate import Correlator
from exporter.parse import parse_line
from exporter.wire import params, utc_text

BODIES = [
    {"model": "m", "input": "hi", "max_output_tokens": 7, "text": {"format": {"type": "json_schema"}}},
    {"model": "m", "messages": [], "max_completion_tokens": 5, "max_tokens": 9, "temperature": 0.5, "n": 2},
    {"model": "m", "messages": [], "response_format": {"type": "text"}},
    {"model": "m", "messages": []},
]


def test_params_rules():
    assert params(BODIES[0]) == {"max_tokens": 7, "temperature": None, "n": None, "json_mode": True}
    assert params(BODIES[1]) == {"max_tokens": 5, "temperature": 0.5, "n": 2, "json_mode": False}
    assert params(BODIES[2])["json_mode"] is False and params(BODIES[3])["json_mode"] is False
    assert params(None) == dict.fromkeys(("max_tokens", "temperature", "n", "json_mode"))


@pytest.mark.parametrize("body", BODIES)
def test_a_logged_body_gives_the_params_the_middleware_would_send(body):
    """The record's params from vLLM's DEBUG JSON body line alone equal what
    the middleware writes for the same body."""
    rid = "chatcmpl-w1"
    lines = [f"INFO 11-22 10:00:00 [request_logger.py:84] Request w1 JSON body: {json.dumps(body)}",
             f"INFO 11-22 10:00:00 [request_logger.py:65] Received request {rid}: params: "
             "SamplingParams(n=1, temperature=1.0, max_tokens=99), lora_request: None."]
    corr = Correlator(merge_grace=0)
    for text in lines:
        corr.feed(parse_line(text), 1795341600.0)
    [entry] = corr.drain()
    rec = build_record(entry, AssembleContext(model="m"))
    want = params(body)
    for key, value in want.items():
        # vLLM's effective SamplingParams only fill what the body left open
        assert rec["params"][key] == (value if value is not None else {"n": 1, "temperature": 1.0,
                                                                        "max_tokens": 99}.get(key)), key


def test_one_time_writer():
    from exporter.record import format_ts
    assert format_ts(1795341600.1234) == utc_text(1795341600.1234) == "2026-11-22T10:00:00.123Z"


def test_record_time_memo_is_utc_text():
    """record.format_ts remembers texts per value: still utc_text's, every time."""
    import random

    from exporter.record import format_ts
    rng = random.Random(7)
    values = [1795341600 + rng.choice([0, 0.0005, 0.9994999, 0.9995, 0.9999996, 0.123, 59.9999999])
              + rng.randrange(0, 5) for _ in range(3000)] + [0, 0.0, -0.0, 1, 1.0, 951782400.5]
    for v in values + values[::-1]:
        assert format_ts(v) == utc_text(v)
