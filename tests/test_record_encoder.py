"""The C accelerator's record encoder (exporter/parse/_scan_json.h) writes the
json module's bytes: dumps_line and canonical_bytes give the same result with
it and without it (pure Python), on every record of every real capture and
on hypothesis-made values; whatever it declines (NaN, subclasses, lone
surrogates, deep nesting, cycles, non-str keys) goes to json, which raises
what it always raised."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
from hyp import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbuild
from exporter import record
from exporter.parse import fast

LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
CANON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
FUZZ = settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])

MODULE = fast.load()
needs_c = cbuild.needs_c(MODULE is not None)  # built where a compiler exists: tests/test_cbuild.py


def c_json():
    return MODULE.json_line


def both(fn, value):
    """fn(value) with the C encoder and with pure Python: (result or exception type, ...)."""
    out = []
    for enc in ((MODULE.json_line,) if MODULE is not None else ()) + (None,):
        record.set_c_encoder(enc)
        try:
            out.append(fn(value))
        except Exception as exc:  # noqa: BLE001 - the same failure is what is compared
            out.append(type(exc))
        finally:
            record.set_c_encoder(None if MODULE is None or fast.scan is None else MODULE.json_line)
    return out if len(out) == 2 else out * 2


text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=30)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
                      | st.dictionaries(text, inner, max_size=5), max_leaves=30)


@needs_c
@FUZZ
@given(values)
def test_c_encoder_is_json_or_declines(value):
    enc = c_json()
    for sort, reference in ((False, LINE), (True, CANON)):
        try:
            expected = reference(value)
        except (ValueError, TypeError):
            expected = None
        got_text, got_bytes = enc(value, sort, True), enc(value, sort, False)
        if got_text is not None:
            assert got_text == expected
            assert got_bytes == expected.encode()
        else:
            assert got_bytes is None


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(text, values, max_size=8))
def test_record_functions_same_with_and_without_c(rec):
    a, b = both(record.dumps_line, rec)
    assert a == b
    a, b = both(record.canonical_bytes, rec)
    assert a == b


def _deep(n: int) -> list:
    v: list = []
    for _ in range(n):
        v = [v]
    return v


DEEP = _deep(70)  # deeper than the C encoder goes: json's


class Str(str):
    pass


class Int(int):
    def __repr__(self):
        return "int-subclass"


@needs_c
@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, [1.0, math.nan], Str("x"), Int(3), {"a": Int(3)}, OrderedDict(a=1),
    {1: "int key"}, {None: 1}, {"a": 1, 2: 3}, "lone \ud800 surrogate", {"k\udfff": 1}, {1.5: 2},
    DEEP,
    object(), {1, 2}, b"bytes",
])
def test_c_encoder_declines_what_is_not_plain(value):
    assert c_json()(value, False, True) is None and c_json()(value, True, False) is None
    for fn in (record.dumps_line, record.canonical_bytes):
        a, b = both(fn, {"v": value})
        assert a == b


@needs_c
def test_cycles_decline_and_json_raises():
    loop: list = []
    loop.append(loop)
    assert c_json()(loop, False, True) is None
    assert both(record.dumps_line, {"v": loop}) == [ValueError, ValueError]


@needs_c
@pytest.mark.parametrize("value", ["", "\x00\x1f\x7f\"\\\b\f\n\r\t/", "é中文😀", -0.0, 1e300, 5e-324, 2**70,
                                   -(2**70), 0.1, 1.0, True, False, None, [], {}, (), {"": ""}])
def test_edge_values(value):
    assert c_json()(value, False, True) == LINE(value)
    assert c_json()(value, True, False) == CANON(value).encode()


@pytest.mark.parametrize("capture", ["vllm-0.32.0/debug", "vllm-0.32.0/middleware", "vllm-0.31.0/debug"])
def test_every_archived_record_of_a_capture(capture, tmp_path):
    """Real records: each capture replayed, every archived (sealed) record
    encoded again both ways."""
    from test_records_pinned import archive_digests
    log = Path(__file__).parent / "fixtures" / capture / "vllm.log"
    if not log.exists():
        pytest.skip(f"no capture {capture}")
    archive_digests(str(log.relative_to(Path(__file__).parents[1])), tmp_path)
    recs = [json.loads(ln) for p in sorted((tmp_path / "archive").glob("audit-*.jsonl"))
            for ln in p.read_text().splitlines()]
    assert recs
    for rec in recs:
        assert both(record.dumps_line, rec) == [LINE(rec)] * 2
        body = {k: v for k, v in rec.items() if k != "hash"}
        assert both(record.canonical_bytes, rec) == [CANON(body).encode()] * 2
