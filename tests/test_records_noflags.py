"""Replay each real capture with no flag but the file: model and token counts exact or null.

Issue 13's "done when": a new user replays a vLLM log without telling the
exporter anything (no ``--model``, no ``--max-log-len``) and every record
still names the model vLLM served and has token counts that are exact or
null — never the length of a list ``--max-log-len`` cut.

Truth comes from the recorded API responses: ``usage`` of the request
itself, and for the prompt (its token count is fixed by the prompt text and
the tokenizer) the usage the same scenario got in any set-up of the same
version (a stream without ``include_usage`` has none of its own).

Both hold because the exporter learns vLLM's settings (served model name,
``max_log_len``) from its start-up lines (issue 13 item 1, exporter/learned.py).
"""

from __future__ import annotations

import pytest

from real_captures import LOG_ONLY_SETUPS, log_id, replay, responses, setup_dir, usage

def _prompt_truth(version: str) -> dict[str, int]:
    truth: dict[str, int] = {}
    for setup in LOG_ONLY_SETUPS[version]:
        for resp in responses(version, setup):
            n = usage(resp).get("prompt_tokens")
            if n is not None and resp["status"] == 200:
                assert truth.setdefault(resp["scenario"], n) == n, resp["scenario"]
    return truth


def _cases() -> list:
    return [pytest.param(v, s, id=f"{v}-{s}") for v, setups in LOG_ONLY_SETUPS.items() for s in setups]


def _records(version: str, setup: str, tmp_path) -> list[tuple[dict, dict]]:
    """(response, record) for every request the log shows, replayed with no flags."""
    log = setup_dir(version, setup) / "vllm.log"
    text = log.read_text(errors="replace")
    by_id = {r["request_id"]: r for r in replay(tmp_path, [log])}
    pairs = [(resp, by_id[log_id(resp)]) for resp in responses(version, setup)
             if resp.get("response_id") and log_id(resp) in text]
    assert len(pairs) >= 20, len(pairs)  # every scenario that reaches the log
    return pairs


@pytest.mark.parametrize("version,setup", _cases())
def test_model_is_the_served_model(version, setup, tmp_path):
    wrong = {resp["scenario"]: rec["model"] for resp, rec in _records(version, setup, tmp_path)
             if rec["model"] != "tiny"}
    assert not wrong, wrong


@pytest.mark.parametrize("version,setup", _cases())
def test_token_counts_exact_or_null(version, setup, tmp_path):
    prompt_truth = _prompt_truth(version)
    wrong, known = {}, 0
    for resp, rec in _records(version, setup, tmp_path):
        name = resp["scenario"]
        pt = rec["prompt_tokens"]
        if pt is not None:
            known += 1
            if pt != prompt_truth.get(name):
                wrong[name] = ("prompt_tokens", pt, prompt_truth.get(name))
        ct, truth = rec["completion_tokens"], usage(resp).get("completion_tokens")
        if ct is not None and ct != truth:
            wrong[name] = ("completion_tokens", ct, truth)
    assert not wrong, wrong
    if setup in ("debug", "forceusage", "jsondebug"):
        assert known > 0  # logged ids give exact counts there: the check is not vacuous
