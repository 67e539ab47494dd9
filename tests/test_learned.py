"""vLLM's settings learned from its own start-up lines (issue 13, item 1).

Start-up lines come from the real vLLM 0.32 captures (tests/fixtures/vllm-0.32.0)
or are rendered here from vLLM's own format strings with Python's own reprs
(``"args: %s" % argparse.Namespace(...)``, ``"non-default args: %s" % dict``),
exactly as vLLM renders them; requests are judged against the API responses
the capture recorded.
"""

from __future__ import annotations

import argparse
import calendar
import json
import logging
import re
from pathlib import Path

import pytest

from exporter import learned as learn
from exporter.record import CHAIN_FIELDS
from exporter.checkpoint import read_checkpoint
from exporter.cli import make_parser
from exporter.events import STARTUP
from exporter.parse import parse_line
from exporter.replay import replay_into
from exporter.runtime import build
from exporter.settings import build as build_settings

FIX = Path(__file__).parent / "fixtures" / "vllm-0.32.0"
MAXLOGLEN = FIX / "maxloglen" / "vllm.log"
FORCEUSAGE = FIX / "forceusage" / "vllm.log"
LIMIT = 20  # the capture's --max-log-len
_TEXT_TIME = re.compile(rb"INFO (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")


def _startup(line: str) -> dict | None:
    ev = parse_line(line)
    return ev.data if getattr(ev, "kind", None) == STARTUP else None


def _line_with(path: Path, needle: str) -> str:
    return next(x.rstrip("\n") for x in path.open(encoding="utf-8") if needle in x)


# ---------------------------------------------------------------- parsing


def test_real_032_text_and_json_start_up_lines():
    text = _startup(_line_with(MAXLOGLEN, "non-default args"))
    assert text["what"] == "args" and text["process"] == "APIServer" and text["pid"] == 10910
    assert text["args"]["max_log_len"] == 20 and text["args"]["served_model_name"] == ["tiny"]
    assert text["args"]["max_model_len"] == 512 and text["args"]["enable_log_outputs"] is True
    js = _startup(_line_with(FIX / "json" / "vllm.log", "non-default args"))
    assert js["args"]["served_model_name"] == ["tiny"] and js["pid"] == 9731
    version = _startup(_line_with(FIX / "json" / "vllm.log", "server version"))
    assert version == {"what": "version", "version": "0.32.0", "model": "/root/.cache/vllm-audit/tiny-llama",
                       "process": "APIServer", "pid": 9731}
    assert _startup(_line_with(MAXLOGLEN, "Starting vLLM server on"))["what"] == "listening"


def test_older_formats_rendered_from_vllms_format_strings():
    # 0.6.3-0.8.x: api_server.py logs "args: %s" with the argparse Namespace (every argument)
    ns = argparse.Namespace(host=None, port=8000, model="facebook/opt-125m", served_model_name=["a", "b"],
                            max_log_len=10, max_model_len=None, disable_log_requests=False, lora_modules=None)
    line = "INFO 10-21 12:00:00 api_server.py:585] args: %s" % ns  # <=0.7.3: no "[" before the file
    data = _startup(line)
    assert data["full"] is True and data["args"]["served_model_name"] == ["a", "b"]
    s = learn.apply(None, None, data, None)[0]
    assert (s["served"], s["max_log_len"], s["log_requests"]) == (["a", "b"], 10, True)
    # 0.9-0.2x: entrypoints/utils.py logs "non-default args: %s" with a dict
    args = {"model": "Qwen/Qwen3-0.6B", "max_log_len": 12, "enable_log_requests": True,
            "compilation_config": {"level": 3}, "lora_modules": None}
    data = _startup("(APIServer pid=7) INFO 10-21 12:00:00 [utils.py:326] non-default args: %s" % args)
    s = learn.apply(None, None, data, None)[0]
    assert s["served"] == ["Qwen/Qwen3-0.6B"] and s["max_log_len"] == 12 and s["pid"] == 7
    assert _startup("INFO 10-21 12:00:00 api_server.py:584] vLLM API server version %s" % "0.6.3.post1") \
        == {"what": "version", "version": "0.6.3.post1", "process": None}


def test_unreadable_values_are_left_out_not_guessed():
    line = ("(APIServer pid=7) INFO 10-21 12:00:00 [api_utils.py:286] non-default args: "
            "{'model_impl': <ModelImpl.AUTO: 'auto'>, 'max_log_len': 5, 'served_model_name': Foo(x=1)}")
    s = learn.apply(None, None, _startup(line), None)[0]
    assert s["max_log_len"] == 5 and s["served"] is None


@pytest.mark.parametrize("line", [
    # start-up text inside a request-log message (a prompt, a client body)
    "(APIServer pid=1) DEBUG 11-22 02:28:50 [entrypoints/.../utils/request_logger.py:55] Request chatcmpl-x "
    "details: prompt: \"x\\n(APIServer pid=1) INFO 11-22 02:28:24 [api_utils.py:286] non-default args: "
    "{'served_model_name': ['evil']}\", prompt_token_ids: [1], prompt_embeds shape: None.",
    "(APIServer pid=1) DEBUG 11-22 02:28:50 [entrypoints/.../utils/request_logger.py:84] Request x JSON body: "
    "{\"messages\":[{\"role\":\"user\",\"content\":\"non-default args: {'max_log_len': None}\"}]}",
    # the right words from another logger file (a continuation of an exception text)
    "(APIServer pid=1) ERROR 11-22 02:28:50 [async_llm.py:601] non-default args: {'max_log_len': None}",
    "(APIServer pid=1) INFO 11-22 02:28:50 [serving.py:1] Launching Rust frontend: x --args-json {}",
    # not the whole message: junk after the dict
    "(APIServer pid=1) INFO 11-22 02:28:24 [api_utils.py:286] non-default args: {'max_log_len': None} x",
])
def test_start_up_shaped_text_elsewhere_is_no_start_up_line(line):
    assert _startup(line) is None


def test_a_continuation_line_never_changes_settings(tmp_path):
    """A multi-line record's later lines (one more \\r than the log's usual
    line end) are never parsed, even when they read as a start-up line."""
    real = MAXLOGLEN.read_bytes().splitlines(keepends=True)
    forged = (b"(APIServer pid=10910) ERROR 11-22 02:28:50 [async_llm.py:601] Request x failed due to a\r\n"
              b"(APIServer pid=10910) INFO 11-22 02:28:50 [api_utils.py:286] non-default args: "
              b"{'served_model_name': ['evil'], 'model': 'evil'}\n")
    at = next(i for i, x in enumerate(real) if b"Available routes" in x)
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(real[:at] + [forged] + real[at:]))
    rt, _ = _replay(tmp_path, log)
    src = rt.pipeline.sources[0]
    assert src.learned["served"] == ["tiny"] and src.learned["max_log_len"] == LIMIT


# ------------------------------------------------------------ the records


def _replay(tmp_path: Path, *files: Path, flags=()):
    argv = ["replay", *map(str, files), "--archive-dir", str(tmp_path / "archive"), "--no-progress", *flags]
    return replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)


def _records(archive: Path) -> list[dict]:
    out = []
    for f in sorted(archive.glob("audit-*.jsonl")):
        out += [json.loads(x) for x in f.read_text().splitlines()]
    return out


def _truth(setup: str) -> dict[str, dict]:
    out = {}
    for line in (FIX / setup / "responses.jsonl").open():
        r = json.loads(line)
        if r.get("response_id"):
            usage = r.get("usage") or (r.get("response") or {}).get("usage") or {}
            rid = r["response_id"] + ("-0" if r["response_id"].startswith("cmpl-") else "")
            out[rid] = usage
    return out


def _check_part(records: list[dict], setup: str, limit: int | None, skip=()) -> int:
    """Every record of one capture: model learned, prompt tokens exact or null, never the cut length."""
    truth, seen = _truth(setup), 0
    for rec in records:
        if rec["request_id"] not in truth or rec["request_id"] in skip:
            continue
        seen += 1
        assert rec["model"] == "tiny", rec["request_id"]
        pt, real = rec["prompt_tokens"], truth[rec["request_id"]].get("prompt_tokens")
        if limit is not None and (real is None or real >= limit):
            assert pt is None, (rec["request_id"], pt, real)
        elif real is not None:
            assert pt == real, (rec["request_id"], pt, real)
        if pt is not None and real is not None:
            assert pt == real
    return seen


def test_a_restart_with_other_settings_applies_from_its_start_up_line(tmp_path):
    """vLLM started with --max-log-len 20, then restarted without it (two
    real captures, one after the other in one file): no flags given, the
    first part's cut id lists count nothing, the second part's count exactly."""
    log = tmp_path / "vllm.log"
    log.write_bytes(MAXLOGLEN.read_bytes() + FORCEUSAGE.read_bytes())
    rt, _ = _replay(tmp_path, log)
    records = _records(tmp_path / "archive")
    first = [r for r in records if r["ts"] < "2026-11-22T02:29:30"]
    second = [r for r in records if r["ts"] >= "2026-11-22T02:29:30"]
    # The X-Request-Id scenario's id is in both captures: a reused id whose
    # DEBUG details line comes before its Received line (counted late), not this test's subject.
    reused = set(_truth("maxloglen")) & set(_truth("forceusage"))
    assert reused == {"chatcmpl-fixture-req-0001"}
    assert _check_part(first, "maxloglen", LIMIT) >= 20
    assert _check_part(second, "forceusage", None, skip=reused) >= 20
    assert any(r["prompt_tokens"] is None for r in first) and any(r["prompt_tokens"] is not None for r in first)
    assert all(r["prompt_tokens"] is not None for r in second
               if r["status"] == "completed" and r["request_id"] not in reused)
    assert rt.pipeline.sources[0].learned["max_log_len"] is None  # the last start-up: unlimited


def test_a_contradicting_flag_wins_and_is_reported_once(tmp_path, caplog):
    log = tmp_path / "vllm.log"
    log.write_bytes(MAXLOGLEN.read_bytes() * 2)  # the same start-up twice
    with caplog.at_level(logging.WARNING, logger="exporter.pipeline"):
        rt, _ = _replay(tmp_path, log, flags=("--max-log-len", "30", "--model", "other"))
    warned = [r.getMessage() for r in caplog.records if "start-up line says" in r.getMessage()]
    assert len(warned) == 2, warned  # max_log_len and model, once each
    assert any("--max-log-len is 30" in w and "says 20" in w for w in warned)
    got = {s.labels["setting"]: s.value for m in rt.registry.collect() if m.name == "vllm_audit_settings_conflicts"
           for s in m.samples if s.name.endswith("_total")}
    assert got == {"max_log_len": 1.0, "model": 1.0}
    assert {r["model"] for r in _records(tmp_path / "archive")} == {"other"}  # the flag wins


def test_learned_settings_are_checkpointed_and_a_version_1_checkpoint_still_loads(tmp_path):
    rt, _ = _replay(tmp_path, MAXLOGLEN)
    state = read_checkpoint(str(tmp_path / "archive" / ".state" / "checkpoint.json")).state
    assert state["version"] == 2
    saved, pending = state["learned"][f"replay:{MAXLOGLEN.resolve()}"]
    assert saved["max_log_len"] == LIMIT and saved["served"] == ["tiny"] and saved["pid"] == 10910
    p = rt.pipeline
    p.restore(state)
    assert p.sources[0].learned == saved and p.sources[0].cfg == {"max_log_len": LIMIT, "model": "tiny"}
    old = {k: v for k, v in state.items() if k not in ("learned", "conflicts")}
    old["version"] = 1
    p.sources[0].learned = None
    p.restore(old)  # loads; nothing learned from it
    assert p.sources[0].learned is None


def _live(tmp_path: Path, logs: list[Path], now: list[float], *extra: str):
    argv = ["run", *(a for p in logs for a in ("--log", str(p))), "--archive-dir", str(tmp_path / "archive"),
            "--request-timeout", "30", "--web.listen-address", "127.0.0.1:0", *extra]
    return build(build_settings("run", make_parser().parse_args(argv), {}), live=True, clock=lambda: now[0])


def _pump(rt) -> None:
    idle = 0
    while idle < 2:
        idle = idle + 1 if rt.pipeline.step() == 0 else 0


def _line_time(line: bytes) -> float | None:
    m = _TEXT_TIME.search(line)
    if not m:
        return None
    mo, d, h, mi, s = (int(x) for x in m.groups())
    return float(calendar.timegm((2026, mo, d, h, mi, s)))


def test_run_starting_at_the_end_of_a_log_looks_back_for_the_start_up_line(tmp_path):
    """``run --from-end`` on a log vLLM has been writing: the start-up
    line is before where reading starts, and is found by looking back, so the
    --max-log-len 20 lists read afterwards are not counted as token counts."""
    lines = MAXLOGLEN.read_bytes().splitlines(keepends=True)
    at = next(i for i, x in enumerate(lines) if b"Available routes" in x)
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(lines[:at]))
    now = [calendar.timegm((2026, 11, 22, 2, 28, 48))]
    rt = _live(tmp_path, [log], now, "--from-end")  # a first start reads from the start otherwise
    src = rt.pipeline.sources[0]
    assert src.learned["max_log_len"] == LIMIT and src.learned["served"] == ["tiny"]
    assert src.tailer.position()["offset"] == log.stat().st_size  # it did start at the end
    with log.open("ab") as f:
        f.write(b"".join(lines[at:]))
    now[0] += 3600
    _pump(rt)
    now[0] += 3600
    _pump(rt)
    assert rt.pipeline.commit()
    assert _check_part(_records(tmp_path / "archive"), "maxloglen", LIMIT) >= 20


def test_stream_and_n_take_the_openai_defaults_only_from_a_logged_body(tmp_path):
    """The DEBUG JSON body is logged as sent: no "stream" means false, no "n"
    means 1. Without the body (INFO) nothing is defaulted."""
    _replay(tmp_path / "debug", FIX / "debug" / "vllm.log")
    debug = {r["request_id"]: r for r in _records(tmp_path / "debug" / "archive")}
    # requests vLLM logs no output line for: only the body says they did not stream
    for rid in ("chatcmpl-a9fbbbad3b40b0b7", "cmpl-b0bbf10146206298-0"):  # chat_empty, completions_n2
        assert debug[rid]["stream"] is False, rid
    assert debug["chatcmpl-a9fbbbad3b40b0b7"]["params"]["n"] == 1
    assert debug["cmpl-b0bbf10146206298-0"]["params"]["n"] == 2  # sent
    _replay(tmp_path / "info", FIX / "info" / "vllm.log")
    info = {r["request_id"]: r for r in _records(tmp_path / "info" / "archive")}
    empty = next(r for r in info.values() if r["request_id"].startswith("chatcmpl-") and r["output"] is None
                 and r["status"] == "incomplete")
    assert empty["stream"] is None  # no body, no output line: unknown


def _timeline(paths: list[Path]) -> list[tuple[float, int, bytes]]:
    out = []
    for index, path in enumerate(paths):
        t = 0.0
        for line in path.read_bytes().splitlines(keepends=True):
            if line.startswith(b"{") and b'"finished_at"' in line:
                from exporter.record import parse_ts
                t = parse_ts(json.loads(line)["finished_at"])
            else:
                t = _line_time(line) or t
            out.append((t, index, line))
    return sorted(out, key=lambda x: (x[0], x[1]))


def test_run_records_a_request_with_both_sides_in_without_waiting_for_merge_grace(tmp_path):
    """--merge-grace of a million seconds and a clock that never gets there:
    every request whose middleware line and final log line are both read is
    recorded anyway, with the same bytes a replay gives it."""
    paths = [FIX / "middleware" / "vllm.log", FIX / "middleware" / "middleware.jsonl"]
    _replay(tmp_path / "replay", *paths, flags=("--merge-grace", "1000000"))
    replayed = {r["request_id"]: r for r in _records(tmp_path / "replay" / "archive")}
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    logs = [live_dir / "vllm.log", live_dir / "middleware.jsonl"]
    for p in logs:
        p.write_bytes(b"")
    now = [0.0]
    rt = _live(live_dir, logs, now, "--from-start", "--merge-grace", "1000000", "--request-timeout", "3000000")
    for t, index, line in _timeline(paths):
        with logs[index].open("ab") as f:
            f.write(line)
        now[0] = max(now[0], t + 1)
        _pump(rt)
    assert rt.pipeline.commit()
    got = {r["request_id"]: r for r in _records(live_dir / "archive")}
    # Both sides in: the middleware line, and the line that ends the request in
    # vLLM's log (0.32 logs none for /v1/completions nor for an empty
    # non-streamed answer: those may still get one, so they wait).
    text = paths[0].read_text(errors="replace")
    both = [rid for rid, r in replayed.items() if r["sources"] == ["vllm_log", "middleware"]
            and (f"Generated response {rid}" in text or f"Request {rid} aborted" in text)]
    assert len(both) >= 15
    assert set(got) == set(both), sorted(set(got) ^ set(both))
    for rid in both:
        a, b = dict(got[rid]), dict(replayed[rid])
        for rec in (a, b):
            for chain_field in CHAIN_FIELDS:  # the position in the archive's chain
                rec.pop(chain_field, None)
        assert a == b, rid
    assert len(got) < len(replayed)  # the others do wait: one side may still come


FORMATS = Path(__file__).parent / "fixtures" / "formats"


@pytest.mark.parametrize("version", sorted(p.name[:-4] for p in FORMATS.glob("*.log") if p.name != "json.log"))
def test_format_fixtures_with_no_flags_name_the_served_model_and_never_count_a_cut_list(version, tmp_path):
    """Lines built from each release's format strings, start-up line first
    (make_fixtures.py): no --model, no --max-log-len given."""
    _replay(tmp_path, FORMATS / f"{version}.log", flags=("--vllm-logging-prefix", "[node-a] ")
            if version == "0.31" else ())
    records = _records(tmp_path / "archive")
    assert records
    for rec in records:
        assert rec["model"] in ("qwen", "tiny", MODEL_0x), rec  # served name, or the client's own
    if version in ("0.6.3", "0.9.2"):  # vLLM ran with --max-log-len 10: "Once upon " and 10 ids
        cut = next(r for r in records if r["request_id"] == "cmpl-3f6d2a9b8e7c4d51a0b2c3d4e5f60718-0")
        assert cut["prompt_tokens"] is None and "prompt_truncated" in cut["flags"]
        # 0.6.3 ran without --served-model-name: the served name is the model itself
        assert cut["model"] == (MODEL_0x if version == "0.6.3" else "qwen")
    else:
        assert all(r["prompt_tokens"] is None or r["tokens_source"] == "logged_ids" for r in records)


MODEL_0x = "Qwen/Qwen2.5-0.5B-Instruct"


# ------------------------------------------------------------ Rust frontend


RUST = "(RustFrontend pid=3226278)"


def _rust_log(tmp_path: Path) -> Path:
    """A vLLM 0.32 start-up (the real capture's lines), then what the Rust
    frontend mode writes, each from vLLM's source: v1/utils.py
    ``logger.info("Launching Rust frontend: %s", " ".join(cmd[:-1] + [redacted_json]))``,
    the Rust stats line of log_stats.rs (a real excerpt, pid and numbers its
    own), and rust/src/server/.../output_logging.rs's
    ``"Generated response (streaming delta): output: {output:?}, finish_reason: None"``
    (``{:?}`` of a Rust string: double quotes) -- which names no request."""
    real = (FIX / "info" / "vllm.log").read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(i for i, x in enumerate(real) if "non-default args" in x) + 1
    args = {"enable_log_outputs": True, "enable_log_requests": True, "max_model_len": 512,
            "model": "/root/.cache/vllm-audit/tiny-llama", "served_model_name": ["tiny"], "model_tag": "x"}
    cmd = ["/venv/lib/python3.11/site-packages/vllm/vllm-rs", "frontend", "--listen-fd", "12",
           "--input-listener-fd", "13", "--output-listener-fd", "14", "--engine-start-index", "0",
           "--engine-count", "1", "--data-parallel-size", "1", "--args-json", "{}"]
    launch = "Launching Rust frontend: %s" % " ".join(cmd[:-1] + [json.dumps(args, sort_keys=True)])
    lines = real[:at] + [
        f"(APIServer pid=8541) INFO 11-22 02:26:20 [utils.py:372] {launch}\n",
        "(RustFrontend pid=3226278) INFO 11-22 02:26:40 [log_stats.rs:273] Avg prompt tput: 672.5 toks/s, "
        "Avg generation tput: 1931.6 toks/s, Reqs Running: 57, Waiting: 0, GPU KV cache used: 1.8%, "
        "Prefix cache hit rate: 0.0%\n",
        "(RustFrontend pid=3226278) INFO 11-22 02:26:41 [output_logging.rs:58] Generated response "
        "(streaming delta): output: \"Hi\", finish_reason: None\n",
        # routes/openai/chat_completions.rs, inside its span chat_completions{request_id=%id}:
        # info!(model = %m, prompt_tokens = p, output_tokens = o, finish_reason = %f, "chat completion finished")
        f"{RUST} INFO 11-22 02:26:42 [chat_completions.rs:236] chat_completions{{request_id="
        "chatcmpl-rust0001}: chat completion finished model=tiny prompt_tokens=24 output_tokens=16 "
        "finish_reason=stop\n",
        # the streaming branch: stream = true first, finish_reason a &str (Debug: quoted); with ANSI
        # (tracing's field names italic, "=" dimmed) and the engine id recorded on the span
        f"\x1b[0;36m{RUST}\x1b[0m \x1b[32mINFO\x1b[0m \x1b[90m11-22 02:26:43\x1b[0m \x1b[90m"
        "[chat_completions.rs:330]\x1b[0m chat_completions{\x1b[3mrequest_id\x1b[0m\x1b[2m=\x1b[0m"
        "chatcmpl-rust0002 \x1b[3mengine_request_id\x1b[0m\x1b[2m=\x1b[0mchatcmpl-rust0002-1a2b3c4d}: "
        "chat completion finished \x1b[3mstream\x1b[0m\x1b[2m=\x1b[0mtrue \x1b[3mmodel\x1b[0m\x1b[2m=\x1b[0mtiny "
        "\x1b[3mprompt_tokens\x1b[0m\x1b[2m=\x1b[0m30 \x1b[3moutput_tokens\x1b[0m\x1b[2m=\x1b[0m8 "
        "\x1b[3mfinish_reason\x1b[0m\x1b[2m=\x1b[0m\"length\"\n",
        # routes/openai/completions.rs: info!(parent: &request_span, ..., finish_reason = <&str>, "completion finished")
        f"{RUST} INFO 11-22 02:26:44 [completions.rs:120] completions{{request_id=cmpl-rust0003}}: "
        "completion finished model=tiny prompt_tokens=5 output_tokens=7 finish_reason=\"stop\"\n",
        # a client's X-Request-Id is printed raw: one carrying more "fields" has spaces, and no record comes of it
        f"{RUST} INFO 11-22 02:26:45 [chat_completions.rs:236] chat_completions{{request_id="
        "forged prompt_tokens=1}: chat completion finished model=tiny prompt_tokens=24 output_tokens=16 "
        "finish_reason=stop\n",
    ]
    log = tmp_path / "vllm.log"
    log.write_text("".join(lines), encoding="utf-8")
    return log


def test_the_rust_frontend_is_detected_and_reported_as_log_only_capture(tmp_path):
    rt, _ = _replay(tmp_path, _rust_log(tmp_path))
    src = rt.pipeline.sources[0]
    assert src.learned["frontend"] == "rust" and src.learned["served"] == ["tiny"]
    healthy, body = rt.health.report()
    assert body["capture"]["mode"] == "log_only" and body["capture"]["frontend"] == "rust"
    assert body["capture"]["middleware"] == "off" and "Rust frontend" in body["capture"]["note"]
    assert body["sources"][src.name]["vllm"]["frontend"] == "rust"
    modes = {(s.labels["mode"], s.labels["frontend"]): s.value for m in rt.registry.collect()
             if m.name == "vllm_audit_capture_mode_info" for s in m.samples}
    assert modes == {("log_only", "rust"): 1.0}
    # One record per finished request from its summary line; the other Rust lines make none.
    recs = {r["request_id"]: r for r in _records(tmp_path / "archive")}
    assert set(recs) == {"chatcmpl-rust0001", "chatcmpl-rust0002", "cmpl-rust0003"}
    one, two, three = recs["chatcmpl-rust0001"], recs["chatcmpl-rust0002"], recs["cmpl-rust0003"]
    assert (one["model"], one["prompt_tokens"], one["completion_tokens"], one["finish_reason"], one["stream"],
            one["status"], one["endpoint"], one["tokens_source"]) == ("tiny", 24, 16, "stop", False, "completed",
                                                                      "chat", "usage")
    assert (two["prompt_tokens"], two["completion_tokens"], two["finish_reason"], two["stream"]) == (30, 8, "length", True)
    assert (three["endpoint"], three["prompt_tokens"], three["completion_tokens"], three["stream"]) == ("completion", 5, 7, None)
    assert all(r["sources"] == ["vllm_log"] and r["prompt"] is None for r in recs.values())
    errors = {s.labels["reason"]: s.value for m in rt.registry.collect() if m.name == "vllm_audit_parse_errors"
              for s in m.samples if s.name.endswith("_total")}
    assert not any(errors.values()), errors


def test_the_python_frontend_with_the_middleware_is_middleware_capture(tmp_path):
    rt, _ = _replay(tmp_path, FIX / "middleware" / "vllm.log", FIX / "middleware" / "middleware.jsonl")
    assert rt.health.report()[1]["capture"] == {"mode": "middleware", "frontend": "python",
                                                "middleware": "on", "note": None}
    rt2, _ = _replay(tmp_path / "info", FIX / "info" / "vllm.log")
    assert rt2.health.report()[1]["capture"]["mode"] == "log_only"
    assert rt2.health.report()[1]["capture"]["frontend"] == "python"


# ------------------------------------------------------------ model label


def test_model_names_vllm_does_not_serve_fold_into_other(tmp_path):
    """The served names come from the start-up line; a junk name a client
    sent stays in the record, the metric label is __other__."""
    from exporter.labels import OTHER
    from exporter.loki.config import LokiSettings
    from exporter.loki.entries import build_labels
    rt, _ = _replay(tmp_path, FIX / "middleware" / "vllm.log", FIX / "middleware" / "middleware.jsonl")
    served = rt.served
    assert served.names == frozenset({"tiny"})
    rec = dict(_records(tmp_path / "archive")[0], model="junk-model-1234")
    before = {s.labels.get("model") for m in rt.registry.collect() if m.name == "vllm_audit_requests"
              for s in m.samples}
    rt.metrics.observe(rec)
    after = {s.labels.get("model") for m in rt.registry.collect() if m.name == "vllm_audit_requests"
             for s in m.samples}
    assert before == {"tiny"} and after == {"tiny", OTHER}
    assert rec["model"] == "junk-model-1234"  # the record keeps the client's name
    labels = dict(build_labels(rec, LokiSettings(url="http://127.0.0.1:1"), lambda u: u, served.fold))
    assert labels["model"] == OTHER
    assert dict(build_labels(dict(rec, model="tiny"), LokiSettings(url="http://127.0.0.1:1"),
                             lambda u: u, served.fold))["model"] == "tiny"


def test_vllm_031s_json_body_without_its_closing_brace_is_read_when_the_start_up_lines_say_031(tmp_path):
    """0.31 logs ``model_dump_json(...)[:-1]`` when --max-log-len is unset:
    every field is there but the "}". Known from the start-up lines (version
    0.31, no max_log_len), the body is read with it; otherwise it stays unread."""
    _replay(tmp_path / "a", FORMATS / "0.31.log", flags=("--vllm-logging-prefix", "[node-a] "))
    rec = next(r for r in _records(tmp_path / "a" / "archive") if r["request_id"].startswith("chatcmpl-9999"))
    assert rec["user"] == "alice" and rec["model"] == "qwen" and rec["stream"] is False
    # The same lines with no start-up lines: the cut body is not guessed at.
    lines = (FORMATS / "0.31.log").read_text(encoding="utf-8").split("\n")
    bare = tmp_path / "bare.log"
    bare.write_text("\n".join(x for x in lines if "non-default args" not in x and "LLM engine (v" not in x),
                    encoding="utf-8")
    _replay(tmp_path / "b", bare, flags=("--vllm-logging-prefix", "[node-a] "))
    rec = next(r for r in _records(tmp_path / "b" / "archive") if r["request_id"].startswith("chatcmpl-9999"))
    assert rec["user"] is None
    # --max-log-len cut a body to its length: with a "}" added it may parse, and still is not used
    data = parse_line('(APIServer pid=1) DEBUG 12-02 06:09:55 [request_logger.py:75] Request x JSON body: '
                      '{"model":"tiny","user":"a"').data
    assert data["body"] is None and data["body_closed"] == {"model": "tiny", "user": "a"}
    assert learn.entry_cfg(dict(learn._from_args({"max_log_len": 20}, full=False), version="0.31.0")) \
        == {"max_log_len": 20, "model": None}


def test_a_checkpoint_from_before_learned_settings_resumes_and_looks_back(tmp_path):
    """A version-1 pipeline state (no "learned") still loads; its source,
    resuming mid-log, looks back for the start-up line before its offset."""
    from exporter.checkpoint import write_atomic
    lines = MAXLOGLEN.read_bytes().splitlines(keepends=True)
    at = next(i for i, x in enumerate(lines) if b"Available routes" in x)
    log = tmp_path / "vllm.log"
    log.write_bytes(b"".join(lines[:at]))
    now = [calendar.timegm((2026, 11, 22, 2, 28, 48))]
    rt = _live(tmp_path, [log], now, "--from-start")
    _pump(rt)
    assert rt.pipeline.commit()
    path = tmp_path / "archive" / ".state" / "checkpoint.json"
    state = read_checkpoint(str(path)).state
    assert state["learned"]
    old = {k: v for k, v in state.items() if k not in ("learned", "conflicts")}
    old["version"] = 1
    write_atomic(str(path), old)
    for src in rt.pipeline.sources:
        src.tailer.close()
    rt2 = _live(tmp_path, [log], now, "--from-start")
    src = rt2.pipeline.sources[0]
    assert src.tailer.position()["offset"] == log.stat().st_size  # resumed, not re-read
    assert src.learned["max_log_len"] == LIMIT and src.cfg == {"max_log_len": LIMIT, "model": "tiny"}
