"""Sealing from one encoding (exporter.chain.Chain.seal_line): the chain's
canonical bytes cut from the archive line by _leaf.canonical are exactly
exporter.record.canonical_bytes, and the sealed line exactly line_bytes of
the sealed record, on hypothesis-made records and on every real capture's
records; the pure-Python path (no accelerator) gives the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.record_strategies import records
except ImportError:
    from record_strategies import records

import cbuild
from exporter import record
from exporter.chain import Chain
from exporter.parse import fast
from exporter.record import canonical_bytes, line_bytes
from exporter.transparency import leaf_line

_leaf = leaf_line._C
needs_c = cbuild.needs_c(_leaf is not None and fast.IMPLEMENTATION == "c")  # built where a compiler exists: tests/test_cbuild.py
ROOT = Path(__file__).resolve().parents[1]

RECORDS = records("k")


def _expected(rec: dict) -> tuple[bytes, bytes]:
    return canonical_bytes(rec), line_bytes(rec)[:-1]


@needs_c
@settings(max_examples=400, deadline=None)
@given(rec=RECORDS)
def test_canonical_from_the_line_is_canonical_bytes(rec):
    rec.pop("hash", None)
    got = record.canonical_and_line(rec)
    if got is None:
        # declined only where a key's bytes are not its characters
        assert any("\\" in line_bytes({k: None}).decode() for k in _all_keys(rec))
    else:
        assert got == _expected(rec)


def _all_keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _all_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _all_keys(v)


@needs_c
def test_keys_the_same_count_but_other_keys_are_sorted_afresh():
    """The top-level order is remembered from the last call: a record with
    other keys (same count) and then the first shape again are still right."""
    shapes = [{"b": 1, "a": 2, "c": 3}, {"b": 1, "x": 2, "c": 3}, {"c": 1, "b": 2, "a": 3},
              {"b": 1, "a": 2, "c": 3}, {"bb": 1, "a": 2, "c": 3}, {"b": 1, "ab": 2, "c": 3}]
    for rec in shapes * 2:
        assert record.canonical_and_line(rec) == _expected(rec)


@needs_c
def test_canonical_declines_what_it_cannot_sort_by_bytes():
    c = _leaf.canonical
    assert c(b'{"b":1,"a\\n":2}') is None  # an escape in a key
    assert c(b'{"a":1,"a":2}') is None  # a repeated key
    assert c(b'{"a":1} ') is None and c(b'{"a":1') is None and c(b"[1]") is None and c(b"") is None
    assert c(b'{"a":' + b"[" * 70 + b"]" * 70 + b"}") is None  # deeper than the C nesting bound
    assert c(b'{"a":"x\\"}","b":[{"d":1,"c":2}]}') == b'{"a":"x\\"}","b":[{"c":2,"d":1}]}'
    assert c(b'{"b":{},"a":[]}') == b'{"a":[],"b":{}}'


def _seal_both(chain: Chain, rec: dict, seq: int, prev: str):
    sealed, line = chain.seal_line(rec, seq, prev)
    ref = chain.seal(rec, seq, prev)
    assert sealed == ref and list(sealed) == list(ref)
    assert line == line_bytes(ref)
    return line


@pytest.mark.parametrize("key", [None, b"k3y"])
def test_seal_line_is_seal_then_line_bytes_on_real_records(key, monkeypatch):
    """Every record line under tests/fixtures (middleware and archive
    captures), with the accelerators and with pure Python. (Whole replays
    of every capture are pinned by tests/test_records_pinned.py.)"""
    chain = Chain(key)
    recs = []
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.jsonl")):
        for raw in path.read_bytes().splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and "request_id" in rec:
                recs.append({k: v for k, v in rec.items() if k not in ("seq", "prev_hash", "hash")})
    recs.append(record.new_record())
    recs.append(dict(record.new_record(), hash="stale", seq=7))  # chain keys in the input: dropped
    prev = "genesis"
    for i, rec in enumerate(recs):
        _seal_both(chain, rec, i + 1, prev)
    monkeypatch.setattr(record, "_c_canon", None)  # the pure-Python path
    for i, rec in enumerate(recs[:50]):
        _seal_both(chain, rec, i + 1, prev)


@settings(max_examples=200, deadline=None)
@given(rec=RECORDS, seq=st.integers(1, 10**12))
def test_seal_line_on_made_records(rec, seq):
    _seal_both(Chain(None), rec, seq, "sha256:" + "0" * 64)
