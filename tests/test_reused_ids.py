"""A client that reuses its X-Request-Id: two requests, two records — in
replay and backlog reading (one file read to its end before the other) as
when the lines are fed live. Built from one real vLLM 0.32 request
(middleware capture) and a copy of it 30 s later with other texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "middleware"
RID = "e1a1394030b140db9169418c708c738a"


def _pair():
    log = [ln for ln in (CAPTURE / "vllm.log").read_text(encoding="utf-8").splitlines(keepends=True) if RID in ln]
    mw = next(ln for ln in (CAPTURE / "middleware.jsonl").read_text(encoding="utf-8").splitlines() if RID in ln)
    first = json.loads(mw)
    assert len(log) == 5 and first["received_at"].startswith("2026-11-22T02:39:33")
    # The second request: 30 s later, another prompt and answer.
    log2 = [ln.replace("02:39:33", "02:40:03").replace("你好，世界！", "second question")
            .replace("'� o好?好?好?好?好?好3ɤ'", "'second answer'") for ln in log]
    second = dict(first, received_at=first["received_at"].replace("02:39:33", "02:40:03"),
                  finished_at=first["finished_at"].replace("02:39:33", "02:40:03"),
                  prompt=[{"role": "user", "content": "second question"}],
                  choices=[{"index": 0, "text": "second answer", "finish_reason": "length"}])
    return "".join(log + log2), json.dumps(first, ensure_ascii=False) + "\n" + json.dumps(second, ensure_ascii=False) + "\n"


def _records(tmp_path, files):
    argv = ["replay", *map(str, files), "--archive-dir", str(tmp_path / "archive"), "--no-progress",
            "--model", "tiny", "--merge-grace", "0.5"]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    return [json.loads(x) for p in sorted((tmp_path / "archive").glob("audit-*.jsonl"))
            for x in p.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("order", ["log_first", "middleware_first"])
def test_a_reused_request_id_is_two_records_in_replay(tmp_path, order):
    log_text, mw_text = _pair()
    (tmp_path / "vllm.log").write_text(log_text, encoding="utf-8")
    (tmp_path / "mw.jsonl").write_text(mw_text, encoding="utf-8")
    files = [tmp_path / "vllm.log", tmp_path / "mw.jsonl"]
    recs = _records(tmp_path, files if order == "log_first" else files[::-1])
    assert len(recs) == 2
    a, b = sorted(recs, key=lambda r: r["ts"])
    assert a["ts"].startswith("2026-11-22T02:39:33") and b["ts"].startswith("2026-11-22T02:40:03")
    assert "你好" in a["prompt"] and a["output"].startswith("�")
    assert "second question" in b["prompt"] and b["output"] == "second answer"
    for r in (a, b):
        assert r["sources"] == ["vllm_log", "middleware"] and r["status"] == "completed"
        assert r["request_id"] == f"chatcmpl-{RID}"
