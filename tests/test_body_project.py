"""The C accelerator's reading of a client's JSON body (exporter/parse/_scan_body.h):
``_scan.body_project(text, start)`` is either None (declined: json.loads
decides) or exactly the members check_body reads of ``json.loads(text[start:])``
-- same values, same types -- and the body event made from it is the one made
from json.loads. It must never accept what json.loads refuses (a cut body, a
NaN, an over-long int, a control character) and never miss a kept member."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from exporter.parse.body_line import body_event
from test_scan_differential import _scan_mod

KEPT = ("model", "user", "stream", "temperature", "max_completion_tokens", "max_tokens",
        "max_output_tokens", "n", "response_format", "text")
FUZZ = settings(max_examples=examples(800), deadline=None, suppress_health_check=[HealthCheck.too_slow])

def project(text: str):
    assert _scan_mod is not None, "exporter.parse._scan is not built (a C compiler exists: pip install -e . builds it)"
    return _scan_mod.body_project(text, 0)


def expected(text: str):
    """What the projection must be when it answers: json.loads' kept members, or no answer at all."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if k in KEPT}


def same(a, b) -> bool:
    """Equal values of equal types, NaN-safe (repr), key order aside (check_body reads by name)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and repr(a) == repr(b)


def check(text: str) -> bool:
    """The property; True when the projection answered."""
    got = project(text)
    if got is None:
        return False
    want = expected(text)
    assert want is not None, f"accepted what json.loads refuses: {text!r}"
    assert same(got, want), (text, got, want)
    assert same(body_event(text, 0, "r", None, got).data, body_event(text, 0, "r", None).data)
    return True


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e-7, 1e300, 0.7]),
    st.text(max_size=6), st.sampled_from(["tiny", "user02201", "\u4f60\u597d", "a\nb", "\"q\"", "\\", "\ud800"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=12)
BODY = st.dictionaries(st.sampled_from(KEPT + ("messages", "prompt", "tools", "x")), JSON, max_size=8)


@FUZZ
@given(BODY, st.booleans(), st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
def test_projection_is_json_loads_kept_members(body, ascii_, seps):
    text = json.dumps(body, ensure_ascii=ascii_, separators=seps)
    answered = check(text)
    # A plain body (valid JSON, keys without escapes) is always answered:
    # the fast path is really taken, not declined into a vacuous pass.
    if all(k.isascii() and k.isprintable() and "\\" not in k and '"' not in k for k in body):
        assert answered, text


@FUZZ
@given(BODY, st.data())
def test_cut_or_damaged_bodies_are_never_accepted_wrongly(body, data):
    text = json.dumps(body, ensure_ascii=data.draw(st.booleans()), separators=(",", ":"))
    if data.draw(st.booleans()):
        text = text[:data.draw(st.integers(0, len(text)))]  # --max-log-len cut it
    else:
        at = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "\x01", ",", "}", "]", "\\", "\\x",
                                          "\"", " ", "1" * 5000, "01", "1.", "1e", "-", "tru", "\\u12",
                                          "\ud83d", "[" * 300, "\n"]))
        text = text[:at] + junk + text[at:]
    check(text)


@pytest.mark.parametrize("text", [
    '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"temperature":0.0,"user":"u1"}',
    '{"model":"tiny","n":2,"stream":true,"response_format":{"type":"json_object"},"max_completion_tokens":1e400}',
    '{"model":"tiny","text":{"format":{"type":"text"}},"max_output_tokens":-0,"temperature":1E-3}',
    '{"user":"\\u4f60\\ud800","model":"a\\"b"}  \n',
    '{}', '{"messages":[[[[]]]],"x":null,"y":false}',
])
def test_real_shapes_are_answered(text):
    assert check(text)


@pytest.mark.parametrize("text", [
    '{"model":"tiny","max_tokens":NaN}', '{"model":"tiny","t":Infinity}', '{"model":"tiny",}',
    '{"model":"tiny"', '{"model":"ti\x01ny"}', '{"model":"tiny"} x', '{"mod\\u0065l":"tiny"}',
    '{"model":"a","model":"b"}', '{"n":' + "1" * 5000 + "}", '{"n":01}', '{"n":1.}', '{"n":-}',
    '{"a":' + "[" * 200 + "]" * 200 + "}", '{"a":"\\x"}', '{"a":"\\u12"}', "[1]", "",
])
def test_doubtful_bodies_decline(text):
    assert project(text) is None  # json.loads decides: body_event's own path, unchanged
