"""Decode the Python ``repr()`` fragments that vLLM writes into its log lines.

vLLM renders prompts and outputs with ``%r`` and token ids, ``SamplingParams``
and LoRA requests with ``%s`` of lists and dataclass reprs. This module reads
those fragments back without ``eval``. Rules:

- Every function takes the whole line ``s`` and a start index and returns an
  end index, so callers never copy megabyte slices just to look at them.
- Strings: single- or double-quoted, as ``repr`` writes them; every Python
  escape is decoded (``\\n \\t \\r \\\\ \\' \\" \\a \\b \\f \\v``, octal,
  ``\\xhh``, ``\\uhhhh``, ``\\Uhhhhhhhh``); non-ASCII text is kept as is. A lone
  surrogate (``\\ud800``) becomes U+FFFD, because the record is later written
  as UTF-8 and a surrogate would make that write fail.
- Ends of literals are found with an unrolled-loop regex
  (``[^'\\\\]*(?:\\\\.[^'\\\\]*)*'``) that matches every character in exactly one
  way, so it cannot backtrack more than linearly, even when it fails.
  Escapes are decoded by the ``unicode_escape`` codec (C speed) when only the
  escapes ``repr`` writes occur, otherwise by a small hand-written loop.
  A group may nest at most 200 deep and hold at most 100 000 brackets.
- Token-id lists are ``[1, 2, 3]``; a list is accepted only when its body is
  digits, commas and spaces. :func:`int_list_end` counts ids without creating
  Python ints; :func:`decode_int_list` builds the list.
- :func:`value_end` skips one arbitrary repr value (atom, string, bracketed
  group, ``Name(...)``) and stops at the first top-level ``", "``. Text inside
  quotes never ends a value, which is what keeps a prompt containing
  ``", finish_reason: "`` from being taken as a field boundary.

Malformed input raises :class:`ReprError` (a ``ValueError``).
"""

from __future__ import annotations

import json
import re

QUOTES = "'\""

_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\n": "",  # backslash-newline: line continuation inside a literal
}
_HEX_LEN = {"x": 2, "u": 4, "U": 8}
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")

SQ_PATTERN = r"'[^'\\]*(?:\\.[^'\\]*)*'"  # one single-quoted literal, unrolled loop
DQ_PATTERN = r'"[^"\\]*(?:\\.[^"\\]*)*"'
# Skip, in one C-level match, everything up to the next bracket (inside a
# group) or the next bracket/comma (top level), whole string literals
# included. Nothing follows the star, so the match never backtracks; it stops
# at a bracket, a comma, an unterminated quote or the end.
_GROUP_SKIP = re.compile(r"(?:[^'\"()\[\]{}]+|" + SQ_PATTERN + "|" + DQ_PATTERN + ")*", re.S)
_TOP_SKIP = re.compile(r"(?:[^,'\"()\[\]{}]+|" + SQ_PATTERN + "|" + DQ_PATTERN + ")*", re.S)
_INT_LIST_BODY = re.compile(r"[0-9, ]*")
# key=atom followed by ", " or the end of the group (matched with endpos).
_SIMPLE_KWARG = re.compile(r"([A-Za-z_]\w{0,80})=([^,'\"()\[\]{}\s]{1,80}|\[\]|\{\})(?:, |$)")
# End of a quoted literal: the "unrolled loop" form has exactly one way to
# match each character, so it runs in linear time even when it fails.
_STRING_BODY = {
    "'": re.compile(SQ_PATTERN[1:], re.S),
    '"': re.compile(DQ_PATTERN[1:], re.S),
}
# Escapes the codec would treat differently from Python source (or warn on).
_UNUSUAL_ESCAPE = re.compile(r"\\[^\\'\"abfnrtvxuU0-7]|\\$")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Real reprs nest a few levels and hold at most a few thousand brackets (a
# large tool schema); more is hostile input, refused to keep the time bounded.
_MAX_DEPTH = 200
_MAX_BRACKETS = 100_000
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = frozenset(")]}")


class ReprError(ValueError):
    """The text is not the repr fragment the caller expected."""


def string_end(s: str, i: int) -> int:
    """Index just past the string literal whose opening quote is ``s[i]``."""
    pattern = _STRING_BODY.get(s[i]) if i < len(s) else None
    if pattern is None:
        raise ReprError(f"no string literal at {i}")
    m = pattern.match(s, i + 1)
    if m is None:
        raise ReprError("unterminated string literal")
    return m.end()


def decode_str(s: str, i: int) -> tuple[str, int]:
    """Decode the string literal starting at ``s[i]``; return (text, end)."""
    end = string_end(s, i)
    return decode_literal(s, i, end), end


def decode_literal(s: str, i: int, end: int) -> str:
    """Decode ``s[i:end]``, already known to be exactly one string literal."""
    body = s[i + 1 : end - 1]
    if "\\" not in body:
        return body
    if _UNUSUAL_ESCAPE.search(body) is None:
        # C-speed path for the escapes repr() writes: non-Latin-1 text is
        # turned into \u escapes first so the codec hands it back unchanged.
        try:
            text = body.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError as exc:
            raise ReprError("bad escape") from exc
        if _SURROGATE.search(text) is not None:
            text = _SURROGATE.sub("\ufffd", text)
        return text
    return _unescape(body)


def _unescape(body: str) -> str:
    out: list[str] = []
    n = len(body)
    pos = 0
    while True:
        k = body.find("\\", pos)
        if k < 0:
            out.append(body[pos:])
            return "".join(out)
        out.append(body[pos:k])
        if k + 1 >= n:
            raise ReprError("dangling backslash")
        c = body[k + 1]
        simple = _SIMPLE_ESCAPES.get(c)
        if simple is not None:
            out.append(simple)
            pos = k + 2
        elif c in _HEX_LEN:
            width = _HEX_LEN[c]
            digits = body[k + 2 : k + 2 + width]
            if len(digits) != width or not _HEX.issuperset(digits):
                raise ReprError(f"bad \\{c} escape")
            out.append(_char(int(digits, 16)))
            pos = k + 2 + width
        elif c in _OCT:
            j = k + 1
            while j < n and j < k + 4 and body[j] in _OCT:
                j += 1
            out.append(_char(int(body[k + 1 : j], 8)))
            pos = j
        else:  # unknown escape: Python keeps the backslash
            out.append("\\" + c)
            pos = k + 2


def _char(code: int) -> str:
    if code > 0x10FFFF:
        raise ReprError("code point out of range")
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return chr(code)


def int_list_end(s: str, i: int) -> tuple[int, int]:
    """Skip the int list ``[...]`` at ``s[i]``; return (end, number of ids)."""
    if s.startswith("[]", i):
        return i + 2, 0
    if i >= len(s) or s[i] != "[":
        raise ReprError(f"no list at {i}")
    k = s.find("]", i)
    if k < 0 or _INT_LIST_BODY.fullmatch(s, i + 1, k) is None:
        raise ReprError("not a list of ints")
    # First and last characters must be digits and no two commas may touch,
    # so the comma count is the id count minus one.
    if not (s[i + 1].isdigit() and s[k - 1].isdigit()) or s.find(",,", i, k) >= 0 or s.find(", ,", i, k) >= 0:
        raise ReprError("not a list of ints")
    return k + 1, s.count(",", i, k) + 1


def decode_int_list(s: str, i: int, end: int) -> list[int]:
    """The ints of the list ``s[i:end]`` already validated by :func:`int_list_end`.

    A validated list is also a JSON array, and the C JSON decoder builds the
    ints about twice as fast as ``map(int, ...)``; it also rejects any shape
    the cheap validation let through (``[1,, 2]``).
    """
    try:
        ids = json.loads(s[i:end])
    except ValueError as exc:
        raise ReprError("not a list of ints") from exc
    if not isinstance(ids, list):
        raise ReprError("not a list of ints")
    return ids


def group_end(s: str, i: int) -> int:
    """Index just past the bracketed group opened at ``s[i]`` (strings skipped)."""
    stack = [_OPEN[s[i]]]
    pos = i + 1
    n = len(s)
    skip = _GROUP_SKIP.match
    budget = _MAX_BRACKETS
    while stack:
        budget -= 1
        if len(stack) > _MAX_DEPTH or budget < 0:
            raise ReprError("nesting too deep or too many brackets")
        k = skip(s, pos).end()
        if k >= n:
            raise ReprError("unbalanced brackets")
        c = s[k]
        if c in _CLOSE:
            if c != stack.pop():
                raise ReprError("mismatched brackets")
        elif c in _OPEN:
            stack.append(_OPEN[c])
        else:
            raise ReprError("unterminated string literal")
        pos = k + 1
    return pos


def value_end(s: str, i: int, stop: int | None = None) -> int:
    """End of the repr value starting at ``s[i]``.

    The value runs to the first top-level ``", "`` (or ``stop``, default the end
    of ``s``). Strings and bracketed groups are skipped whole; a top-level
    closing bracket is malformed.
    """
    n = len(s) if stop is None else stop
    pos = i
    skip = _TOP_SKIP.match
    while True:
        k = skip(s, pos, n).end()
        if k >= n:
            return n
        c = s[k]
        if c == ",":
            if s.startswith(" ", k + 1):
                return k
            pos = k + 1  # "1,2" style atom: not a field separator
        elif c in _OPEN:
            pos = group_end(s, k)
            if pos > n:
                raise ReprError("value runs past its field")
        elif c in _CLOSE:
            raise ReprError("unbalanced brackets")
        else:
            raise ReprError("unterminated string literal")


def split_kwargs(s: str, i: int, j: int) -> dict[str, tuple[int, int]]:
    """``key=value, key=value`` between ``i`` and ``j`` → {key: (start, end)}.

    Used for ``SamplingParams(...)`` and friends: fields are read by name, not
    position, because vLLM reorders them between releases and forks add more.
    Plain ``key=atom`` pairs take one regex match; values with quotes or
    brackets go through :func:`value_end`.
    """
    out: dict[str, tuple[int, int]] = {}
    pos = i
    simple = _SIMPLE_KWARG.match
    while pos < j:
        m = simple(s, pos, j)
        if m is not None:
            out[m.group(1)] = m.span(2)
            pos = m.end()
            continue
        eq = s.find("=", pos, j)
        if eq < 0:
            raise ReprError("expected key=value")
        key = s[pos:eq]
        if not key.isidentifier():
            raise ReprError(f"bad key {key[:40]!r}")
        end = value_end(s, eq + 1, j)
        out[key] = (eq + 1, end)
        pos = end + 2 if end < j else j
    return out


def to_int(text: str) -> int | None:
    """``"512"`` → 512; ``None``/non-integers → None."""
    t = text.strip()
    if t.lstrip("-").isdigit() and len(t) < 20:
        return int(t)
    return None


def to_float(text: str) -> float | None:
    """``"0.7"`` → 0.7; ``None``/garbage → None."""
    t = text.strip()
    if not t or t == "None" or len(t) > 40:
        return None
    try:
        return float(t)
    except ValueError:
        return None
