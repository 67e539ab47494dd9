"""Replay real vLLM 0.32 captures; check every record against the API responses.

The captures (tests/fixtures/vllm-0.32.0/<setup>/) were recorded from the real
vLLM CPU build by tools/record_fixtures.py: vllm.log is what the server
wrote, responses.jsonl what each client received. Every expectation below is
derived from those responses — what the log of that set-up can support must
be right, the rest must be null.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.32.0"
LOG_ONLY_SETUPS = ["info", "debug", "json", "jsondebug", "maxloglen", "nodeltas", "forceusage"]
DEBUG_SETUPS = {"debug", "jsondebug", "maxloglen", "forceusage"}  # request logger at DEBUG
JSON_SETUPS = {"json", "jsondebug"}  # JSON formatter: millisecond timestamps
MAX_LOG_LEN = {"maxloglen": 20}


def _responses(setup: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / setup / "responses.jsonl").open()]


def _replay(setup: str, tmp_path: Path, *files: Path, flags: bool = True) -> list[dict]:
    """``flags=False``: the file alone; the served model and --max-log-len
    must then come from vLLM's start-up line (issue 13)."""
    argv = ["replay", *map(str, files), "--archive-dir", str(tmp_path / "archive"), "--no-progress"]
    if flags:
        argv += ["--model", "tiny"]
    if flags and setup in MAX_LOG_LEN:
        argv += ["--max-log-len", str(MAX_LOG_LEN[setup])]
    args = make_parser().parse_args(argv)
    settings = build_settings("replay", args, {})
    rt, _summary = replay_into(settings, quiet=True)
    records = []
    for f in sorted((tmp_path / "archive").glob("audit-*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines()]
    return records


def _log_id(resp: dict) -> str:
    rid = resp["response_id"]
    return rid + "-0" if rid.startswith("cmpl-") else rid


def _text(resp: dict) -> list[str]:
    if "stream_text" in resp:
        return [resp["stream_text"]]
    out = []
    for ch in sorted(resp["response"]["choices"], key=lambda c: c["index"]):
        out.append(ch["message"]["content"] if "message" in ch else ch["text"])
    return out


def _finish(resp: dict) -> str | None:
    if "stream_text" in resp:
        return resp.get("finish_reason")
    return resp["response"]["choices"][0]["finish_reason"]


def _usage(resp: dict) -> dict:
    return resp.get("usage") or (resp.get("response") or {}).get("usage") or {}


@pytest.mark.parametrize("flags", [True, False], ids=["flags", "no_flags"])
@pytest.mark.parametrize("setup", LOG_ONLY_SETUPS)
def test_one_correct_record_per_logged_request(setup, flags, tmp_path):
    if not (FIXTURES / setup / "vllm.log").exists():
        pytest.fail(f"fixture {setup} missing: run tools/record_fixtures.py --setup {setup}")
    responses = _responses(setup)
    log_text = (FIXTURES / setup / "vllm.log").read_text(errors="replace")
    records = _replay(setup, tmp_path, FIXTURES / setup / "vllm.log", flags=flags)
    by_id: dict[str, list[dict]] = {}
    for rec in records:
        by_id.setdefault(rec["request_id"], []).append(rec)

    # Nothing forged, nothing doubled, nothing invented.
    assert not any("forged" in rid for rid in by_id), sorted(by_id)
    assert all(len(v) == 1 for v in by_id.values()), {k: len(v) for k, v in by_id.items() if len(v) > 1}
    logged = [r for r in responses if r.get("response_id") and _log_id(r) in log_text]
    assert len(records) == len(logged), (len(records), len(logged))

    limit = MAX_LOG_LEN.get(setup)
    stream_finish_known = 0
    for resp in logged:
        rec = by_id[_log_id(resp)][0]
        name = resp["scenario"]
        body = resp["request_body"]
        usage = _usage(resp)
        texts = _text(resp)
        assert rec["model"] == "tiny", name
        assert rec["stream"] in (bool(body.get("stream")), None), name
        assert rec["endpoint"] == ("chat" if resp["endpoint"].endswith("chat/completions") else "completion")

        # user: only the DEBUG JSON body carries it, and only when its id is the engine id
        custom_id = any(k.lower() == "x-request-id" for k in resp["request_headers"])
        if setup in DEBUG_SETUPS and not custom_id and limit is None:
            assert rec["user"] == body.get("user"), name
        else:
            assert rec["user"] in (None, body.get("user")), name

        # prompt tokens: exact from logged ids (DEBUG) unless --max-log-len cut the list
        # (a stream without include_usage has no usage to compare with; its
        # count is then only checked to be present and from the logged ids)
        truth = usage.get("prompt_tokens")
        if setup in DEBUG_SETUPS and (limit is None or (truth is not None and truth < limit)):
            assert rec["prompt_tokens"] == truth if truth is not None else isinstance(
                rec["prompt_tokens"], int), name
            assert rec["tokens_source"] == "logged_ids", name
        else:
            assert rec["prompt_tokens"] is None, name

        if rec["completion_tokens"] is not None and usage:
            assert rec["completion_tokens"] == usage["completion_tokens"], name

        if resp.get("client_disconnected"):
            assert rec["status"] in ("aborted", "completed"), name
            continue
        if rec["status"] == "completed":
            # Only what was logged: the (full or truncated) text of choice 0
            if limit is None:
                assert rec["output"] == texts[0], name
            else:
                assert texts[0].startswith(rec["output"]), name
            if "stream_text" in resp:
                # A stream's finish reason is only on its last *content* delta;
                # when the final chunk carried no text (or deltas are off) the
                # log cannot say it: null, never wrong.
                assert rec["finish_reason"] in (None, _finish(resp)), name
                if setup == "nodeltas" or texts[0] == "":
                    assert rec["finish_reason"] is None, name
                else:
                    stream_finish_known += rec["finish_reason"] is not None
            else:
                assert rec["finish_reason"] == _finish(resp), name
            assert rec["empty_response"] == (texts[0] == ""), name
        else:
            # stock vLLM logs no empty non-streaming answer and no completions output
            assert rec["status"] == "incomplete", name
            assert (texts[0] == "" and "stream_text" not in resp) or resp["endpoint"].endswith("/completions"), name
            assert rec["output"] is None and rec["finish_reason"] is None and rec["empty_response"] is None
        assert "streaming_complete" != rec["finish_reason"]
        if setup in JSON_SETUPS and rec["status"] == "completed":
            assert rec["latency_seconds"] is not None and rec["latency_seconds"] >= 0, name
        elif not rec["sources"] == ["vllm_log", "middleware"]:
            assert rec["latency_seconds"] is None, name  # whole-second stamps: unknown
    if setup != "nodeltas":
        assert stream_finish_known > 0  # the rule above is not vacuous
