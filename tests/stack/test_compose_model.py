"""The runner's reading of Compose (tests/stack/compose.py) follows Compose's rules."""

from __future__ import annotations

import pytest

from tests.stack.compose import InterpolationError, interpolate, parse_dotenv


def interp(text, **env):
    errors = []
    out = interpolate(text, env, errors)
    if errors:
        raise InterpolationError(errors)
    return out


@pytest.mark.parametrize("text, env, expected", [
    ("${A:-d}", {}, "d"), ("${A:-d}", {"A": ""}, "d"), ("${A:-d}", {"A": "x"}, "x"),
    ("${A-d}", {}, "d"), ("${A-d}", {"A": ""}, ""),  # unset only
    ("${A:+alt}", {"A": "x"}, "alt"), ("${A:+alt}", {"A": ""}, ""), ("${A+alt}", {"A": ""}, "alt"),
    ("$A/$$B", {"A": "1"}, "1/$B"), ("${A:-${B:-z}}", {}, "z"), ("${A}", {}, ""),
    ("x ${A:?need A} y", {"A": "v"}, "x v y"),
])
def test_interpolation(text, env, expected):
    assert interp(text, **env) == expected


def test_required_variable_names_itself_whether_unset_or_empty():
    for env in ({}, {"A": ""}):
        with pytest.raises(InterpolationError, match="required variable A is missing a value: set A"):
            interp("${A:?set A}", **env)
    assert interp("${A?set A}", A="") == ""  # `?` without colon: only unset fails


def test_dotenv():
    env = parse_dotenv("# c\nA=1\nexport B = two \nC='q # not a comment'\nD=x # comment\nE=\n")
    assert env == {"A": "1", "B": "two", "C": "q # not a comment", "D": "x", "E": ""}
