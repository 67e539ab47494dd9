"""``Received request ID: FIELDS.`` and ``Request ID details: FIELDS.``: the
request-log messages that carry the prompt, its token ids and the sampling
parameters (pure; field grammar in :mod:`exporter.parse.fields`, rules in
:mod:`exporter.parse.messages`)."""

from __future__ import annotations

import re

from exporter import events as ev
from exporter.events import Event, Ignored
from exporter.parse.fields import fields, ids_or_none, lora_name, sampling_params, str_or_none
from exporter.parse.header import Header
from exporter.parse.pyrepr import ReprError

_BAD_RECEIVED = Ignored("malformed_received")
_BAD_DETAILS = Ignored("malformed_details")
_ID = re.compile(r"\S+")


def _take_id(s: str, i: int, sep: str) -> tuple[str, int] | None:
    """Id running from ``i`` to ``sep`` (bounded search); returns (id, position of sep)."""
    k = s.find(sep, i, i + 2048)
    if k <= i:
        return None
    rid = s[i:k]
    return (rid, k) if _ID.fullmatch(rid) is not None else None


def _prompt_fields(s: str, f: dict[str, tuple[int, int]], data: dict) -> None:
    if "prompt" in f:
        data["prompt"] = str_or_none(s, f["prompt"])
    if "prompt_token_ids" in f:
        ids, count = ids_or_none(s, f["prompt_token_ids"])
        data["prompt_token_ids"] = ids
        data["prompt_token_count"] = count


def received(s: str, i: int, h: Header) -> Event | Ignored:
    found = _take_id(s, i, ": ")
    if found is None or not s.endswith("."):
        return _BAD_RECEIVED
    rid, k = found
    try:
        f = fields(s, k + 2, len(s) - 1)
        data: dict = {"params": sampling_params(s, f) if "params" in f else {}}
        _prompt_fields(s, f, data)
        lora = f.get("lora_request")
        if lora is not None:
            name = lora_name(s, lora)
            if name is not None:
                data["lora_name"] = name
    except ReprError:
        return _BAD_RECEIVED
    return Event(ev.RECEIVED, rid, h.when, data)


def details(s: str, i: int, rid: str, h: Header) -> Event | Ignored:
    if not s.endswith("."):
        return _BAD_DETAILS
    try:
        f = fields(s, i, len(s) - 1)
        data: dict = {}
        _prompt_fields(s, f, data)
    except ReprError:
        return _BAD_DETAILS
    return Event(ev.DETAILS, rid, h.when, data)
