"""Hypothesis strategies for records as the archive encoders see them (shared
by the C-against-Python differential tests of the canonical encoding and of
the chain's seal).

Keys as records and their nested objects may hold them: identifiers, any
text (escapes, quotes, astral and BMP characters whose UTF-16 order is not
their code point order), and near-duplicates that sort by length."""

from __future__ import annotations

from hypothesis import strategies as st


def _keys(special_key: str):
    return st.one_of(st.sampled_from(["a", "ab", "b", "", "A", "é", "\uffff", "\U0001f600", "a\x00", special_key]),
                     st.text(max_size=6))


def values(special_key: str = "seq"):
    """JSON values as a record's fields hold them (nested lists and objects
    whose keys include ``special_key`` now and then)."""
    keys = _keys(special_key)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


def records(special_key: str):
    """Records whose keys include ``special_key`` now and then (e.g. a
    chain key the seal must strip)."""
    return st.dictionaries(_keys(special_key), values(special_key), max_size=12)
