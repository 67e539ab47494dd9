"""RFC 9162 Merkle tree hashing and proofs (pure functions, no I/O).

Leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``
(RFC 9162 §2.1.1), so a leaf can never be passed off as an inner node. The
tree over ``n`` leaves splits at the largest power of two below ``n``; the
root of the empty tree is ``SHA-256("")``.

Proof generation takes the leaf *hashes* (the archive keeps them, one per
record, so a proof never needs the records themselves). Verification follows
RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step: these
are the checks an outsider runs, so they are kept literal rather than clever.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not verify (the message says which check failed)."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash over leaf hashes ``hashes`` (RFC 9162 §2.1.1)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(root(hashes[:k]), root(hashes[k:]))


RangeRoot = Callable[[int, int], bytes]


def list_range_root(hashes: Sequence[bytes]) -> RangeRoot:
    """A ``range_root`` over leaf hashes held in memory (O(hi - lo) per call)."""
    return lambda lo, hi: root(hashes[lo:hi])


def inclusion_proof(index: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of ``size`` leaves (§2.1.3.1).

    ``range_root(lo, hi)`` gives the tree hash over leaves ``lo..hi-1``; every
    range asked for is a subtree of the RFC 9162 shape, so a store of
    perfect-subtree hashes answers most of them without touching leaves.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(range_root(lo + k, hi))
            hi = lo + k
        else:
            path.append(range_root(lo, lo + k))
            lo = lo + k
    path.reverse()
    return path


def consistency_proof(old_size: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """Proof that the tree of ``old_size`` leaves is a prefix of the one of ``size`` (§2.1.4.1)."""
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} outside a tree of size {size}")
    if old_size in (0, size):
        return []
    path: list[bytes] = []
    lo, hi, m, complete = 0, size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                path.append(range_root(lo, hi))
            break
        k = _split(n)
        if m <= k:
            path.append(range_root(lo + k, hi))
            hi = lo + k
        else:
            path.append(range_root(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    path.reverse()
    return path


class Frontier:
    """The roots of the perfect subtrees that make up a growing tree.

    Appending is O(1) amortised and the root O(log n), so the writer can sign
    a checkpoint after every commit without re-reading any leaf. The state is
    a list of at most 64 hashes, cheap to checkpoint.
    """

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()):
        if len(nodes) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} needs {bin(size).count('1')} frontier nodes, got {len(nodes)}")
        self.size = size
        self.nodes = list(nodes)  # largest subtree first, as the bits of size

    def append(self, leaf: bytes) -> None:
        h = leaf
        n = self.size
        while n & 1:  # merge equal-sized subtrees, as carrying in binary addition
            h = node_hash(self.nodes.pop(), h)
            n >>= 1
        self.nodes.append(h)
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """:meth:`append` of each of ``leaves`` in order, in one call."""
        nodes = self.nodes
        pop, push = nodes.pop, nodes.append
        sha = hashlib.sha256
        n = self.size
        for h in leaves:
            m = n
            while m & 1:
                h = sha(b"\x01" + pop() + h).digest()
                m >>= 1
            push(h)
            n += 1
        self.size = n

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1]
        for h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Raise ProofError unless ``leaf`` (a leaf hash) is entry ``index`` of the tree."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} outside a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != expected_root:
        raise ProofError("inclusion proof does not lead to the checkpoint's root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless the tree (old_size, old_root) is a prefix of (new_size, new_root)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("same size, different roots: the history forked")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError("consistency proof does not reproduce the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not reproduce the new root")
