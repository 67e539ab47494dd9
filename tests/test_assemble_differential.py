"""build_record, as optimised, gives exactly the records of the plain
implementation it replaced (copied below from 8ceeb0d, with the body
params of exporter/wire.py of then): entries drawn by Hypothesis over every
field the correlator fills, with and without a middleware line, the
Rust frontend's summary, learned settings, an engine line and a tokenizer.
Records are compared as their JSON text, so key order counts too."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entry_strategies import BODY, CONTEXT, ENTRY
from exporter.assemble import AssembleContext, build_record, json_text
from exporter.correlate import base_id
from exporter.events import id_count
from exporter.record import ENGINE_FIELDS, PARAM_FIELDS, format_ts, new_record, parse_ts_or_none
from exporter.wire import params
from hyp import examples

# -- the reference: exporter/assemble.py and wire.params as of 8ceeb0d ----------------

_JSON_KINDS = ("json_object", "json_schema")


def _first(body: dict, *names):
    for name in names:
        if body.get(name) is not None:
            return body[name]
    return None


def body_params(body) -> dict:
    """``max_tokens`` (``max_completion_tokens`` wins over ``max_tokens``;
    Responses: ``max_output_tokens``), ``temperature``, ``n`` as sent, null
    when absent; ``json_mode`` true for ``json_object``/``json_schema``
    (``response_format``, Responses ``text.format``), false when the body was
    read and asked for neither, null without a body."""
    if not isinstance(body, dict):
        return {"max_tokens": None, "temperature": None, "n": None, "json_mode": None}
    fmt = body.get("response_format")
    if fmt is None and isinstance(body.get("text"), dict):
        fmt = body["text"].get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return {"max_tokens": _first(body, "max_completion_tokens", "max_tokens", "max_output_tokens"),
            "temperature": _first(body, "temperature"), "n": _first(body, "n"),
            "json_mode": kind in _JSON_KINDS}



_STREAM_FALLBACK = re.compile(r"^<streaming_complete: (\d+) tokens>$")
_SOURCE_RANK = {"usage": 0, "logged_ids": 1, "tokenizer": 2}
_STREAM_DEFAULTED = ("chat", "completion", "responses")  # endpoints whose "stream" defaults to false


def _truncated(value, limit: int | None) -> bool:
    return limit is not None and value is not None and len(value) >= limit


def _output_texts(e: dict, mw: dict | None) -> tuple[list[dict], str]:
    """[(index, text, finish_reason, ids)], and where they came from."""
    if mw is not None and mw.get("choices") is not None:
        chs = sorted(mw["choices"], key=lambda c: c.get("index") or 0)
        return [{"index": c.get("index", i), "text": c.get("text"),
                 "finish_reason": c.get("finish_reason"), "ids": None}
                for i, c in enumerate(chs)], "middleware"
    if e["outputs"]:
        return [dict(o, index=i) for i, o in enumerate(e["outputs"])], "log"
    out = []
    for i, text in enumerate(e["complete"]):
        ids = None
        m = _STREAM_FALLBACK.match(text or "")
        if m:  # vLLM's placeholder when the streamed text was empty
            text, ids = "", int(m.group(1))
        out.append({"index": i, "text": text, "finish_reason": e["last_finish"], "ids": ids})
    return out, "log"


class _Sources:
    """What one entry offers, read once: the middleware line, the client's
    logged JSON body, the fields that find the logged prompt, and ``limit``,
    the ``--max-log-len`` in effect (the flag, else the entry's start-up
    setting)."""

    __slots__ = ("body", "choices", "ctx", "e", "flags", "limit", "log_prompt", "middleware_seen", "mw",
                 "out_origin")

    def __init__(self, e: dict, mw: dict | None, body: dict | None, ctx: AssembleContext, flags: list,
                 middleware_seen: bool = False):
        self.e, self.mw, self.body, self.ctx, self.flags = e, mw, body, ctx, flags
        self.middleware_seen = middleware_seen
        self.log_prompt: str | None = None
        self.choices: list | None = None
        self.out_origin = "log"
        if ctx.max_log_len is not None:
            self.limit = ctx.max_log_len
        else:
            cfg = e.get("cfg")
            self.limit = cfg.get("max_log_len") if cfg else None


def reference_build_record(e: dict, ctx: AssembleContext, *, middleware_seen: bool = False) -> dict | None:
    """The record for a finished/evicted entry; None if there is no request
    behind it (a DEBUG JSON body whose id matches nothing). The steps follow
    the module docstring's "which source wins", field group by group.
    ``middleware_seen``: a middleware source exists (the correlator's), so a
    record without its line is flagged ``middleware_missing``."""
    mw = e.get("mw")
    has_log = bool(e["received"] or e["details"] or e["outputs"] or e["complete"]
                   or e["deltas"] or e["aborted"] or e["failed"] or e["out_ids"] is not None
                   or e.get("summary"))
    if mw is None and not has_log:
        return None
    src = _Sources(e, mw, e["body"] if isinstance(e["body"], dict) else None, ctx, [], middleware_seen)
    rec = new_record()
    rec["instance"] = src.ctx.instance
    rec["sources"] = (["vllm_log"] if has_log or src.body else []) + (["middleware"] if mw is not None else [])
    _identity(rec, src)
    _prompt(rec, src)
    _outputs(rec, src)
    _params(rec, src)
    _tokens(rec, src)
    _outcome(rec, src)
    _flags(rec, src)
    _engine(rec, e)
    return rec


def _engine(rec: dict, e: dict) -> None:
    """The stat-logger plugin's timings (``e.get``: checkpoints from before it had none)."""
    line = e.get("engine")
    if line is not None:
        rec["engine"] = {k: line.get(k) for k in ENGINE_FIELDS}
        if "engine" not in rec["sources"]:
            rec["sources"].append("engine")


def _identity(rec: dict, src: _Sources) -> None:
    """ts, request_id, endpoint, model, user, stream."""
    e, mw, body = src.e, src.mw or {}, src.body
    received_ts = parse_ts_or_none(mw.get("received_at")) or e["received_t"] or e["first_t"]
    rec["ts"] = format_ts(received_ts) if received_ts is not None else None
    log_id = e["log_id"]
    rec["request_id"] = log_id or mw.get("response_id") or mw.get("request_id") or e["key"]
    rec["endpoint"] = mw.get("endpoint") or (base_id(log_id)[1] if log_id else None)
    rec["model"] = mw.get("model") or (body or {}).get("model") or src.ctx.model \
        or (e.get("summary") or {}).get("model") or (e.get("cfg") or {}).get("model")
    user, source = mw.get("user"), mw.get("identity_source")
    invalid = (mw.get("identity") or {}).get("invalid_reason") is not None
    if user is None and not invalid and body is not None and body.get("user") is not None:
        # Log only (or a line without a user): the client's own field. Never
        # when the middleware refused the request's identity.
        user, source = str(body.get("user")), "user_field"
    if source is None and user is not None and src.mw is not None:
        # A line from before identity_source existed: the same order as the
        # middleware's (header, user field, key hash), told apart by value.
        source = _legacy_source(user, mw.get("identity") or {})
    rec["user"] = user
    rec["identity_source"] = source if user is not None else None
    if invalid:
        src.flags.append("identity_invalid")
    stream = mw.get("stream")
    if stream is None and body is not None and isinstance(body.get("stream"), bool):
        stream = body["stream"]
    if stream is None and body is not None and "stream" not in body and rec["endpoint"] in _STREAM_DEFAULTED:
        stream = False  # the OpenAI default: the body was logged as sent, without "stream"
    rec["stream"] = e["stream"] if stream is None else stream


def _legacy_source(user: str, ident: dict) -> str | None:
    if user in (ident.get("headers") or {}).values():
        return None  # header or header_secret: the old line does not say which
    if user == ident.get("user_field"):
        return "user_field"
    if user.startswith("key:") and (ident.get("api_key_hash") or "").startswith(user[4:]):
        return "api_key"
    return None


def _prompt(rec: dict, src: _Sources) -> None:
    """The client's messages (middleware) before the rendered prompt vLLM logged."""
    e = src.e
    src.log_prompt = (e["details"] or {}).get("prompt") or (e["received"] or {}).get("prompt")
    if src.mw is not None and src.mw.get("prompt") is not None:
        rec["prompt"] = json_text(src.mw["prompt"])
    else:
        rec["prompt"] = src.log_prompt
        if _truncated(src.log_prompt, src.limit):
            src.flags.append("prompt_truncated")


def _outputs(rec: dict, src: _Sources) -> None:
    """output (choice 0) and choices (more than one)."""
    src.choices, src.out_origin = _output_texts(src.e, src.mw)
    texts = [c["text"] for c in src.choices]
    rec["output"] = texts[0] if texts else None
    if src.out_origin == "log" and any(_truncated(t, src.limit) for t in texts):
        src.flags.append("output_truncated")
    if len(src.choices) > 1:
        rec["choices"] = [{"index": c["index"], "text": c["text"],
                           "finish_reason": c["finish_reason"]} for c in src.choices]


def _params(rec: dict, src: _Sources) -> None:
    """Client-sent first (middleware, then the logged body), then vLLM's effective values."""
    params = dict.fromkeys(PARAM_FIELDS)
    for given in ((src.mw or {}).get("params") or {}, body_params(src.body) if src.body is not None else {},
                  (src.e["received"] or {}).get("params") or {}):
        for k in PARAM_FIELDS:
            if params[k] is None and given.get(k) is not None:
                params[k] = given[k]
    body_read = src.body is not None or isinstance((src.mw or {}).get("stream"), bool)
    if params["n"] is None and body_read and rec["endpoint"] in ("chat", "completion"):
        params["n"] = 1  # the OpenAI default for a body read whole without "n"
    rec["params"] = params


def _tokens(rec: dict, src: _Sources) -> None:
    """prompt_tokens, completion_tokens and the weakest source used."""
    e, mw, ctx, limit = src.e, src.mw, src.ctx, src.limit
    used: list[str] = []
    usage = (mw or {}).get("usage") or {}
    summary = e.get("summary") or {}
    pt = usage.get("prompt_tokens")
    if pt is None and summary.get("prompt_tokens") is not None:
        pt = summary["prompt_tokens"]  # the Rust frontend logs the response's usage
    if pt is not None:
        used.append("usage")
    elif mw is not None and mw.get("rejected_prompt_tokens") is not None:
        # The count vLLM states when it rejects an over-long prompt. vLLM 0.32
        # says "at least N input tokens" (it stops counting): flagged as a
        # lower bound, still enough to see an oversized input.
        pt = mw["rejected_prompt_tokens"]
        used.append("usage")
        if "at least" in (mw.get("error") or ""):
            src.flags.append("prompt_tokens_at_least")
    else:
        ids = (e["details"] or {}).get("prompt_token_ids")
        if ids is None:
            ids = (e["received"] or {}).get("prompt_token_ids")
        n = id_count(ids)
        if n is not None and not (limit is not None and n >= limit):
            pt = n
            used.append("logged_ids")
        elif ctx.count_tokens and src.log_prompt is not None and not _truncated(src.log_prompt, limit):
            pt = ctx.count_tokens(src.log_prompt, rec["endpoint"] == "chat")
            if pt is not None:
                used.append("tokenizer")
    rec["prompt_tokens"] = pt

    ct = usage.get("completion_tokens")
    if ct is None:
        ct = summary.get("completion_tokens")
    if ct is not None:
        used.append("usage")
    else:
        ct, how = _completion_from_log(e, src.choices, rec["params"].get("n"), limit, ctx, src.out_origin)
        if ct is not None:
            used.append(how)
    rec["completion_tokens"] = ct
    rec["tokens_source"] = max(used, key=_SOURCE_RANK.__getitem__) if used else None


def _outcome(rec: dict, src: _Sources) -> None:
    """status, finish_reason, empty_response, latency, TTFT, HTTP status, error, client, identity."""
    e, mw, choices = src.e, src.mw, src.choices
    if mw is not None:
        status = mw.get("status") or "completed"
    elif e["aborted"] or (e.get("summary") or {}).get("finish_reason") == "abort":
        status = "aborted"
    elif e["failed"]:
        status = "error"
    elif e["done_t"] is not None:
        status = "completed"
    else:
        status = "incomplete"
    rec["status"] = status
    finish = choices[0]["finish_reason"] if choices else None
    if finish in ("streaming_complete", "None"):
        finish = None
    if finish is None and e["stream"] and e["last_finish"]:
        finish = e["last_finish"]
    if finish is None and e.get("summary"):
        finish = e["summary"].get("finish_reason")
    if finish is None and status == "aborted":
        finish = "abort"
    rec["finish_reason"] = finish

    texts = [c["text"] for c in choices]
    if mw is not None and mw.get("empty_response") is not None:
        rec["empty_response"] = bool(mw["empty_response"])
    elif status == "completed" and texts:
        # From the log: a logged non-streaming text is never empty; a stream's
        # complete line shows the accumulated text.
        rec["empty_response"] = all(t == "" for t in texts)
    if mw is not None:
        rec["latency_seconds"] = mw.get("latency_seconds")
        rec["ttft_seconds"] = mw.get("ttft_seconds")
        rec["http_status"] = mw.get("status_code")
        rec["error"] = mw.get("error")
        rec["client"] = mw.get("client")
        rec["identity"] = mw.get("identity")
    elif e["precise"] and e["received_t"] is not None and e["done_t"] is not None:
        rec["latency_seconds"] = round(max(0.0, e["done_t"] - e["received_t"]), 6)
    if e["failed"] and rec["error"] is None:
        rec["error"] = e["failed"]


def _flags(rec: dict, src: _Sources) -> None:
    """Data-quality flags (detector findings are added by the pipeline)."""
    flags = src.flags
    pt = rec["prompt_tokens"]
    if pt is not None and pt > src.ctx.oversized_input_tokens:
        flags.append("oversized_input")
    if src.middleware_seen and src.mw is None:
        flags.append("middleware_missing")
    for checked in (src.mw, src.body):  # what exporter.parse.untrusted dropped or escaped
        if checked is not None and checked.get("input_flags"):
            flags.extend(f for f in checked["input_flags"] if f not in flags)
    rec["flags"] = flags


def _completion_from_log(e, choices, n, limit, ctx, out_origin):
    if out_origin != "log":
        return None, None
    if e["out_ids"] is not None and not e.get("out_ids_truncated"):
        return e["out_ids"], "logged_ids"
    ids = [c["ids"] for c in choices]  # ints or None
    known = None not in ids
    if e["outputs"] and known and (n is None or n == len(choices)) and (
            limit is None or not ids or max(ids) < limit):
        return sum(ids), "logged_ids"
    if e["stream"] and e["deltas"] and e["delta_ids_known"]:
        return e["delta_ids"], "logged_ids"
    if choices and known:  # stream placeholder count
        return sum(ids), "logged_ids"
    if ctx.count_tokens and choices and (n is None or n == len(choices)) and not any(
            _truncated(c["text"], limit) for c in choices) and all(c["text"] is not None for c in choices):
        counts = [ctx.count_tokens(c["text"], False) if c["text"] else 0 for c in choices]
        if all(x is not None for x in counts):
            return sum(counts), "tokenizer"
    return None, None


def reference_json_text(value):
    return json_text(value)


def outcome(fn, *args, **kwargs):
    """JSON text of the record (None, or the exception's type)."""
    try:
        rec = fn(*args, **kwargs)
    except Exception as exc:  # the reference's failures must stay failures
        return ("raises", type(exc).__name__)
    return json.dumps(rec, ensure_ascii=False)


@settings(max_examples=examples(800), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ENTRY, CONTEXT, st.booleans())
def test_build_record_equals_the_reference(entry, ctx, seen):
    assert outcome(build_record, entry, ctx, middleware_seen=seen) == \
        outcome(reference_build_record, entry, ctx, middleware_seen=seen)


@settings(max_examples=examples(2000), deadline=None)
@given(BODY)
def test_body_params_equal_the_reference(body):
    assert list(params(body).items()) == list(body_params(body).items())


@pytest.mark.parametrize("seen", [False, True])
def test_a_log_only_entry(seen):
    entry = {"key": "k", "log_id": "chatcmpl-k", "endpoint": "chat", "first_t": 1795314449.0,
             "last_t": 1795314449.0, "received_t": 1795314449.0, "done_t": 1795314449.0, "status": None,
             "received": {"params": {"max_tokens": 16, "temperature": 0.0, "n": 1, "json_mode": False}},
             "details": {"prompt": "hi", "prompt_token_ids": [1, 2]},
             "body": {"model": "tiny", "user": "u1", "max_tokens": 16}, "outputs": [
                 {"text": "yo", "finish_reason": "length", "ids": None}], "deltas": 0, "delta_ids": 0,
             "delta_ids_known": True, "last_finish": None, "complete": [], "out_ids": 16, "mw": None,
             "aborted": False, "failed": None, "stream": False, "precise": False, "engine": None, "order": 0}
    ctx = AssembleContext()
    rec = build_record(entry, ctx, middleware_seen=seen)
    assert outcome(build_record, entry, ctx, middleware_seen=seen) == \
        outcome(reference_build_record, entry, ctx, middleware_seen=seen)
    assert list(rec) == list(new_record())
    assert rec["params"] == {"max_tokens": 16, "temperature": 0.0, "n": 1, "json_mode": False}
    assert rec["tokens_source"] == "logged_ids" and rec["stream"] is False
    assert rec["flags"] == (["middleware_missing"] if seen else [])


def reference_utc_text(epoch_seconds: float) -> str:
    from datetime import datetime, timezone
    stamp = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@settings(max_examples=examples(3000), deadline=None)
@given(st.floats(min_value=-62135596800.0, max_value=253402300799.0) | st.integers(0, 2**33).map(float)
       | st.sampled_from([0.0, 0.0005, 0.9995, 1795314449.1235, 1795314449.9999, -0.001, -31536000000.0]))
def test_utc_text_equals_the_reference(t):
    from exporter.wire import utc_text
    assert utc_text(t) == reference_utc_text(t)
