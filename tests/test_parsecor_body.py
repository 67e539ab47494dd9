"""check_body keeps the values its checks would keep without calling them
(ASCII text, a finite non-negative number, a bool): the result, the bad
fields and the escape mark are exactly those of calling every check."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples

from exporter.parse import untrusted
from exporter.parse.untrusted import _BODY_CHECKS, _Checker, check_body

FIELDS = [name for name, _check, _label in _BODY_CHECKS]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(), st.text(max_size=8),
    st.sampled_from(["tiny", "user02201", "\u4f60\u597d", "\ud800", "a\udfffb", ""]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.5, -1.5, math.inf, -math.inf, math.nan]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def reference(body: dict):
    """check_body's field loop as it was: every present field through its check."""
    c = _Checker()
    out = {}
    for name, check, label in _BODY_CHECKS:
        if name in body:
            out[name] = check(c, label, body[name])
    return out, c.bad, c.escaped


@settings(max_examples=examples(600), deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=len(FIELDS)))
def test_check_body_fields_match_calling_every_check(body):
    out, bad, escaped = check_body(body)
    want, want_bad, want_escaped = reference(body)
    assert repr(out) == repr(want) and bad == want_bad and escaped == want_escaped
    assert [type(v) for v in out.values()] == [type(v) for v in want.values()]


def test_shortcut_is_taken_for_plain_values():
    assert untrusted._TEXT is _Checker.text and untrusted._NUMBER is _Checker.number
    body = {"model": "tiny", "user": "u1", "stream": True, "temperature": 0.0, "max_tokens": 16}
    assert check_body(body) == (body, [], False)
