"""``Generated response ...`` lines of vLLM's request logger (pure; the rules
are :mod:`exporter.parse.messages`'): the output of a request (``output``
events) and its token ids (``output_details``)."""

from __future__ import annotations

import re

from exporter import events as ev
from exporter.events import Event, Ignored
from exporter.parse.fields import fields, ids_or_none, str_or_none
from exporter.parse.header import Header
from exporter.parse.pyrepr import DQ_PATTERN, SQ_PATTERN, ReprError, decode_literal

_BAD_OUTPUT = Ignored("malformed_output")
_WORD = re.compile(r"[A-Za-z_]\w{0,60}")
# Generated-response lines, whole: literal alternatives cannot overlap and the
# string literal is the unrolled-loop form, so this cannot backtrack badly.
_OUTPUT_LINE = re.compile(
    r"(\S{1,2048}?)( \(streaming (?:delta|complete)\))?"
    r"(?:: output: (" + SQ_PATTERN + "|" + DQ_PATTERN + r"|None), "
    r"(?:output_token_ids: (\[[0-9, ]*\]|None), )?finish_reason: ([A-Za-z_]\w{0,60})"
    r"| details: output_token_ids: (\[[0-9, ]*\]|None))",
    re.S,
)
_STREAM = {"": "", " (streaming delta)": "delta", " (streaming complete)": "complete"}


def generated(s: str, i: int, h: Header) -> Event | Ignored:
    m = _OUTPUT_LINE.fullmatch(s, i)
    if m is not None:
        try:
            return _generated_fast(s, m, h)
        except ReprError:
            return _BAD_OUTPUT
    return _generated_general(s, i, h)


def _generated_fast(s: str, m: re.Match, h: Header) -> Event:
    """The exact shapes vLLM writes, matched in one regex (most lines of a stream)."""
    rid, info = m.group(1), _STREAM[m.group(2) or ""]
    if m.start(6) >= 0:  # "... details: output_token_ids: L"
        ids, count = ids_or_none(s, m.span(6))
        return Event(ev.OUTPUT_DETAILS, rid, h.when, {"stream_info": info, "output_token_ids": ids, "output_token_count": count})
    data: dict = {"stream_info": info}
    if m.start(4) >= 0:
        data["output_token_ids"], data["output_token_count"] = ids_or_none(s, m.span(4))
    a, b = m.span(3)
    data["output"] = None if s[a] == "N" else decode_literal(s, a, b)
    reason = m.group(5)
    data["finish_reason"] = None if reason == "None" else reason
    return Event(ev.OUTPUT, rid, h.when, data)


def _generated_general(s: str, i: int, h: Header) -> Event | Ignored:
    k = s.find(" ", i, i + 2048)
    if k <= i:
        return _BAD_OUTPUT
    token = s[i:k]
    info, details = "", False
    if token.endswith(":"):  # non-streaming output line: "ID: output: ..."
        rid, pos = token[:-1], k + 1
    else:
        rid, pos = token, k
        for candidate in (" (streaming delta)", " (streaming complete)"):
            if s.startswith(candidate, k):
                info, pos = candidate, k + len(candidate)
                break
        if s.startswith(" details: ", pos):
            details, pos = True, pos + 10
        elif s.startswith(": ", pos):
            pos += 2
        else:
            return _BAD_OUTPUT
    if not rid:
        return _BAD_OUTPUT
    try:
        f = fields(s, pos, len(s))
        data: dict = {"stream_info": _STREAM[info]}
        if "output_token_ids" in f:
            data["output_token_ids"], data["output_token_count"] = ids_or_none(s, f["output_token_ids"])
        if details:
            if "output_token_ids" not in f:
                raise ReprError("details line without output_token_ids")
            return Event(ev.OUTPUT_DETAILS, rid, h.when, data)
        if "output" not in f or "finish_reason" not in f:
            raise ReprError("output line without output/finish_reason")
        data["output"] = str_or_none(s, f["output"])
        reason = s[slice(*f["finish_reason"])]
        if _WORD.fullmatch(reason) is None:
            raise ReprError("finish_reason is not a word")
        data["finish_reason"] = None if reason == "None" else reason
    except ReprError:
        return _BAD_OUTPUT
    return Event(ev.OUTPUT, rid, h.when, data)
