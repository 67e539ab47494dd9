"""The repr field grammar of vLLM's request-log messages, and
``SamplingParams``/LoRA (pure; rules 1 of :mod:`exporter.parse.messages`).

A message's fields (``prompt: '...', params: SamplingParams(...), ...``) are
found by scanning each value as exactly one repr value, never by searching
for separators, so text inside a quoted prompt cannot add or replace a
field.
"""

from __future__ import annotations

import re

from exporter.parse.pyrepr import (
    QUOTES,
    ReprError,
    decode_int_list,
    decode_str,
    group_end,
    int_list_end,
    split_kwargs,
    string_end,
    to_float,
    to_int,
    value_end,
)

_FIELD_NAME = re.compile(r"[a-z_][a-z_ ]{0,40}: ")
_EXTRA_KW = re.compile(r", ([A-Za-z_]\w{0,60})=")
_INT_LIST_BODY = re.compile(r"[0-9, ]*")
_ATOM_STOP = re.compile(r"[\s,'\"(\[{]")


def fields(s: str, i: int, end: int) -> dict[str, tuple[int, int]]:
    """``name: value, name: value`` in ``s[i:end]`` → {name: span}; strict."""
    out: dict[str, tuple[int, int]] = {}
    while True:
        m = _FIELD_NAME.match(s, i, end)
        if m is None:
            raise ReprError("expected a field name")
        name = s[i : m.end() - 2]
        if name in out:
            raise ReprError(f"repeated field {name}")
        a = m.end()
        b = _quick_value_end(s, a, end)
        if b >= 0:
            pass  # a whole string literal or id list, followed by ", " or the end
        elif name == "params":
            # Name(...) scanned once; the group's span is kept for sampling_params.
            k = s.find("(", a, min(a + 80, end))
            if k < 0 or not s[a:k].isidentifier():
                raise ReprError("params is not Name(...)")
            b = group_end(s, k)
            out["params("] = (k, b)
            # 0.6.3 closes SamplingParams before ", guided_decoding=...":
            # keep such trailing key=value pairs with the params value.
            while (x := _EXTRA_KW.match(s, b, end)) is not None:
                b = value_end(s, x.end(), end)
            if b != end and not s.startswith(", ", b):
                raise ReprError("junk after params")
        else:
            b = value_end(s, a, end)
            if not _single_value(s, a, b):
                raise ReprError(f"field {name} is not one value")
        out[name] = (a, b)
        if b >= end:
            return out
        i = b + 2


def _quick_value_end(s: str, a: int, end: int) -> int:
    """End of a string literal or int list at ``a`` when one ends the field; else -1.

    The common values, found without the general scanner: prompts, outputs
    and token-id lists are most of the bytes.
    """
    if a >= end:
        return -1
    c = s[a]
    if c in QUOTES:
        b = string_end(s, a)
    elif c == "[":
        k = s.find("]", a, end)
        if k < 0 or _INT_LIST_BODY.fullmatch(s, a + 1, k) is None:
            return -1
        b = k + 1
    else:
        return -1
    return b if b == end or (b < end and s.startswith(", ", b)) else -1


def _single_value(s: str, a: int, b: int) -> bool:
    """``s[a:b]`` is exactly one repr value: literal, list, ``Name(...)`` or bare atom."""
    if a >= b:
        return False
    c = s[a]
    if c in QUOTES:
        return string_end(s, a) == b
    m = _ATOM_STOP.search(s, a, b)
    if m is None:
        return True
    k = m.start()
    c = s[k]
    if c in "([{":
        return group_end(s, k) == b
    if c in QUOTES:  # b'...' style prefix
        return string_end(s, k) == b
    return False


def str_or_none(s: str, span: tuple[int, int]) -> str | None:
    a, b = span
    if s.startswith("None", a) and b == a + 4:
        return None
    text, end = decode_str(s, a)
    if end != b:
        raise ReprError("junk after string")
    return text


def ids_or_none(s: str, span: tuple[int, int]) -> tuple[list[int] | None, int | None]:
    a, b = span
    if b == a + 4 and s.startswith("None", a):
        return None, None
    end, count = int_list_end(s, a)
    if end != b:
        raise ReprError("junk after list")
    return decode_int_list(s, a, end), count


# -- SamplingParams -----------------------------------------------------------


# Clients send the same few parameter sets over and over, and splitting the
# ~40 SamplingParams arguments is the costliest part of a Received line:
# memoise on the exact params text (bounded; a copy is returned).
_PARAMS_MEMO: dict[str, dict] = {}
_PARAMS_MEMO_MAX = 1024


def sampling_params(s: str, f: dict[str, tuple[int, int]]) -> dict:
    """``SamplingParams(k=v, ...)`` (plus 0.6.3 trailing pairs) → contract params."""
    a, b = f["params"]
    text = s[a:b]
    hit = _PARAMS_MEMO.get(text)
    if hit is None:
        hit = _params_uncached(s, f)
        if len(_PARAMS_MEMO) < _PARAMS_MEMO_MAX:
            _PARAMS_MEMO[text] = hit
    return dict(hit)


def _params_uncached(s: str, f: dict[str, tuple[int, int]]) -> dict:
    k, close = f["params("]
    b = f["params"][1]
    kw = split_kwargs(s, k + 1, close - 1)
    pos = close
    while pos < b:  # the 0.6.3 ", guided_decoding=..." tail
        x = _EXTRA_KW.match(s, pos, b)
        if x is None:
            raise ReprError("junk after params")
        end = value_end(s, x.end(), b)
        kw[x.group(1)] = (x.end(), end)
        pos = end
    out: dict = {}
    if "max_tokens" in kw:
        out["max_tokens"] = to_int(s[slice(*kw["max_tokens"])])
    if "temperature" in kw:
        out["temperature"] = to_float(s[slice(*kw["temperature"])])
    if "n" in kw:
        out["n"] = to_int(s[slice(*kw["n"])])
    for key in ("structured_outputs", "guided_decoding"):
        if key in kw:
            out["json_mode"] = _json_mode(s, kw[key])
            break
    return out


def _json_mode(s: str, span: tuple[int, int]) -> bool:
    a, b = span
    k = s.find("(", a, b)
    if k < 0:  # None, or a form we do not know: not JSON mode
        return False
    kw = split_kwargs(s, k + 1, group_end(s, k) - 1)
    if "json_object" in kw and s[slice(*kw["json_object"])] == "True":
        return True
    return any(key in kw and s[slice(*kw[key])] != "None" for key in ("json", "json_schema"))


def lora_name(s: str, span: tuple[int, int]) -> str | None:
    a, b = span
    k = s.find("(", a, b)
    if k < 0:
        return None
    kw = split_kwargs(s, k + 1, group_end(s, k) - 1)
    if "lora_name" not in kw:
        return None
    la, lb = kw["lora_name"]
    if la < lb and s[la] in QUOTES:
        text, end = decode_str(s, la)
        return text if end == lb else None
    return None
