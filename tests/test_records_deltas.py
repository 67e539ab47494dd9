"""Streaming-delta-heavy traffic from the real vLLM 0.32 CPU build.

``tests/fixtures/vllm-0.32.0/deltas`` (tools/record_fixtures.py --setup
deltas): 16 streams of 200 tokens, four at a time, logged at DEBUG with
``--enable-log-deltas``, so each generated token is a log line pair, ~4 650
delta lines in all. What vLLM really writes there is not one line per token:
it logs a delta only when it has text (tokens that end inside a UTF-8
sequence are merged into the next delta) and, for some streams, never logs
the last delta that carries the finish reason. The records must still be
exact: one per stream, the streamed text byte for byte, the user from the
logged body, and no number that the log does not give (the token count of
a stream whose deltas were merged is unknown: null, never a guess).
"""

from __future__ import annotations

import re

from real_captures import replay, responses, setup_dir

VERSION, SETUP = "0.32.0", "deltas"


def _delta_ids(log: str, request_id: str) -> int:
    pat = re.compile(re.escape(request_id) + r" \(streaming delta\) details: output_token_ids: \[([^\]]*)\]")
    return sum(len(m.group(1).split(",")) for m in pat.finditer(log))


def test_the_capture_is_delta_heavy_as_vllm_writes_it():
    log = (setup_dir(VERSION, SETUP) / "vllm.log").read_text(encoding="utf-8")
    sent = responses(VERSION, SETUP)
    assert len(sent) == 16 and all(r["status"] == 200 and r["finish_reason"] == "length" for r in sent)
    assert log.count("(streaming delta)") > 4000
    # merged deltas: fewer logged token ids than the 200 each stream produced
    logged = [_delta_ids(log, r["response_id"]) for r in sent]
    assert all(0 < n <= 200 for n in logged) and min(logged) < 200, logged


def test_one_exact_record_per_stream(tmp_path):
    sent = {r["response_id"]: r for r in responses(VERSION, SETUP)}
    records = replay(tmp_path, [setup_dir(VERSION, SETUP) / "vllm.log"])
    assert sorted(r["request_id"] for r in records) == sorted(sent)
    for rec in records:
        want = sent[rec["request_id"]]
        assert rec["output"] == want["stream_text"], rec["request_id"]
        assert rec["stream"] is True and rec["status"] == "completed" and rec["endpoint"] == "chat"
        assert rec["user"] == want["request_body"]["user"]
        assert rec["params"]["max_tokens"] == 200
        usage = want["usage"]
        if usage:  # the stream's own usage chunk (stream_options.include_usage)
            assert rec["prompt_tokens"] == usage["prompt_tokens"], rec["request_id"]
        # never a wrong count: unknown (merged deltas) is null
        assert rec["completion_tokens"] in (None, 200), rec
        # the finish reason only when vLLM logged the delta that carries it
        assert rec["finish_reason"] in (None, want["finish_reason"]), rec
        assert rec["empty_response"] is False
