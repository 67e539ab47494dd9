"""The tree's C flush batch (leaf_line.writer_entries, _leaf.extend): for
hypothesis-made sealed records and fixed salts, its entries, leaves,
frontier nodes and roots are exactly the per-record reference's
(TreeFile.extend's loop, with the C leaf of each line and in pure Python,
where each leaf is the definition's), from any starting frontier; a batch
holding one line it cannot read is decided wholly by the reference; and it
declines arguments TreeFile never passes instead of raising."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.hyp import examples
    from tests.record_strategies import records, values
except ImportError:
    from hyp import examples
    from record_strategies import records, values

import cbuild
from exporter.chain import Chain
from exporter.record import RECORD_FIELDS
from exporter.transparency import leaf_line, merkle
from exporter.transparency.leaf import CONTENT_FIELDS
from exporter.transparency.tree import ENTRY, TreeFile

_leaf = leaf_line._C
needs_c = cbuild.needs_c(_leaf is not None)  # built where a compiler exists: tests/test_cbuild.py

ERASED = st.builds(lambda b: {"erased": "sha256:" + hashlib.sha256(b).hexdigest()}, st.binary(max_size=8))


VALUE = values()
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8))
CONTENT = st.one_of(st.none(), ERASED, VALUE)

# A record in the writer's shape (every contract field, in order); content
# fields now and then null or erased.
writer_record = st.fixed_dictionaries({k: CONTENT if k in CONTENT_FIELDS else
                                       VALUE if k in ("params", "flags", "engine") else SCALAR
                                       for k in RECORD_FIELDS})
RECORD = st.one_of(writer_record, writer_record, writer_record, records("seq"))


class Salts:
    """A fixed randomness source: byte i of the stream is i's low byte mixed
    with ``seed`` (so every salt differs)."""

    def __init__(self, seed: int) -> None:
        self.at, self.seed = 0, seed

    def __call__(self, n: int) -> bytes:
        out = bytes((self.seed * 131 + i * 7 + (i >> 8)) & 255 for i in range(self.at, self.at + n))
        self.at += n
        return out


def _tree(tmp_path, name: str, seed: int, start: list[bytes]) -> TreeFile:
    t = TreeFile(tmp_path / name, random=Salts(seed))
    t._frontier = merkle.Frontier()
    t._frontier.extend(start)
    return t


def _state(t: TreeFile) -> tuple:
    f = t._frontier
    return b"".join(t._pending), t.pending, f.size, list(f.nodes), f.root()


def _sealed(recs: list[dict], start: int) -> tuple[list[dict], list[bytes]]:
    chain, head, out, lines = Chain(None), "genesis", [], []
    for i, rec in enumerate(recs):
        sealed, line = chain.seal_line(rec, start + i + 1, head)
        head = sealed["hash"]
        out.append(sealed)
        lines.append(line)
    return out, lines


@needs_c
@settings(max_examples=examples(150), deadline=None)
@given(batches=st.lists(st.lists(RECORD, min_size=1, max_size=8), min_size=1, max_size=4),
       start=st.integers(0, 70), seed=st.integers(0, 255))
def test_c_batch_is_the_per_record_path(tmp_path_factory, batches, start, seed):
    tmp = tmp_path_factory.mktemp("t")
    start_leaves = [hashlib.sha256(b"leaf %d" % i).digest() for i in range(start)]
    fast = _tree(tmp, "fast", seed, start_leaves)
    loop = _tree(tmp, "loop", seed, start_leaves)
    pure = _tree(tmp, "pure", seed, start_leaves)
    leaves = list(start_leaves)
    n = start
    for batch in batches:
        recs, lines = _sealed(batch, n)
        n += len(recs)
        if all(list(r) == list(RECORD_FIELDS) for r in batch):  # the writer's shape: C decides it
            assert leaf_line.writer_entries(list(lines), bytes(16 * len(lines)), 0, []) is not None
        fast.extend(recs, list(lines))
        with pytest.MonkeyPatch.context() as m:
            m.setattr(leaf_line, "writer_entries", None)
            loop.extend(recs, list(lines))
        leaf_line.set_enabled(False)
        try:
            pure.extend(recs, list(lines))
        finally:
            leaf_line.set_enabled(True)
        got = _state(fast)
        assert got == _state(loop) == _state(pure)
        entries = got[0]
        leaves += [entries[i + 16:i + ENTRY] for i in range(len(entries) - len(recs) * ENTRY, len(entries), ENTRY)]
        assert got[2] == len(leaves) and got[4] == merkle.root(leaves)


@needs_c
def test_a_line_it_cannot_read_leaves_the_batch_to_the_reference():
    chain = Chain(None)
    good = chain.seal_line(dict.fromkeys(RECORD_FIELDS), 1, "genesis")[1]
    odd = chain.seal_line({"x": 1}, 2, "genesis")[1]
    salts = bytes(range(32))
    assert leaf_line.writer_entries([good, odd], salts, 0, []) is None
    entries, nodes = leaf_line.writer_entries([good, good], salts, 0, [])
    one = leaf_line.writer_leaf({}, good, salts[:16])
    two = leaf_line.writer_leaf({}, good, salts[16:])
    assert entries == salts[:16] + one + salts[16:] + two and nodes == [merkle.node_hash(one, two)]


@needs_c
@pytest.mark.parametrize("args", [
    ((), b"\0" * 16, 0, []),                      # not a list
    ([], b"", 0, []),                             # nothing to do
    (["x"], b"\0" * 16, 0, []),                   # a line that is not bytes
    ([b"{}"], b"\0" * 15, 0, []),                 # salts not a whole number per line
    ([b"{}"], b"\0" * 16, 1, []),                 # nodes that do not fit the size
    ([b"{}"], b"\0" * 16, 1, [b"short"]),         # a node that is not a hash
    ([b"{}"], b"\0" * 16, 1, (b"\0" * 32,)),      # nodes not a list
])
def test_c_batch_declines_what_tree_file_never_passes(args):
    assert _leaf.extend(*args) is None


@needs_c
def test_c_batch_frontier_is_merkle_rules_across_sizes():
    """Every size up to 130 (carries of every length): the C frontier after
    k more leaves is Frontier.extend's, its root merkle.root's."""
    chain = Chain(None)
    line = chain.seal_line(dict.fromkeys(RECORD_FIELDS), 1, "genesis")[1]
    for size in range(0, 130, 3):
        base = [hashlib.sha256(b"%d" % i).digest() for i in range(size)]
        f = merkle.Frontier()
        f.extend(base)
        for k in (1, 2, 5):
            salts = bytes((size + j) & 255 for j in range(16 * k))
            entries, nodes = _leaf.extend([line] * k, salts, f.size, list(f.nodes))
            new = [entries[i + 16:i + ENTRY] for i in range(0, len(entries), ENTRY)]
            g = merkle.Frontier(f.size, f.nodes)
            g.extend(new)
            assert nodes == g.nodes and merkle.Frontier(size + k, nodes).root() == merkle.root(base + new)
