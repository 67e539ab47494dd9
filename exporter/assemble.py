"""Turn one correlated request (see :mod:`exporter.correlate`) into a record.

Which source wins, field by field (unknown stays null, never a guess):

* identity, status, HTTP status, error, latency, TTFT, usage: the middleware
  (it saw the actual HTTP exchange); without it, what vLLM's log supports.
* ``prompt_tokens``/``completion_tokens``: the response's ``usage`` (via the
  middleware; a context-length rejection's count is the one vLLM states in
  its error) → token ids as logged (never a list cut by ``--max-log-len``) →
  the served model's tokenizer on full logged text → null. ``tokens_source``
  names the weakest source used.
* ``latency_seconds`` from the log alone only when its timestamps have
  sub-second precision (JSON formatter); vLLM's text format has whole
  seconds, which would make sub-second requests read as 0 or 1 s.
* ``empty_response`` from the log alone only for streams (stock vLLM never
  logs an empty non-streaming answer, so silence proves nothing).
* ``engine``: only the stat-logger plugin's line (vLLM's own measurement);
  null without one.
* ``params``: what the client sent (middleware, JSON body) before vLLM's
  effective ``SamplingParams`` (whose ``max_tokens`` is filled in by vLLM).
* ``stream`` and ``params.n`` of a client body that was read whole and did
  not set them are the OpenAI API's documented defaults (``false``, ``1``;
  vLLM logs the body as sent, unset fields left out). Nothing else is
  defaulted: vLLM's own defaults (``temperature`` from the model's
  generation config, ``max_tokens``) are not the API's.
* ``model``: the name the client sent → ``--model`` → the name vLLM serves
  as its start-up line said (``cfg``, :mod:`exporter.learned`).
* The ``--max-log-len`` in effect is the flag, else the one vLLM's start-up
  line set when the request came (``cfg``): a list or text that long may be
  cut, so it is never counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import accel
from .correlate import ENDPOINT_BY_PREFIX
from .wire import params as body_params
from .record import ENGINE_FIELDS, PARAM_FIELDS, RECORD_FIELDS, format_ts, parse_ts_or_none

_STREAM_FALLBACK = re.compile(r"^<streaming_complete: (\d+) tokens>$")
_SOURCE_RANK = {"usage": 0, "logged_ids": 1, "tokenizer": 2}
_STREAM_DEFAULTED = ("chat", "completion", "responses")  # endpoints whose "stream" defaults to false

# build_record runs once per request, so its constant costs count: a record
# starts as a copy of this (~10x cheaper than exporter.record.new_record's
# dict.fromkeys; the values new_record sets are all set below), and an
# absent middleware line or mapping reads as this empty dict, never written
# to, instead of a fresh ``{}`` at every lookup.
_BLANK_RECORD = dict.fromkeys(RECORD_FIELDS)
_NOTHING: dict = {}
# tokens_source, the weaker of the prompt's and the completion's sources.
_WEAKER = {(a, b): max((x for x in (a, b) if x is not None), key=_SOURCE_RANK.__getitem__, default=None)
           for a in (None, *_SOURCE_RANK) for b in (None, *_SOURCE_RANK)}


@dataclass(frozen=True)
class AssembleContext:
    model: str | None = None
    instance: str | None = None  # --instance: the replica that served the request
    max_log_len: int | None = None
    oversized_input_tokens: int = 2048
    count_tokens: Callable[[str, bool], int | None] | None = None  # (text, is_chat)


def _truncated(value, limit: int | None) -> bool:
    return limit is not None and value is not None and len(value) >= limit


def _endpoint_of(log_id: str) -> str | None:
    """``correlate.base_id(log_id)[1]`` without computing the base id."""
    for prefix, endpoint in ENDPOINT_BY_PREFIX:
        if log_id.startswith(prefix):
            return endpoint
    return None


def _output_texts(e: dict, mw: dict | None) -> tuple[list[dict], str]:
    """[(index, text, finish_reason, ids)], and where they came from."""
    if mw is not None and mw.get("choices") is not None:
        chs = sorted(mw["choices"], key=lambda c: c.get("index") or 0)
        return [{"index": c.get("index", i), "text": c.get("text"),
                 "finish_reason": c.get("finish_reason"), "ids": None}
                for i, c in enumerate(chs)], "middleware"
    outputs = e["outputs"]
    if outputs:
        if len(outputs) == 1:  # most requests: no comprehension (a call of its own before Python 3.12)
            return [dict(outputs[0], index=0)], "log"
        return [dict(o, index=i) for i, o in enumerate(outputs)], "log"
    out = []
    for i, text in enumerate(e["complete"]):
        ids = None
        m = _STREAM_FALLBACK.match(text or "")
        if m:  # vLLM's placeholder when the streamed text was empty
            text, ids = "", int(m.group(1))
        out.append({"index": i, "text": text, "finish_reason": e["last_finish"], "ids": ids})
    return out, "log"


def build_record(e: dict, ctx: AssembleContext, *, middleware_seen: bool = False) -> dict | None:
    """:func:`py_build_record`; the C module's (exporter/_assemble.c) for a
    log-only entry it accepts: the same record, keys, order and types."""
    if _C is not None and e.get("mw") is None:
        rec = _C.build(e, ctx.instance, ctx.model, ctx.max_log_len, ctx.oversized_input_tokens,
                       middleware_seen, ctx.count_tokens)
        if rec is not None:
            return rec
    return py_build_record(e, ctx, middleware_seen=middleware_seen)


def py_build_record(e: dict, ctx: AssembleContext, *, middleware_seen: bool = False) -> dict | None:
    """The record for a finished/evicted entry; None if there is no request
    behind it (a DEBUG JSON body whose id matches nothing). The steps follow
    the module docstring's "which source wins", field group by group.
    ``middleware_seen``: a middleware source exists (the correlator's), so a
    record without its line is flagged ``middleware_missing``.

    One function, a section per field group: it runs once per request, and
    a helper per group sharing a state object cost a tenth more."""
    mw = e.get("mw")
    has_log = bool(e["received"] or e["details"] or e["outputs"] or e["complete"]
                   or e["deltas"] or e["aborted"] or e["failed"] or e["out_ids"] is not None
                   or e.get("summary"))
    if mw is None and not has_log:
        return None
    # What the entry offers, read once: the middleware line (``line``: the
    # line or an empty dict), the client's logged JSON body, the Rust
    # frontend's summary, and ``limit``, the --max-log-len in effect (the
    # flag, else the entry's start-up setting).
    line = _NOTHING if mw is None else mw
    body = e["body"]
    if not isinstance(body, dict):
        body = None
    summary = e.get("summary") or _NOTHING
    limit = ctx.max_log_len
    if limit is None:
        cfg = e.get("cfg")
        limit = cfg.get("max_log_len") if cfg else None
    flags: list[str] = []
    rec = _BLANK_RECORD.copy()  # every field is set below or stays unknown
    rec["instance"] = ctx.instance
    if has_log or body:
        rec["sources"] = ["vllm_log"] if mw is None else ["vllm_log", "middleware"]
    else:
        rec["sources"] = [] if mw is None else ["middleware"]

    # -- identity: ts, request_id, endpoint, model, user, stream
    received_ts = (parse_ts_or_none(line.get("received_at")) if line else None) or e["received_t"] or e["first_t"]
    rec["ts"] = format_ts(received_ts) if received_ts is not None else None
    log_id = e["log_id"]
    rec["request_id"] = log_id or line.get("response_id") or line.get("request_id") or e["key"]
    rec["endpoint"] = endpoint = line.get("endpoint") or (_endpoint_of(log_id) if log_id else None)
    rec["model"] = line.get("model") or (body.get("model") if body is not None else None) or ctx.model \
        or summary.get("model") or (e.get("cfg") or _NOTHING).get("model")
    if mw is None:  # the log alone (no line to read three fields of)
        user = source = None
        invalid = False
    else:
        user, source = mw.get("user"), mw.get("identity_source")
        invalid = (mw.get("identity") or _NOTHING).get("invalid_reason") is not None
    if user is None and not invalid and body is not None and body.get("user") is not None:
        # Log only (or a line without a user): the client's own field. Never
        # when the middleware refused the request's identity.
        user, source = str(body.get("user")), "user_field"
    if source is None and user is not None and mw is not None:
        # A line from before identity_source existed: the same order as the
        # middleware's (header, user field, key hash), told apart by value.
        source = _legacy_source(user, line.get("identity") or {})
    rec["user"] = user
    rec["identity_source"] = source if user is not None else None
    if invalid:
        flags.append("identity_invalid")
    stream = line_stream = line.get("stream")
    if stream is None and body is not None:
        stream = body.get("stream")
        if stream.__class__ is not bool:
            # The OpenAI default: the body was logged as sent, without "stream".
            stream = False if "stream" not in body and endpoint in _STREAM_DEFAULTED else None
    rec["stream"] = e["stream"] if stream is None else stream

    # -- prompt: the client's messages (middleware) before the rendered prompt vLLM logged
    log_prompt = (e["details"] or _NOTHING).get("prompt") or (e["received"] or _NOTHING).get("prompt")
    if line.get("prompt") is not None:
        rec["prompt"] = json_text(mw["prompt"])
    else:
        rec["prompt"] = log_prompt
        if limit is not None and log_prompt is not None and len(log_prompt) >= limit:  # _truncated
            flags.append("prompt_truncated")

    # -- output (choice 0) and choices (more than one)
    choices, origin = _output_texts(e, mw)
    rec["output"] = choices[0]["text"] if choices else None
    if limit is not None and origin == "log" and any(_truncated(c["text"], limit) for c in choices):
        flags.append("output_truncated")
    if len(choices) > 1:
        rec["choices"] = [{"index": c["index"], "text": c["text"],
                           "finish_reason": c["finish_reason"]} for c in choices]

    # -- params: client-sent first (middleware, then the logged body), then vLLM's effective values
    sent = line.get("params") or _NOTHING
    effective = (e["received"] or _NOTHING).get("params") or _NOTHING
    if sent is _NOTHING and body is not None:
        # The usual log-only case: wire.params' fresh dict (PARAM_FIELDS, in
        # order) is the record's, its unknowns filled from vLLM's values.
        params = body_params(body)
        for k, v in params.items():
            if v is None:
                params[k] = effective.get(k)
    else:
        logged = body_params(body) if body is not None else _NOTHING
        params = {}
        for k in PARAM_FIELDS:
            v = sent.get(k)
            if v is None:
                v = logged[k] if body is not None else None
                if v is None:
                    v = effective.get(k)
            params[k] = v
    body_read = body is not None or line_stream.__class__ is bool
    if params["n"] is None and body_read and endpoint in ("chat", "completion"):
        params["n"] = 1  # the OpenAI default for a body read whole without "n"
    rec["params"] = params

    # -- tokens: prompt_tokens, completion_tokens and the weakest source used
    usage = line.get("usage") or _NOTHING
    pt_how = ct_how = None
    pt = usage.get("prompt_tokens")
    if pt is None and summary.get("prompt_tokens") is not None:
        pt = summary["prompt_tokens"]  # the Rust frontend logs the response's usage
    if pt is not None:
        pt_how = "usage"
    elif mw is not None and mw.get("rejected_prompt_tokens") is not None:
        # The count vLLM states when it rejects an over-long prompt. vLLM 0.32
        # says "at least N input tokens" (it stops counting): flagged as a
        # lower bound, still enough to see an oversized input.
        pt = mw["rejected_prompt_tokens"]
        pt_how = "usage"
        if "at least" in (mw.get("error") or ""):
            flags.append("prompt_tokens_at_least")
    else:
        ids = (e["details"] or _NOTHING).get("prompt_token_ids")
        if ids is None:
            ids = (e["received"] or _NOTHING).get("prompt_token_ids")
        n = ids if ids is None or isinstance(ids, int) else len(ids)  # events.id_count, inlined
        if n is not None and not (limit is not None and n >= limit):
            pt = n
            pt_how = "logged_ids"
        elif ctx.count_tokens and log_prompt is not None and not _truncated(log_prompt, limit):
            pt = ctx.count_tokens(log_prompt, endpoint == "chat")
            if pt is not None:
                pt_how = "tokenizer"
    rec["prompt_tokens"] = pt
    ct = usage.get("completion_tokens")
    if ct is None:
        ct = summary.get("completion_tokens")
    if ct is not None:
        ct_how = "usage"
    else:
        ct, ct_how = _completion_from_log(e, choices, params["n"], limit, ctx, origin)
        if ct is None:
            ct_how = None
    rec["completion_tokens"] = ct
    rec["tokens_source"] = _WEAKER[pt_how, ct_how]

    # -- outcome: status, finish_reason, empty_response, latency, TTFT, HTTP status, error, client, identity
    if mw is not None:
        status = mw.get("status") or "completed"
    elif e["aborted"] or summary.get("finish_reason") == "abort":
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
    if finish is None and summary:
        finish = summary.get("finish_reason")
    if finish is None and status == "aborted":
        finish = "abort"
    rec["finish_reason"] = finish
    if mw is not None and mw.get("empty_response") is not None:
        rec["empty_response"] = bool(mw["empty_response"])
    elif status == "completed" and choices:
        # From the log: a logged non-streaming text is never empty; a stream's
        # complete line shows the accumulated text.
        empty = True
        for c in choices:
            if c["text"] != "":
                empty = False
                break
        rec["empty_response"] = empty
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

    # -- flags: data quality (detector findings are added by the pipeline)
    if pt is not None and pt > ctx.oversized_input_tokens:
        flags.append("oversized_input")
    if middleware_seen and mw is None:
        flags.append("middleware_missing")
    for checked in (mw, body):  # what exporter.parse.untrusted dropped or escaped
        if checked is not None and checked.get("input_flags"):
            flags.extend(f for f in checked["input_flags"] if f not in flags)
    rec["flags"] = flags

    # -- engine: the stat-logger plugin's timings (``e.get``: checkpoints from before it had none)
    engine = e.get("engine")
    if engine is not None:
        rec["engine"] = {k: engine.get(k) for k in ENGINE_FIELDS}
        if "engine" not in rec["sources"]:
            rec["sources"].append("engine")
    return rec


def _legacy_source(user: str, ident: dict) -> str | None:
    if user in (ident.get("headers") or {}).values():
        return None  # header or header_secret: the old line does not say which
    if user == ident.get("user_field"):
        return "user_field"
    if user.startswith("key:") and (ident.get("api_key_hash") or "").startswith(user[4:]):
        return "api_key"
    return None


def _completion_from_log(e, choices, n, limit, ctx, out_origin):
    if out_origin != "log":
        return None, None
    if e["out_ids"] is not None and not e.get("out_ids_truncated"):
        return e["out_ids"], "logged_ids"
    ids = [choices[0]["ids"]] if len(choices) == 1 else [c["ids"] for c in choices]  # ints or None
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


def json_text(value) -> str | None:
    """A middleware prompt as the record's text (the parser already made
    structured prompts JSON text; older checkpoints may hold structures)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- the C accelerator (exporter/_assemble.c): build_record without the
# middleware, declining (None) whatever it is not sure of -------------------
def _parts() -> list[Path]:
    """_assemble.c and its _assemble_*.h parts in name order, as setup.py hashes them."""
    return sorted(Path(__file__).parent.glob("_assemble*.[ch]"), key=lambda p: p.name)


def _load():
    mod = accel.load("exporter._assemble", _parts())
    if mod is not None:
        mod.configure(_BLANK_RECORD, format_ts, ENDPOINT_BY_PREFIX, ENGINE_FIELDS)
    return mod


_C = None
IMPLEMENTATION = "python"
set_enabled = accel.switch(globals(), _load)
set_enabled(True)
