"""The chain's C seal (exporter.record.sealed_line, _leaf.seal): its hash
and sealed line are exactly the Python steps' (Chain.digest of
canonical_bytes, line_bytes of the sealed record), with and without a key,
on hypothesis-made records; and it declines what it cannot do."""

from __future__ import annotations

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

RECORDS = records("seq")
CHAIN_KEYS = st.one_of(st.none(), st.sampled_from([b"", b"k3y", b"x" * 100]), st.binary(max_size=80))


def _python(chain: Chain, sealed: dict) -> tuple[str, bytes]:
    digest = chain.digest(canonical_bytes(sealed))
    return digest, line_bytes(dict(sealed, hash=digest))


@needs_c
@settings(max_examples=300, deadline=None)
@given(rec=RECORDS, key=CHAIN_KEYS, seq=st.integers(1, 10**12))
def test_c_seal_is_the_python_steps(rec, key, seq):
    chain = Chain(key)
    sealed = {k: v for k, v in rec.items() if k not in ("seq", "prev_hash", "hash")}
    sealed["seq"], sealed["prev_hash"] = seq, "sha256:" + "0" * 64
    got = record.sealed_line(sealed, chain._label, key)
    if got is None:  # declined only where canonical() declines
        assert record.canonical_and_line(sealed) is None
    else:
        assert got == _python(chain, sealed)


@needs_c
def test_c_seal_declines_what_it_cannot_do():
    seal = _leaf.seal
    assert seal(b'{"a\\n":1,"seq":1}', b"sha256:", None) is None  # an escape in a key: canonical declines
    assert seal(b"", b"sha256:", None) is None and seal(b"[1]", b"sha256:", None) is None
    assert seal(b'{"seq":1}', b"hmac-sha256:", bytearray(b"k")) is None  # a key that is not bytes
    h, line = seal(b'{"b":1,"a":2}', b"sha256:", None)
    assert h == Chain(None).digest(b'{"a":2,"b":1}') and line == b'{"b":1,"a":2,"hash":"' + h.encode() + b'"}\n'


def test_without_c_the_seal_is_python(monkeypatch):
    monkeypatch.setattr(record, "_c_canon", None)
    rec = dict(record.new_record(), seq=1, prev_hash="genesis")
    assert record.sealed_line(rec, b"sha256:", None) is None
    sealed, line = Chain(b"k").seal_line(record.new_record(), 1, "genesis")
    assert (sealed["hash"], line) == _python(Chain(b"k"), {k: v for k, v in sealed.items() if k != "hash"})
