"""BoundedLabels remembers raw values that fold to __other__: the same
answers as without the memo, before and after a restore()."""

from __future__ import annotations

import random

from exporter.labels import OTHER, BoundedLabels, UserLabels


def test_other_is_remembered_and_forgotten_on_restore():
    b = BoundedLabels(limit=2)
    assert [b.label(v) for v in ("a", "b", "c", "c", "d")] == ["a", "b", OTHER, OTHER, OTHER]
    b.restore(["c"])  # room again: "c" is admitted, "d" may be
    assert [b.label(v) for v in ("c", "d", "a", "e")] == ["c", "d", OTHER, OTHER]


def test_same_labels_as_a_fresh_lookup_each_time():
    rng = random.Random(5)
    memo = UserLabels(max_users=50, key=b"k")
    values = [rng.choice([f"user{rng.randrange(400)}", f"bob{rng.randrange(9)}@example.com", None, "",
                          "u:0123456789abcdef", ["unhashable"], 7]) for _ in range(20000)]
    got = [memo.label(v) for v in values]
    # The reference: the same admission order, no memo of any kind.
    ref_labels = UserLabels(max_users=50, key=b"k")
    ref = []
    for v in values:
        ref_labels._cache = {None: "unknown", "": "unknown"}
        ref_labels._other = {}
        ref.append(ref_labels.label(v))
    assert got == ref
    assert len(memo._other) <= memo._other_max
