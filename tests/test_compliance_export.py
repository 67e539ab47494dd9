import csv
import hashlib
import hmac
import io
import json

import httpx

from exporter.archive import ArchiveWriter
from exporter.chain import Chain
from exporter.compliance.export import export_main, neutralise
from exporter.loki.query import build_query, query_range
from exporter.compliance.retention import apply_retention
from exporter.record import dumps_line, new_record

KEY = b"export-key-0123456789"
DAY1 = 1795329600.0  # 2026-11-22T06:40:00Z


def rec(i, ts, user="alice", model="tiny", prompt="hello", output="world"):
    r = new_record()
    r.update(ts=ts, request_id=f"chatcmpl-{i}", user=user, model=model, prompt=prompt, output=output,
             status="completed", params={"max_tokens": 16, "temperature": 0.0, "n": 1, "json_mode": False})
    return r


def build(root):
    t = [DAY1]
    w = ArchiveWriter(root, chain=Chain(KEY), clock=lambda: t[0])
    w.append(rec(1, "2026-11-22T06:00:00.000Z", prompt="=HYPERLINK(\"http://evil\")"))
    w.append(dict(rec(2, "2026-11-22T07:00:00.000Z", user="bob", output="-1+2"), identity_source="jwt"))
    w.flush()
    t[0] += 86400
    w.append(rec(3, "2026-11-23T01:00:00.000Z", prompt="Ünïcode 中文, \"quoted\"\nnew line", output="@SUM(A1)"))
    w.append(rec(4, "2026-11-23T02:00:00.000Z", model="big"))
    w.flush()
    w.close()


def run(tmp_path, **kw):
    out, err = io.StringIO(), io.StringIO()
    kw.setdefault("ts_from", "2026-11-22")
    kw.setdefault("ts_to", "2026-11-24")
    code = export_main(archive_dir=str(tmp_path), out=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def test_neutralise():
    assert [neutralise(x) for x in ["=1", "+1", "-1", "@x", "\tx", "\rx", "ok", ""]] == [
        "'=1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "ok", ""]


def test_csv_export_signed_and_neutralised(tmp_path):
    build(tmp_path)
    target = tmp_path / "out" / "audit.csv"
    target.parent.mkdir()
    code, _, err = run(tmp_path, output=str(target), bom=True, hmac_key_env=KEY.decode())
    assert code == 0 and "4 record(s)" in err
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert [r["request_id"] for r in rows] == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3", "chatcmpl-4"]
    assert rows[0]["prompt"] == "'=HYPERLINK(\"http://evil\")"
    assert rows[1]["output"] == "'-1+2"
    assert rows[2]["prompt"] == "Ünïcode 中文, \"quoted\"\nnew line" and rows[2]["output"] == "'@SUM(A1)"
    assert rows[0]["stream"] == "" and rows[0]["prompt_tokens"] == ""
    assert [r["identity_source"] for r in rows] == ["", "jwt", "", ""]  # how far to trust `user`
    assert json.loads(rows[0]["params"])["max_tokens"] == 16
    assert rows[0]["seq"] == "1" and rows[0]["hash"].startswith("hmac-sha256:")
    sha = (target.parent / "audit.csv.sha256").read_text()
    assert sha == f"{hashlib.sha256(data).hexdigest()}  audit.csv\n"
    mac = (target.parent / "audit.csv.hmac").read_text()
    assert mac == f"hmac-sha256:{hmac.new(KEY, data, hashlib.sha256).hexdigest()}  audit.csv\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert not list(target.parent.glob(".*partial"))


def test_filters_and_jsonl_are_archive_lines(tmp_path):
    build(tmp_path)
    code, out, _ = run(tmp_path, fmt="jsonl", user="alice", model="tiny", ts_from="2026-11-22T06:30:00Z")
    assert code == 0
    recs = [json.loads(x) for x in out.splitlines()]
    assert [r["request_id"] for r in recs] == ["chatcmpl-3"]
    archived = (tmp_path / "audit-2026-11-23.jsonl").read_text().splitlines()[0]
    assert out.splitlines()[0] == archived  # byte-identical: still verifiable with the key
    assert Chain(KEY).verify_record(recs[0])
    code, out, _ = run(tmp_path, fmt="jsonl", grep="中文")
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == ["chatcmpl-3"]
    code, out, _ = run(tmp_path, fmt="jsonl", grep="HYPERLINK", ts_to="2026-11-22T06:00:00Z")
    assert out == ""  # half-open window excludes the `to` instant


def test_export_reads_gz_and_reports_deleted_days(tmp_path):
    build(tmp_path)
    t = [DAY1 + 2 * 86400]
    w = ArchiveWriter.open(tmp_path, Chain(KEY), None, clock=lambda: t[0])
    w.append(rec(5, "2026-11-24T01:00:00.000Z"))
    w.flush()  # seals 2026-11-23 so retention may touch it
    w.close()
    acts = apply_retention(tmp_path, now=DAY1 + 40 * 86400, compress_after_days=30)
    assert [a.action for a in acts] == ["compressed", "compressed"]
    code, out, _ = run(tmp_path, fmt="jsonl")
    assert code == 0 and len(out.splitlines()) == 4
    apply_retention(tmp_path, now=DAY1 + 40 * 86400, delete_after_days=30, key=KEY)
    code, out, err = run(tmp_path, fmt="jsonl")
    assert out == "" and "deleted by retention" in err


def test_usage_errors(tmp_path):
    assert run(tmp_path, ts_from="yesterday")[0] == 2
    assert run(tmp_path, ts_from="2026-11-23", ts_to="2026-11-22")[0] == 2
    assert run(tmp_path, fmt="xlsx")[0] == 2
    assert run(tmp_path, source="loki")[0] == 2
    assert export_main(ts_from="2026-11-22", ts_to="2026-11-23", archive_dir=str(tmp_path / "nope"),
                       out=io.StringIO(), err=io.StringIO()) == 2


# -- Loki source ---------------------------------------------------------------------

def _loki(entries, limit_calls):
    """MockTransport answering query_range from (ts_ns, line, stream) tuples."""
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/loki/api/v1/query_range"
        q = request.url.params
        limit_calls.append(dict(q))
        assert q["direction"] == "forward"
        start, end, limit = int(q["start"]), int(q["end"]), int(q["limit"])
        hits = sorted(e for e in entries if start <= e[0] < end)[:limit]
        streams = {}
        for ts, line, stream in hits:
            streams.setdefault(stream, []).append([str(ts), line])
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "streams", "result": [
            {"stream": {"service_name": "vllm-audit", "s": s}, "values": v} for s, v in streams.items()]}})
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_query_range_paginates_and_dedupes_boundary():
    base = 1_000_000_000_000
    entries = [(base + i // 3, f"line{i}", "a" if i % 2 else "b") for i in range(10)]  # 3 share each ns
    calls = []
    got = list(query_range(_loki(entries, calls), "http://loki:3100", "{x}", base, base + 100, limit=4))
    assert sorted(got) == sorted((ts, line) for ts, line, _ in entries)
    assert len(got) == 10 and len(calls) >= 3
    assert int(calls[1]["start"]) == max(ts for ts, _ in got[:4])  # restart AT the last timestamp


def test_query_range_steps_past_a_full_page_of_one_timestamp():
    entries = [(5, f"l{i}", "a") for i in range(6)] + [(9, "after", "a")]
    got = list(query_range(_loki(entries, []), "http://l", "{x}", 0, 100, limit=4))
    assert ("after" in [line for _, line in got]) and len(set(got)) == len(got)


def test_export_from_loki(tmp_path):
    lines = [dumps_line(rec(i, f"2026-11-22T0{i}:00:00.000Z", user="alice" if i % 2 else "bob"))
             for i in range(1, 6)]
    entries = [(int((DAY1 - 6 * 3600 + i * 3600) * 1e9), line, "a") for i, line in enumerate(lines, 1)]
    calls = []
    out, err = io.StringIO(), io.StringIO()
    code = export_main(ts_from="2026-11-22T00:00:00Z", ts_to="2026-11-23T00:00:00Z", source="loki",
                       loki_url="http://loki:3100", user="alice", fmt="jsonl",
                       http_client=_loki(entries, calls), out=out, err=err)
    assert code == 0, err.getvalue()
    assert [json.loads(x)["request_id"] for x in out.getvalue().splitlines()] == [
        "chatcmpl-1", "chatcmpl-3", "chatcmpl-5"]
    assert calls[0]["query"] == '{service_name="vllm-audit"} |= "\\"user\\":\\"alice\\""'


def test_build_query_escapes():
    q = build_query(None, model='m"x', grep="a.b(c)")
    assert q == '{service_name="vllm-audit"} |= "\\"model\\":\\"m\\\\\\"x\\"" |~ "(?i)a\\\\.b\\\\(c\\\\)"'
    assert "|~" not in build_query(None, grep='with "quote"')  # client-side only


def test_loki_http_error_is_reported(tmp_path):
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500, text="boom")))
    err = io.StringIO()
    code = export_main(ts_from="2026-11-22", ts_to="2026-11-23", source="loki", loki_url="http://l",
                       http_client=client, out=io.StringIO(), err=err)
    assert code == 1 and "export failed" in err.getvalue()


# -- --grep matches what a person typed (issue #18, item 9) --------------------------

TYPED = {
    "quote": 'she said "hello" twice',
    "backslash": "path C:\\Users\\li",
    "newline": "first line\nsecond line",
    "tab": "col1\tcol2",
}


def _chat_archive(root):
    # As the middleware records chat prompts: the messages as compact JSON text.
    w = ArchiveWriter(root, chain=Chain(KEY), clock=lambda: DAY1)
    for i, text in enumerate(TYPED.values(), 1):
        r = rec(i, f"2026-11-22T0{i}:00:00.000Z", output="ok")
        r.update(endpoint="chat", prompt=json.dumps(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
            ensure_ascii=False, separators=(",", ":")))
        w.append(r)
    w.flush()
    w.close()


def test_grep_finds_typed_quote_backslash_newline_and_tab_in_chat_prompts(tmp_path):
    _chat_archive(tmp_path)
    for i, (name, text) in enumerate(TYPED.items(), 1):
        needle = {"quote": '"hello" TWICE', "backslash": "c:\\users\\", "newline": "line\nsecond",
                  "tab": "col1\tcol2"}[name]
        code, out, err = run(tmp_path, fmt="jsonl", grep=needle)
        assert code == 0, err
        assert [json.loads(x)["request_id"] for x in out.splitlines()] == [f"chatcmpl-{i}"], name
    # Protocol keys and values are not typed text: "role" and "user" match nothing.
    for needle in ("role", '"user"', "content"):
        assert run(tmp_path, fmt="jsonl", grep=needle)[1] == "", needle


def test_grep_on_loki_finds_typed_special_characters_client_side(tmp_path):
    r = rec(1, "2026-11-22T01:00:00.000Z")
    r.update(endpoint="chat", prompt=json.dumps([{"role": "user", "content": TYPED["quote"]}],
                                                ensure_ascii=False, separators=(",", ":")))
    entries = [(int((DAY1 - 5 * 3600) * 1e9), dumps_line(r), "a")]
    calls, out, err = [], io.StringIO(), io.StringIO()
    code = export_main(ts_from="2026-11-22T00:00:00Z", ts_to="2026-11-23T00:00:00Z", source="loki",
                       loki_url="http://loki:3100", grep='"hello"', fmt="jsonl",
                       http_client=_loki(entries, calls), out=out, err=err)
    assert code == 0, err.getvalue()
    assert [json.loads(x)["request_id"] for x in out.getvalue().splitlines()] == ["chatcmpl-1"]
    assert "|~" not in calls[0]["query"]  # the typed quote is escaped twice in the line


def test_typed_texts_keeps_json_looking_prompts_of_other_endpoints():
    from exporter.compliance.export import typed_texts
    assert typed_texts('{"a": "b"}', "completion") == ["b", '{"a": "b"}']
    assert typed_texts("[INST] hi [/INST]", "chat") == ["[INST] hi [/INST]"]
    assert typed_texts("[" * 500 + '"x"' + "]" * 500, "chat") == ["x"]
    deep = "[" * 100_000 + "]" * 100_000
    assert typed_texts(deep, "chat") == [deep]  # too deep for json: searched as it is, no crash


def test_export_source_loki_reads_a_loki_with_auth_and_tenant_like_the_pusher(tmp_path):
    """`export --source loki` had its own HTTP client without auth or TLS, so
    it could not read the Loki `run` pushes to behind basic auth."""
    import base64
    import time as _time

    from exporter.cli import main
    from loki_server import LokiServer
    now = _time.time() - 60
    lines = [json.dumps({"type": "vllm_audit_middleware", "v": 1, "request_id": f"auth-{i}",
                         "received_at": _iso(now + i), "finished_at": _iso(now + i + 0.5), "status": "completed",
                         "user": "alice", "model": "tiny", "endpoint": "chat"}) for i in range(3)]
    log = tmp_path / "mw.jsonl"
    log.write_text("\n".join(lines) + "\n")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    auth = ["--loki-tenant", "team-a", "--loki-username", "auditor", "--loki-password-file", str(pw)]
    with LokiServer(tenant="team-a", authorization="Basic " + base64.b64encode(b"auditor:s3cret").decode()) as srv:
        assert main(["replay", str(log), "--archive-dir", str(tmp_path / "a"), "--no-progress",
                     "--loki-url", srv.url, *auth]) == 0
        assert len(srv.lines()) == 3
        out = tmp_path / "export.jsonl"
        code = main(["export", "--source", "loki", "--loki-url", srv.url, *auth, "--from", _iso(now - 60),
                     "--to", _iso(now + 60), "--format", "jsonl", "--output", str(out)])
        assert code == 0
        assert sorted(json.loads(x)["request_id"] for x in out.read_text().splitlines()) == \
            ["auth-0", "auth-1", "auth-2"]
        # and without the credentials Loki refuses: the export says so, no traceback
        assert main(["export", "--source", "loki", "--loki-url", srv.url, "--from", _iso(now - 60),
                     "--to", _iso(now + 60), "--format", "jsonl", "--output", str(out)]) != 0


def _iso(t: float) -> str:
    from exporter.wire import utc_text
    return utc_text(t)
