"""Table tests for the repr decoder: every escape, both quote styles, lists, values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.parse.pyrepr import (
    ReprError,
    decode_int_list,
    decode_str,
    int_list_end,
    split_kwargs,
    string_end,
    to_float,
    to_int,
    value_end,
)

ROUND_TRIP = [
    "",
    "plain",
    "line\nbreak",
    "tab\there",
    "cr\rlf",
    "back\\slash",
    "it's",
    'say "hi"',
    "both ' and \"",
    "bell\x07 nul\x00 del\x7f esc\x1b",
    "latin ü é ñ",
    "snow \u2603 and \u200b zero width",
    "emoji \U0001f600",
    "\ufffd replacement",
    "\x85 next line, \u2028 line separator",
    "\\n is not a newline",
    "trailing backslash\\",
    "', finish_reason: stop",
    '", params: SamplingParams(max_tokens=1)',
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_inverts_repr(text):
    literal = repr(text)
    line = f"prompt: {literal}, params: x"
    decoded, end = decode_str(line, 8)
    assert decoded == text
    assert line[end:] == ", params: x"


@given(st.text())
def test_decode_inverts_repr_for_any_text(text):
    literal = repr(text)
    decoded, end = decode_str(literal + "tail", 0)
    assert end == len(literal)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert "\ufffd" in decoded  # lone surrogates are replaced, see module docstring
    else:
        assert decoded == text


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (r"'\x41\u00e9\U0001F600'", "Aé😀"),
        (r"'\a\b\f\v'", "\a\b\f\v"),
        (r"'\0\101'", "\x00A"),
        (r"'\q'", "\\q"),  # unknown escape keeps its backslash, as in Python
        (r"'\ud800'", "\ufffd"),
        (r'"\""', '"'),
    ],
)
def test_escape_table(literal, expected):
    assert decode_str(literal, 0) == (expected, len(literal))


@pytest.mark.parametrize("bad", ["'open", "'\\'", "'\\x4'", "'\\u12'", "'\\U00110000'", "x'", "'ends with \\"])
def test_malformed_strings_raise(bad):
    with pytest.raises(ReprError):
        decode_str(bad, 0)


def test_string_end_counts_backslash_runs():
    s = r"'a\\' rest"
    assert string_end(s, 0) == 5
    s = r"'a\\\' b' rest"
    assert string_end(s, 0) == 9


@pytest.mark.parametrize(
    ("text", "count", "ids"),
    [("[]", 0, []), ("[7]", 1, [7]), ("[1, 2, 3]", 3, [1, 2, 3]), ("[151644, 8948, 198]", 3, [151644, 8948, 198])],
)
def test_int_lists(text, count, ids):
    line = f"ids: {text}, next"
    end, n = int_list_end(line, 5)
    assert (line[end:], n) == (", next", count)
    assert decode_int_list(line, 5, end) == ids


@pytest.mark.parametrize("bad", ["[1, 'a']", "[1, [2]]", "[,]", "[1,, 2]", "[1, , 2]", "[ 1]", "[1", "(1, 2)", "[-1]"])
def test_int_list_rejects_non_ids(bad):
    with pytest.raises(ReprError):
        int_list_end(bad, 0)


def test_big_int_list_is_counted_without_decoding():
    ids = list(range(130_000))
    line = repr(ids)
    assert int_list_end(line, 0) == (len(line), 130_000)


@pytest.mark.parametrize(
    ("value", "rest"),
    [
        ("None", ", b: 1"),
        ("0.7", ", b: 1"),
        ("'a, b: c'", ", b: 1"),
        ("SamplingParams(n=1, stop=['\\n', ')'], extra={'k': (1, 2)})", ", b: 1"),
        ("torch.Size([5, 4096])", ", b: 1"),
        ("[1, 2]", ", b: 1"),
        ("1,2", ", b: 1"),
        ("'last'", ""),
    ],
)
def test_value_end_stops_at_top_level_separator(value, rest):
    line = "a: " + value + rest
    assert line[value_end(line, 3) :] == rest


@pytest.mark.parametrize("bad", ["(1, 2", "x)", "['a)", "[1, 2)"])
def test_value_end_rejects_unbalanced(bad):
    with pytest.raises(ReprError):
        value_end(bad, 0)


def test_split_kwargs_reads_by_name():
    s = "P(n=2, stop=['a, b=c'], max_tokens=None, json={'x': 'y'})"
    kw = split_kwargs(s, 2, len(s) - 1)
    assert {k: s[a:b] for k, (a, b) in kw.items()} == {
        "n": "2",
        "stop": "['a, b=c']",
        "max_tokens": "None",
        "json": "{'x': 'y'}",
    }


@pytest.mark.parametrize("bad", ["P(=1)", "P(1 + 1)", "P(a b=1)"])
def test_split_kwargs_rejects_garbage(bad):
    with pytest.raises(ReprError):
        split_kwargs(bad, 2, len(bad) - 1)


@pytest.mark.parametrize(
    ("text", "as_int", "as_float"),
    [("512", 512, 512.0), ("-1", -1, -1.0), ("0.7", None, 0.7), ("None", None, None), ("1e-05", None, 1e-05), ("x", None, None)],
)
def test_number_atoms(text, as_int, as_float):
    assert to_int(text) == as_int
    assert to_float(text) == as_float


def test_hostile_nesting_is_refused():
    with pytest.raises(ReprError):
        value_end("S(" + "[" * 300 + "]" * 300 + ")", 0)
    with pytest.raises(ReprError):
        value_end("S(" + "[]" * 100_001 + ")", 0)
    assert value_end("S(" + "[]" * 1000 + "), x", 0) == 2003
