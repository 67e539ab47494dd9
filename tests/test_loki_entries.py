"""Loki entry building: deterministic timestamps, labels, lines, truncation."""

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from hyp import examples

from exporter.loki.config import LokiSettings, read_secret
from exporter.loki.entries import (EntryError, build_entry, encode_push, fit_line,
                                   sanitize_value, timestamp_ns)
from exporter.record import CHAIN_FIELDS, dumps_line, new_record

try:
    from tests.loki_server import archive_line
except ImportError:
    from loki_server import archive_line

S = LokiSettings(url="http://loki:3100")


def ident(u):
    return u


def test_timestamp_is_integer_nanoseconds_with_seq_tiebreak():
    base = int(datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc).timestamp()) * 10**9
    assert timestamp_ns("2026-11-22T10:00:00.123Z", 7) == base + 123_000_000 + 7
    assert timestamp_ns("2026-11-22T10:00:00.123Z", 1_000_007) == base + 123_000_000 + 7
    assert timestamp_ns("2026-11-22T11:00:00.5+01:00", None) == base + 500_000_000
    # Two records in one millisecond stay distinct and inside that millisecond.
    a, b = timestamp_ns("2026-11-22T10:00:00.123Z", 1), timestamp_ns("2026-11-22T10:00:00.123Z", 2)
    assert a != b and a // 10**6 == b // 10**6


@pytest.mark.parametrize("bad", [None, "", "yesterday", "2026-11-22 10:00:00", "2026-11-22T10:00:00"])
def test_bad_timestamp_is_an_entry_error(bad):
    with pytest.raises(EntryError) as exc:
        timestamp_ns(bad, 1)
    assert exc.value.reason == "invalid_timestamp"


def test_labels_line_and_metadata():
    line = archive_line(5, "2026-11-22T10:00:00.123Z", user="bob", model="m1")
    e = build_entry(line.rstrip("\n"), S, lambda u: "__other__" if u == "bob" else u, ident)
    assert dict(e.labels) == {"service_name": "vllm-audit", "model": "m1", "user": "__other__"}
    stored = json.loads(line)
    expected = dumps_line({k: v for k, v in stored.items() if k not in CHAIN_FIELDS})
    assert e.line == expected and not e.truncated and e.metadata == ()
    assert "chatcmpl-5" not in "".join(v for _, v in e.labels)  # never an id as a label

    sm = LokiSettings(url="http://l", structured_metadata=True, job="audit")
    e2 = build_entry(line, sm, lambda u: None, ident)
    assert dict(e2.labels) == {"service_name": "vllm-audit", "job": "audit", "model": "m1"}
    assert dict(e2.metadata) == {"request_id": "chatcmpl-5", "user": "bob"}


def test_unknown_model_and_hostile_label_values_are_sanitised():
    line = archive_line(1, "2026-11-22T10:00:00.123Z", model=None)
    assert dict(build_entry(line, S, ident, ident).labels)["model"] == "unknown"
    assert sanitize_value("\ud800x") == "?x"
    assert sanitize_value("") == "unknown"
    long = sanitize_value("é" * 5000)
    assert len(long.encode()) <= 1024 and long == "é" * 512


def test_policy_is_applied_and_output_deterministic():
    def redact(r):
        return {**r, "prompt": "[redacted]", "user": "u-hash"}

    cfg = LokiSettings(url="http://l", structured_metadata=True)
    line = archive_line(3, "2026-11-22T10:00:00.000Z")
    a, b = build_entry(line, cfg, ident, redact), build_entry(line, cfg, ident, redact)
    assert a == b
    assert json.loads(a.line)["prompt"] == "[redacted]"
    assert dict(a.metadata)["user"] == "u-hash"  # metadata is redacted too


def test_invalid_archive_line_is_an_entry_error():
    for bad, reason in (("{not json", "invalid_record"), ("[1,2]", "invalid_record")):
        with pytest.raises(EntryError) as exc:
            build_entry(bad, S, ident, ident)
        assert exc.value.reason == reason


def test_oversized_line_is_truncated_not_rejected():
    rec = new_record()
    rec.update(ts="2026-11-22T10:00:00.000Z", prompt="p" * 300_000, output="o" * 50_000,
               choices=[{"index": 0, "text": "o" * 50_000, "finish_reason": "stop"}])
    line, truncated = fit_line(rec, 10_000)
    out = json.loads(line)
    assert truncated and len(line.encode()) <= 10_000
    assert "loki_truncated" in out["flags"] and out["prompt"].startswith("ppp")
    assert list(out) == list(rec)  # contract key order kept
    assert "text" not in out["choices"][0]


def test_untruncatable_line_is_line_too_long():
    rec = new_record()
    rec.update(ts="2026-11-22T10:00:00.000Z", client="c" * 20_000)
    with pytest.raises(EntryError) as exc:
        fit_line(rec, 10_000)
    assert exc.value.reason == "line_too_long"


@hsettings(max_examples=examples(60), deadline=None)
@given(st.text(min_size=0, max_size=3000), st.text(max_size=3000), st.integers(4096, 6000))
def test_truncation_always_fits_and_stays_valid_json(prompt, output, limit):
    rec = new_record()
    rec.update(ts="2026-11-22T10:00:00.000Z", prompt=prompt * 3, output=output * 2)
    line, truncated = fit_line(rec, limit)
    assert len(line.encode()) <= limit
    out = json.loads(line)
    assert ("loki_truncated" in out["flags"]) == truncated
    assert rec["prompt"].encode("utf-8", "replace").decode().startswith(out["prompt"]) or truncated


def test_encode_push_groups_streams_and_keeps_order():
    lines = [archive_line(i, "2026-11-22T10:00:00.000Z", user="a" if i % 2 else "b") for i in range(6)]
    entries = [build_entry(l, S, ident, ident) for l in lines]
    body = json.loads(encode_push(entries))
    assert len(body["streams"]) == 2
    for s in body["streams"]:
        seqs = [int(json.loads(v[1])["request_id"].split("-")[1]) for v in s["values"]]
        assert seqs == sorted(seqs)
        assert all(isinstance(v[0], str) and v[0].isdigit() for v in s["values"])


def test_settings_mask_secrets_and_validate(tmp_path):
    s = LokiSettings(url="https://loki", username="u", password="hunter2")
    t = LokiSettings(url="https://loki", bearer_token="tok-secret")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "'***'" in repr(s)
    assert "tok-secret" not in repr(t)
    assert s.push_url == "https://loki/loki/api/v1/push"
    assert LokiSettings(url="http://l/loki/api/v1/push/").push_url == "http://l/loki/api/v1/push"
    for kw in ({"url": "loki:3100"}, {"url": "http://u:p@loki"},
               {"url": "http://l", "username": "u", "password": "p", "bearer_token": "t"},
               {"url": "http://l", "username": "u"}, {"url": "http://l", "tenant": "x" * 151}):
        with pytest.raises(ValueError):
            LokiSettings(**kw)
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert read_secret("env", str(f)) == "s3cret"
    assert read_secret("env", None) == "env" and read_secret("", None) is None


def test_personal_model_name_never_becomes_a_stream_label():
    # The model label comes from the client's body; an e-mail there is not a model.
    from exporter.labels import OTHER
    from exporter.loki.entries import build_labels
    settings = LokiSettings(url="http://loki:3100")
    labels = dict(build_labels({"model": "bob@example.com", "user": "alice"}, settings, lambda u: u))
    assert labels["model"] == OTHER
    assert dict(build_labels({"model": "Qwen2.5-7B-Instruct"}, settings, lambda u: u))["model"] == \
        "Qwen2.5-7B-Instruct"
