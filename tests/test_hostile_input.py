"""Nothing a client sends can stop or corrupt ingestion (issue: one request
must never stop the audit).

The attacks go through the real middleware (in-process, its own writer
rendering the line), then through the real parser, correlator, record
assembly, archive encoding and checkpoint encoding, and through `replay` and
a real `run` process for the concrete cases that used to kill them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples
from test_middleware import MemorySink

from exporter import checkpoint
from exporter.assemble import AssembleContext, build_record
from exporter.cli import main, make_parser
from exporter.replay import replay_into
from exporter.correlate import Correlator
from exporter.events import Event
from exporter.middleware import AuditMiddleware, MiddlewareConfig
from exporter.middleware.line import fallback, render
from exporter.middleware.writer import LineWriter
from exporter.parse import parse_line
from exporter.record import dumps_line
from exporter.settings import build as build_settings

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "middleware" / "middleware.jsonl"
REAL_LINE = json.loads(FIXTURE.read_text().splitlines()[0])


ANSWER = (b'{"id":"chatcmpl-hostile-%d","choices":[{"index":0,"message":{"content":"ok"},'
          b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}')


def through_middleware(bodies: list[bytes]) -> bytes:
    """The bytes the real middleware writes for these request bodies (request
    i is ``hostile-i``, answered as ``chatcmpl-hostile-i``)."""
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_MIDDLEWARE_FILE": "unused", "VLLM_AUDIT_API_KEY_SALT": "s"})
    sink = MemorySink()
    writer = LineWriter(sink, lambda ex: render(ex, cfg), fallback, clock=time.time, start=False)

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        answer = ANSWER % int(dict(scope["headers"])[b"x-request-id"].split(b"-")[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer, "more_body": False})

    async def drive():
        mw = AuditMiddleware(app, config=cfg, writer=writer)
        for i, body in enumerate(bodies):
            msgs = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                return msgs.pop(0) if msgs else {"type": "http.disconnect"}

            async def send(message):
                pass
            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                     "headers": [(b"x-request-id", f"hostile-{i}".encode()),
                                 (b"content-type", b"application/json")], "client": ("127.0.0.1", 1)}
            await mw(scope, receive, send)

    asyncio.run(drive())
    writer.drain()
    return sink.data


def ingest(data: bytes) -> list[dict]:
    """Parser → correlator → record → archive line (UTF-8) and checkpoint,
    exactly the encodings the pipeline performs; returns the records."""
    corr = Correlator(request_timeout=300, merge_grace=0)
    for raw in data.split(b"\n"):
        if not raw:
            continue
        result = parse_line(raw.decode("utf-8", "replace"))
        if isinstance(result, Event):
            corr.feed(result, result.when and 1795341600.0)
        checkpoint.encode({"correlator": corr.state()})  # in-flight state must stay checkpointable
    records = [r for r in (build_record(e, AssembleContext(model="tiny")) for e in corr.drain()) if r]
    for rec in records:
        dumps_line(rec).encode("utf-8")  # the archive write: strict UTF-8
    return records


# -- concrete attacks ----------------------------------------------------------------

def test_a_lone_surrogate_in_a_chat_body_is_kept_escaped_and_flagged():
    body = b'{"model":"tiny","messages":[{"role":"user","content":"a\\ud800b"}],"user":"eve\\udfff"}'
    [rec] = ingest(through_middleware([body]))
    assert "a\\ud800b" in rec["prompt"]  # the six characters, losslessly
    assert rec["user"] == "eve\\udfff"
    assert "unencodable_text" in rec["flags"]


def test_wrong_types_in_every_field_of_the_middleware_line_are_dropped_not_fatal():
    wrong = [{"a": 1}, [1, 2], "text", -5, 1.5, True, float("nan"), 10 ** 30]
    lines = []
    for i, (name, value) in enumerate((n, v) for n in REAL_LINE if n not in ("type", "request_id")
                                      for v in wrong):
        line = dict(REAL_LINE, request_id=f"r{i}", response_id=f"chatcmpl-r{i}")
        line[name] = value
        lines.append(json.dumps(line).encode())
    records = ingest(b"\n".join(lines) + b"\n")
    assert len(records) == len(lines)  # every line is one record, none lost
    for rec in records:
        well_typed(rec)
    by_id = {r["request_id"]: r for r in records}
    # a wrong type is flagged and reads as unknown
    model_obj = next(f"chatcmpl-r{i}" for i, x in enumerate(lines) if b'"model": {"a": 1}' in x)
    assert by_id[model_obj]["model"] == "tiny" and "invalid_field" in by_id[model_obj]["flags"]
    latency_nan = next(f"chatcmpl-r{i}" for i, x in enumerate(lines) if b'"latency_seconds": NaN' in x)
    assert by_id[latency_nan]["latency_seconds"] is None and "invalid_field" in by_id[latency_nan]["flags"]


_TYPES = {"ts": str, "request_id": str, "model": str, "user": str, "endpoint": str, "stream": bool,
          "prompt": str, "output": str, "prompt_tokens": int, "completion_tokens": int, "tokens_source": str,
          "finish_reason": str, "status": str, "empty_response": bool, "latency_seconds": (int, float),
          "ttft_seconds": (int, float), "http_status": int, "error": str, "client": str, "identity": dict,
          "choices": list}


def well_typed(rec: dict) -> None:
    """The record contract's types (README, "The audit record"): null or the type."""
    for name, kind in _TYPES.items():
        value = rec[name]
        assert value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))), \
            (name, value)
    assert isinstance(rec["params"], dict) and isinstance(rec["flags"], list)
    assert all(isinstance(f, str) for f in rec["flags"])


def test_replay_survives_a_model_object_and_a_surrogate_and_keeps_going(tmp_path):
    lines = [dict(REAL_LINE, request_id="obj", response_id="chatcmpl-obj", model={"x": 1}),
             dict(REAL_LINE, request_id="sur", response_id="chatcmpl-sur", prompt="x\ud800"),
             dict(REAL_LINE, request_id="after", response_id="chatcmpl-after")]
    log = tmp_path / "mw.jsonl"
    # As the middleware writes it: the surrogate as a JSON escape.
    log.write_bytes(b"".join(json.dumps(x, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"
                             for x in lines))
    argv = ["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--no-progress", "--model", "tiny"]
    rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    got = [json.loads(x) for p in sorted((tmp_path / "a").glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    assert [r["request_id"] for r in got] == ["chatcmpl-obj", "chatcmpl-sur", "chatcmpl-after"]
    assert got[0]["model"] == "tiny" and "invalid_field" in got[0]["flags"]  # --model fills the dropped one
    assert got[1]["prompt"] == "x\\ud800" and "unencodable_text" in got[1]["flags"]
    text = rt.registry and __import__("prometheus_client").generate_latest(rt.registry).decode()
    assert 'vllm_audit_parse_errors_total{reason="middleware_invalid_field"} 1.0' in text
    assert 'vllm_audit_parse_errors_total{reason="unencodable_text"} 1.0' in text


def test_a_number_beyond_any_float_in_a_client_body_is_recorded_not_erased(tmp_path, capsys):
    """A client's ``max_tokens`` / ``temperature`` of 401 digits once made the
    parser raise (OverflowError in math.isfinite) and drop the whole
    middleware line: the request left no record at all. Now it is one
    record, the unusable value null and flagged; the archive verifies."""
    huge = b"1" + b"0" * 400
    bodies = [b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"temperature":%s}' % huge,
              b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"top_p":0.5,"max_tokens":%s}' % huge,
              b'{"model":"tiny","messages":[{"role":"user","content":"after"}]}']
    log = tmp_path / "mw.jsonl"
    log.write_bytes(through_middleware(bodies))
    key = tmp_path / "hmac.key"
    key.write_bytes(b"k" * 32)
    argv = ["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--no-progress", "--model", "tiny",
            "--hmac-key-file", str(key)]
    rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    got = [json.loads(x) for p in sorted((tmp_path / "a").glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    assert [r["request_id"] for r in got] == ["chatcmpl-hostile-0", "chatcmpl-hostile-1", "chatcmpl-hostile-2"]
    assert got[0]["params"]["temperature"] is None and "invalid_field" in got[0]["flags"]
    assert got[1]["params"]["max_tokens"] == int(huge)  # an int is exact, whatever its size: kept
    for rec in got:
        well_typed(rec)
    text = __import__("prometheus_client").generate_latest(rt.registry).decode()
    assert 'reason="internal_error"' not in text
    assert 'vllm_audit_parse_errors_total{reason="middleware_invalid_field"} 1.0' in text
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "a"), "--hmac-key-file", str(key)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 file(s), 3 record(s)")


def test_a_count_beyond_any_float_in_a_line_is_archived_and_ingestion_goes_on(tmp_path, capsys):
    """A middleware line whose usage is an int of 401 digits (a forged or
    corrupted line: JSON allows it) made the metrics' float sums raise
    OverflowError, and replay stopped there: no record of it nor of anything
    after it. Now each is archived as written (an int is exact), the metrics
    skip the unusable value, and the lines after it count. (A latency of
    that size the line's checker refuses: null and flagged.)"""
    huge = 10 ** 400
    lines = [dict(REAL_LINE, request_id="pt", response_id="chatcmpl-pt",
                  usage=dict(REAL_LINE["usage"], prompt_tokens=huge)),
             dict(REAL_LINE, request_id="ct", response_id="chatcmpl-ct",
                  usage=dict(REAL_LINE["usage"], completion_tokens=huge)),
             dict(REAL_LINE, request_id="lat", response_id="chatcmpl-lat", latency_seconds=huge),
             dict(REAL_LINE, request_id="after", response_id="chatcmpl-after")]
    log = tmp_path / "mw.jsonl"
    log.write_bytes(b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in lines))
    argv = ["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--no-progress", "--model", "tiny"]
    rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    got = [json.loads(x) for p in sorted((tmp_path / "a").glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    assert [r["request_id"] for r in got] == ["chatcmpl-pt", "chatcmpl-ct", "chatcmpl-lat", "chatcmpl-after"]
    assert got[0]["prompt_tokens"] == huge and got[1]["completion_tokens"] == huge
    assert got[2]["latency_seconds"] is None and "invalid_field" in got[2]["flags"]
    text = __import__("prometheus_client").generate_latest(rt.registry).decode()
    real_pt, real_ct = REAL_LINE["usage"]["prompt_tokens"], REAL_LINE["usage"]["completion_tokens"]
    # The three usable prompt counts summed, the unusable one skipped; the same for completions.
    assert f'vllm_audit_prompt_tokens_total{{model="tiny",user="alice"}} {float(3 * real_pt)}' in text
    assert f'vllm_audit_completion_tokens_total{{model="tiny",user="alice"}} {float(3 * real_ct)}' in text
    assert 'vllm_audit_records_total 4.0' in text
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 file(s), 4 record(s)")


def test_a_middleware_line_without_received_at_is_recorded_not_stuck():
    line = dict(REAL_LINE, request_id="nots", response_id="chatcmpl-nots")
    del line["received_at"]
    del line["finished_at"]
    corr = Correlator(request_timeout=300, merge_grace=0.5)
    result = parse_line(json.dumps(line))
    corr.feed(result, None)  # no time at all: neither the line nor the source had one
    ready = corr.ready(1795341600.0)
    assert [e["key"] for e in ready] == ["nots"]


def test_run_keeps_auditing_after_a_surrogate_line_and_after_a_restart(tmp_path):
    """The attack that switched the audit off: a real `run` process."""
    log, archive = tmp_path / "mw.jsonl", tmp_path / "archive"
    log.write_bytes(b"")
    cmd = [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start", "--archive-dir",
           str(archive), "--web.listen-address", "127.0.0.1:0", "--merge-grace", "0", "--model", "tiny"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def ids():
        return [json.loads(x)["request_id"] for p in sorted(archive.glob("audit-*.jsonl"))
                for x in p.read_text().splitlines() if x]

    def wait_ids(want, proc):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ids() != want:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        assert ids() == want, f"archive has {ids()}, waited for {want}"

    def append(*names):
        with log.open("ab") as f:
            for n in names:
                body = b'{"model":"tiny","messages":[{"role":"user","content":"\\ud800' + n.encode() + b'"}]}'
                data = through_middleware([body]).replace(b"hostile-0", n.encode())  # request id and answer id
                f.write(data)

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        append("s1", "s2")
        wait_ids(["chatcmpl-s1", "chatcmpl-s2"], proc)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        append("s3")
        wait_ids(["chatcmpl-s1", "chatcmpl-s2", "chatcmpl-s3"], proc)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


# -- fuzz: adversarial bodies through the real middleware ------------------------------

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=12)
_FIELDS = ("model", "messages", "user", "stream", "max_tokens", "max_completion_tokens", "temperature", "n",
           "response_format", "prompt")


def _deep(n: int) -> str:
    return "[" * n + "1" + "]" * n


@settings(max_examples=examples(120), suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=6), st.sampled_from(["", "\\ud800", "\\udfff\\ud800"]),
       st.integers(0, 3000))
def test_fuzz_hostile_bodies_never_stop_ingestion(body, surrogate, depth):
    text = json.dumps(body)
    if surrogate:
        text = text[:-1] + (", " if body else "") + f'"user": "{surrogate}"' + "}"
    bodies = [text.encode(), ('{"messages": ' + _deep(depth) + "}").encode(), b'{"model": "tiny"}']
    records = ingest(through_middleware(bodies))
    assert [r["request_id"] for r in records][-1] == "chatcmpl-hostile-2"  # the request after them is recorded
    assert len(records) == len(bodies)


def test_every_path_of_the_middleware_line_with_an_odd_value_is_one_record_to_the_end(tmp_path, capsys):
    """Each value anywhere in a real middleware line (every nested path, from
    tests/oddvalues.py) replaced by an odd one, one line each: numbers beyond
    any float (an int of 401 digits once stopped the whole pipeline in the
    metrics), NaN and infinities (JSON's decoder takes them), empty and wrong
    containers, an erasure look-alike, deep nesting. Through the whole replay
    (parser, correlator, assembly, detectors, metrics, archive with chain and
    tree) every line is exactly one record, in order, the archive verifies,
    each record is well typed and becomes a Loki entry, and /metrics renders."""
    from oddvalues import paths, with_path
    from prometheus_client import generate_latest
    from exporter.loki.config import LokiSettings
    from exporter.loki.entries import build_entry, encode_push
    odd = [None, True, -1, 10 ** 400, -10 ** 400, 1e308, float("nan"), float("-inf"), "", "\ud800x",
           [], [None], {}, {"erased": "sha256:" + "0" * 64}, json.loads(_deep(400))]
    fixed = {("type",), ("v",), ("request_id",), ("response_id",)}  # what makes it this exporter's line
    lines, ids = [], []
    for path in paths(REAL_LINE):
        if not path or path in fixed:
            continue
        for value in odd:
            n = len(lines)
            line = with_path(REAL_LINE, path, value)
            line.update(request_id=f"odd{n}", response_id=f"chatcmpl-odd{n}")
            lines.append(json.dumps(line).encode())
            ids.append(f"chatcmpl-odd{n}")
    assert len(lines) > 500  # about 40 paths of the real line
    log = tmp_path / "mw.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    argv = ["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--no-progress", "--model", "tiny"]
    rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    archived = [x for p in sorted((tmp_path / "a").glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    got = [json.loads(x) for x in archived]
    assert [r["request_id"] for r in got] == ids
    for rec in got:
        well_typed(rec)
    settings = LokiSettings(url="http://loki:3100")
    encode_push([build_entry(x, settings, lambda u: u, lambda r: r) for x in archived])
    assert b"vllm_audit_records_total %d.0" % len(ids) in generate_latest(rt.registry)
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 1 file(s), {len(ids)} record(s)")
