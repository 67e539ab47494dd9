"""--tokenizer: token counts from the served model's own tokenizer.

The real DEBUG capture is replayed with its logged prompt token-id lists
removed (as vLLM <= 0.11 logs chat prompts: text, ``prompt_token_ids: None``),
so only the text is left; the tiny model's tokenizer (made offline by
tools/make_tiny_model.py, installed by ``tools/setup.sh --live``) must then give
exactly the prompt token counts vLLM reported in ``usage``.
"""

import json
import os
import re
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug"
MODEL = Path(os.environ.get("VLLM_AUDIT_CACHE", Path.home() / ".cache" / "vllm-audit")) / "tiny-llama"


def test_prompt_tokens_from_the_tokenizer_equal_usage(tmp_path):
    if not (MODEL / "tokenizer.json").exists():
        pytest.fail(f"{MODEL} missing: run `bash tools/setup.sh --live` (makes the tiny model)")
    text = (CAPTURE / "vllm.log").read_text()
    stripped = re.sub(r"prompt_token_ids: \[[0-9, ]*\]", "prompt_token_ids: None", text)
    assert stripped != text
    log = tmp_path / "vllm.log"
    log.write_text(stripped)
    argv = ["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--model", "tiny",
            "--tokenizer", str(MODEL), "--no-progress"]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    records = {json.loads(x)["request_id"]: json.loads(x)
               for x in next((tmp_path / "a").glob("audit-*.jsonl")).read_text().splitlines()}
    checked = 0
    for line in (CAPTURE / "responses.jsonl").open():
        resp = json.loads(line)
        usage = resp.get("usage") or (resp.get("response") or {}).get("usage")
        rid = resp.get("response_id")
        if not usage or not rid or not rid.startswith("chatcmpl-"):
            continue
        rec = records[rid]
        assert rec["prompt_tokens"] == usage["prompt_tokens"], resp["scenario"]
        assert rec["tokens_source"] in ("tokenizer", "usage"), resp["scenario"]
        checked += 1
    assert checked >= 10
    assert any(r["tokens_source"] == "tokenizer" for r in records.values())


def test_a_bad_tokenizer_path_fails_at_start_up(tmp_path):
    from exporter.settings import SettingsError
    argv = ["replay", str(CAPTURE / "vllm.log"), "--tokenizer", str(tmp_path / "nope")]
    with pytest.raises(SettingsError, match="--tokenizer"):
        build_settings("replay", make_parser().parse_args(argv), {})
