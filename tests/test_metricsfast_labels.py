"""The label fast paths (BoundedLabels.label's probe, _slow's shortcut for
admitted values, _folded once a dimension is full) answer as the plain
algorithm does: the same label for every value and the same admitted set,
in the same order, through restores, in every user-label mode."""

from __future__ import annotations

import random

import pytest

from exporter.labels import OTHER, UNKNOWN, BoundedLabels, UserLabels, clean

KEY = b"k"


class _Plain:
    """label() as it was before the fast paths: public() on every cleaned
    value, then admission; the same _cache/_other memos, which only repeat
    answers already given."""

    def label(self, value):
        if not self.enabled:
            return None
        try:
            return self._cache[value]
        except KeyError:
            if value in self._other:
                return OTHER
            return self._plain_slow(value)
        except TypeError:
            return self._plain_slow(repr(value))

    def _plain_slow(self, value):
        text = clean(value)
        if text not in (UNKNOWN, OTHER):
            text = self.public(text)
        if text in (UNKNOWN, OTHER) or text in self._admitted:
            result = text
        else:
            with self._lock:
                if text not in self._admitted and len(self._admitted) < self.limit:
                    self._admitted[text] = None
                result = text if text in self._admitted else OTHER
        if result != OTHER:
            if len(self._cache) < self._cache_max:
                self._cache[value] = result
        else:
            if len(self._other) >= self._other_max:
                self._other.clear()
            self._other[value] = OTHER
        return result


class PlainBounded(_Plain, BoundedLabels):
    pass


class PlainUsers(_Plain, UserLabels):
    pass


def _pool(rng: random.Random) -> list:
    pseudonym_of = UserLabels(key=KEY).pseudonym
    mails = [f"p{i}@example.com" for i in range(12)]
    return [
        *(f"user{i}" for i in range(40)),
        *mails,
        *(pseudonym_of(m) for m in mails[:6]),  # pseudonyms of values seen raw
        *(pseudonym_of(f"user{i}") for i in range(4)),  # ... and of values not personal
        "u:0123456789abcdef", "key:065127ff61eb98eb", "u:NOTHEX", "call 13812345678",
        None, "", UNKNOWN, OTHER, "x" * 200, "x" * 128 + "y", "bad\udc80", 7, 7.0, True, ["unhashable"],
    ]


def _stream(rng: random.Random, pool: list, n: int) -> list:
    return [rng.choice(pool) for _ in range(n)]


def _pair(kind: str, limit: int, mode: str):
    if kind == "bounded":
        return BoundedLabels(limit), PlainBounded(limit)
    return UserLabels(limit, mode=mode, key=KEY), PlainUsers(limit, mode=mode, key=KEY)


@pytest.mark.parametrize("kind,mode", [("bounded", None), ("users", "pseudonymous"), ("users", "hashed"),
                                       ("users", "raw")])
@pytest.mark.parametrize("seed", range(12))
def test_same_labels_and_admission_as_the_plain_algorithm(kind, mode, seed):
    rng = random.Random(seed)
    pool = _pool(rng)
    limit = rng.choice([0, 1, 3, 8, 30, 200])
    fast, plain = _pair(kind, limit, mode)
    for _ in range(6):
        values = _stream(rng, pool, 400)
        assert [fast.label(v) for v in values] == [plain.label(v) for v in values]
        assert fast.state() == plain.state()
        roll = rng.random()
        if roll < 0.4:
            # A checkpoint of either, or a hand-made one (an older build's raw
            # e-mails, pseudonyms whose raw value this run never saw).
            state = rng.choice([fast.state(), [v for v in rng.sample(pool, 15) if isinstance(v, str)]])
            fast.restore(list(state))
            plain.restore(list(state))
            assert fast.state() == plain.state()
        elif roll < 0.5:
            fast._cache_max = plain._cache_max = rng.choice([0, 2, 4 * limit + 16])
            fast._other_max = plain._other_max = rng.choice([1, 3, 4096])


def test_a_full_dimension_still_finds_an_admitted_pseudonym():
    # The pseudonym of an e-mail is admitted (restored: its raw value was
    # never seen by this process), the dimension is full: the e-mail gets its
    # pseudonym, other new values __other__, as without the fast path.
    pseudonym = UserLabels(key=KEY).pseudonym("li.na@example.com")
    for cls in (UserLabels, PlainUsers):
        users = cls(2, key=KEY)
        users.restore([pseudonym, "alice"])
        assert [users.label(v) for v in ("li.na@example.com", "bob", "bo@example.com", "alice")] == \
            [pseudonym, OTHER, OTHER, "alice"]
    hashed = UserLabels(1, mode="hashed", key=KEY)
    hashed.restore([hashed.pseudonym("alice")])
    assert [hashed.label(v) for v in ("alice", "bob")] == [hashed.pseudonym("alice"), OTHER]
