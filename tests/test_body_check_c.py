"""The C accelerator's check of a client's JSON body (exporter/parse/_scan_bodycheck.h):
``_scan.body_data(text, start)`` is either None (declined: body_line.body_event
decides, in Python) or exactly the data of ``body_event(text, start, ...)``
with json.loads -- the same keys in the same order, the same values of the
same types, the same ``problems`` and ``input_flags``. Bodies are hostile:
every checked field of every wrong type, bools for ints, NaN, infinities,
huge and negative ints, surrogates in keys and values, duplicated keys,
deep nesting, Responses' ``text.format``. And the common body (what vLLM's
clients send) is answered in C, not declined into a vacuous pass."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples
from leakcheck import assert_no_leaks
from oddvalues import ABSENT, paths, with_path

from exporter import events as ev
from exporter.parse.body_line import body_event
from exporter.parse.untrusted import _BODY_CHECKS
from test_scan_differential import RL, _scan_mod, c_result, reference, same, with_c

FIELDS = tuple(name for name, _check, _label in _BODY_CHECKS) + ("n",)
OTHER_KEYS = ("response_format", "text", "messages", "prompt", "stream_options", "x", "mod\ud800el", "\u4f60")
FUZZ = settings(max_examples=examples(800), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def identical(a, b) -> bool:
    """Equal values of equal types, key order included (the record keeps it);
    floats by repr (-0.0, NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return repr(a) == repr(b)


def check(text: str, start: int = 0) -> bool:
    """The property; True when C answered."""
    assert _scan_mod is not None, "exporter.parse._scan is not built (a C compiler exists: pip install -e . builds it)"
    got = _scan_mod.body_data(text, start)
    if got is None:
        return False
    want = body_event(text, start, "r", None)
    assert isinstance(want, ev.Event), text
    assert identical(got, want.data), (text, got, want.data)
    return True


# A member's value as JSON text: whatever json.dumps writes (NaN and Infinity
# included, which json.loads reads), or a literal json.dumps never writes.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.sampled_from([2**63, 2**64, -2**63 - 1, 10**63]),
    st.floats(), st.sampled_from([0.0, -0.0, 1e-7, 1e300, 0.7, math.inf, -math.inf, math.nan]),
    st.text(max_size=6), st.sampled_from(["tiny", "user02201", "\u4f60\u597d", "\U0001f600", "a\nb", "\ud800",
                                          "x\udfff", "\U0001f600\ud83d", "json_object", ""]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["type", "format", "role", "content", "t\ud800"]) | st.text(max_size=3), inner, max_size=3),
    max_leaves=10)
LITERALS = st.sampled_from(["1e400", "-1e400", "-0", "-0.0", "0", "1E-3", "1.5e+2", "12345678901234567890123",
                            "-12345678901234567890123", "9" * 64, "0.0", "true", "false", "null", '"\\u0074iny"',
                            '"\\ud800"', '"\\udfff\\ud800"', '"\\ud83d\\ude00"', '"a\\"b"', "[]", "{}",
                            '{"type":"json_schema"}', '{"format":{"type":"json_object"}}', '{"type":"\\ud800"}',
                            '{"format":null}', '{"type":1}', "[" * 99 + "]" * 99, "[" * 101 + "]" * 101])


@st.composite
def value_text(draw) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(LITERALS)
    return json.dumps(draw(JSON), ensure_ascii=draw(st.booleans()))


@st.composite
def body_text(draw) -> str:
    """An object's text, keys possibly repeated (json.loads keeps the last)."""
    keys = st.sampled_from(FIELDS + OTHER_KEYS) | st.text(max_size=4)
    members = draw(st.lists(st.tuples(keys, value_text()), max_size=10))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    key_ascii = draw(st.booleans())
    body = sep[0].join(json.dumps(k, ensure_ascii=key_ascii) + sep[1] + v for k, v in members)
    return "{" + body + "}" + draw(st.sampled_from(["", " ", "\n", " x"]))


@FUZZ
@given(body_text())
def test_c_data_is_body_events(text):
    check(text)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), SCALARS, max_size=len(FIELDS)), st.booleans())
def test_every_type_in_every_checked_field(body, ascii_):
    check(json.dumps(body, ensure_ascii=ascii_))


PLAIN_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
PLAIN_BODY = st.fixed_dictionaries(
    {"model": PLAIN_TEXT, "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                                       "content": st.text(max_size=20)}), max_size=3)},
    optional={"user": PLAIN_TEXT, "stream": st.booleans(), "temperature": st.floats(0, 2) | st.integers(0, 2),
              "max_tokens": st.integers(0, 10**6), "max_completion_tokens": st.integers(0, 10**6),
              "max_output_tokens": st.integers(0, 10**6), "n": st.integers(1, 8),
              "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
              "text": st.fixed_dictionaries({"format": st.fixed_dictionaries({"type": st.just("json_schema")})})})


@FUZZ
@given(PLAIN_BODY, st.booleans())
def test_plain_bodies_are_answered_in_c(body, ascii_):
    """What clients send (messages may hold surrogates: they are never read)."""
    assert check(json.dumps(body, ensure_ascii=ascii_)), body


@pytest.mark.parametrize("text", [
    '{"messages":[{"content":"hi","role":"user"}],"model":"tiny","max_tokens":16,"temperature":0.0,"user":"u1"}',
    '{"model":"tiny","n":2,"stream":true,"response_format":{"type":"json_object"},"max_completion_tokens":1e400}',
    '{"model":"tiny","text":{"format":{"type":"text"}},"max_output_tokens":-0,"temperature":1E-3}',
    '{"model":"\u4f60\U0001f600","stream":1,"n":0,"temperature":-0.0,"max_tokens":true,"user":5}',
    '{"response_format":null,"text":{"format":{"type":"json_schema"}}}', '{"response_format":"json"}',
    '{"response_format":{"type":["a"]}}', '{"text":"x"}', '{"text":{"format":7}}', '{"temperature":1e400}',
    '{"temperature":' + "9" * 64 + '}', '{"max_tokens":-' + "9" * 40 + '}', "{}",
])
def test_real_and_edge_shapes_are_answered(text):
    assert check(text)


@pytest.mark.parametrize("text", [
    '{"model":"\\ud800"}', '{"user":"a\\udfffb"}', '{"model":"' + "\U0001f600\ud800" + '"}',  # clean_text's
    '{"model":"tiny","max_tokens":NaN}', '{"model":"tiny"', '{"model":"a","model":"b"}',  # body_project's
])
def test_doubtful_bodies_decline(text):
    assert _scan_mod.body_data(text, 0) is None
    body_event(text, 0, "r", None)  # the Python path decides (and does not raise)


def test_lines_are_the_python_parsers():
    """Through scan(): the Event (kind, id, time, data) is the Python parser's."""
    texts = ['{"messages":[],"model":"tiny","max_tokens":16,"temperature":0.0,"user":"u1"}',
             '{"model":"tiny","stream":"yes","n":0}', '{"model":"\\ud800"}', '{"model":"tiny"']
    for text in texts:
        assert same(RL + "Request chatcmpl-1 JSON body: " + text), text  # (a decline calls body_event)
    got = c_result(RL + "Request chatcmpl-1 JSON body: " + texts[0])
    assert got.kind == ev.BODY and got.request_id == "chatcmpl-1"


@FUZZ
@given(body_text())
def test_hostile_body_lines_through_scan(text):
    same(RL + "Request chatcmpl-1 JSON body: " + text)


def test_no_reference_or_memory_leaks():
    """Answers, dropped fields and declines alike: nothing may grow per body."""
    texts = ['{"messages":[],"model":"tiny","max_tokens":16,"temperature":0.0,"user":"u1","stream":false}',
             '{"model":5,"stream":"x","n":0,"temperature":-1,"max_tokens":1.5,"response_format":{"type":"json_object"}}',
             '{"text":{"format":{"type":3}},"temperature":1e400,"max_completion_tokens":' + "9" * 30 + "}",
             '{"model":"\\ud800"}', '{"model":"tiny"', '{"model":"a","model":"b"}', "{}"]
    lines = [RL + "Request chatcmpl-1 JSON body: " + text for text in texts]
    watched = (None, True, False, ev.BODY, "body", "raw_len", "truncated_body", "problems", "input_flags",
               "invalid_field", "body_invalid_field", "response_format", "type", "model", "n")

    def run():
        for text in texts:
            _scan_mod.body_data(text, 0)
        for line in lines:
            c_result(line)

    assert_no_leaks(run, watched, repeats=20)


# -- every field body_data reads, swept with each odd value -----------------
# Deterministic: the same bodies every run (the style of
# test_assemble_c.py::test_every_field_read_holds_every_odd_value, which
# caught a crash hypothesis found one run in three). Two bodies of the shape
# clients send: Open WebUI's /v1/chat/completions and a Responses API one
# (text.format). Every path of each (the top-level members, one level and
# two into response_format, text.format, messages) is set to each odd value
# or removed, written with ensure_ascii both ways, and body_data and the
# whole line through scan() must agree with body_event.
_CHAT = {"model": "llama-3.1-8b-instruct",
         "messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "Summarise this.\u4f60"}],
         "stream": True, "max_tokens": 512, "max_completion_tokens": 512, "temperature": 0.7, "top_p": 0.9,
         "n": 1, "user": "user-123", "response_format": {"type": "json_object"}, "stop": ["\n\n"], "seed": 42,
         "stream_options": {"include_usage": True}}
_RESPONSES = {"model": "tiny", "input": "hi", "max_output_tokens": 64, "user": "u",
              "text": {"format": {"type": "json_schema", "name": "x"}}, "stream": False, "temperature": 0,
              "response_format": None}  # None: text.format is read


def _nested(depth: int) -> list:
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


# _scan_body.h's BODY_MAX_DEPTH is 100: a value nested 99 deep is kept, 101 declines
_ODD = [ABSENT, None, "", "\ud800", "a\udfffb", "\u4f60", "\U0001f600", "x" * 10000, 0, 1, -1, 2**63, 2**64,
        -2**63 - 1, 2**100, -2**100, 10**400, math.inf, -math.inf, math.nan, -0.0, 0.0, 1.5, 1e-300, True, False,
        [], [None], ["a", 1], {}, {"type": 3}, {"type": None}, {"type": "\ud800"}, {"type": "text"},
        {"format": {"type": "text"}}, {"format": None}, _nested(98), _nested(101), _nested(400)]


def _read_keys() -> list[str]:
    """The top-level names _scan_body.h projects (BODY_KEYS): all swept."""
    src = (Path(__file__).resolve().parents[1] / "exporter/parse/_scan_body.h").read_text()
    table = re.search(r"BODY_KEYS\[\]\s*=\s*\{(.*?)\};", src, re.S).group(1)
    return re.findall(r'"([^"]+)"', table)


def _line_agrees(text: str) -> None:
    """same() on the body's log line; when scan() raises it is body_event's
    own error through the callback (a decline goes to Python, which raises
    the same: temperature 10**400, math.isfinite's OverflowError in
    untrusted._Checker.number), and parse_line makes both paths the same
    Ignored."""
    line = RL + "Request chatcmpl-1 JSON body: " + text
    try:
        same(line)
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - which error is the reference's question
        with pytest.raises(type(e)):
            body_event(text, 0, "r", None)
        assert repr(with_c(line)) == repr(reference(line)), text


def test_the_sweep_covers_every_member_read():
    assert set(_CHAT) | set(_RESPONSES) >= set(_read_keys()), "a member body_data reads is not swept"


@pytest.mark.parametrize("base", [_CHAT, _RESPONSES], ids=["chat", "responses"])
def test_every_field_read_holds_every_odd_value(base):
    swept = [p for p in paths(base) if 0 < len(p) <= 3]
    for ascii_ in (True, False):
        assert check(json.dumps(base, ensure_ascii=ascii_)), "the base body itself takes the C path"
    answered = 0
    for path in swept:
        for odd in _ODD:
            body = with_path(base, path, odd)
            for ascii_ in (True, False):
                text = json.dumps(body, ensure_ascii=ascii_)
                answered += check(text)
                _line_agrees(text)
    assert answered > len(swept) * len(_ODD)  # most answered in C: not a vacuous pass
