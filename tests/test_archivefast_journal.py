"""The journal's recent-ids delta (exporter.journal, "Recent ids"): a
record carries how the correlator's recent list changed, and reading the
journal back gives exactly the state a full snapshot of the same commit
would, byte for byte once re-encoded, whatever happened to the list
(front dropped, ids added, an id removed from the middle, a time changed),
and after a crash at any OS call."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import checkpoint as ckpt
from exporter import journal
from exporter.checkpoint import read_checkpoint, write_atomic
from exporter.inflight import InFlight

# the journal suite's crash injector: half-writes or dies at the n-th OS call (open, write, fsync, link, replace, fsync_dir)
from test_journal import CrashAt, Die  # noqa: E402  (tests/ is on sys.path)


class Model:
    """A correlator's state in miniature: an in-flight store and recent ids
    that behave as Correlator.recent does (bounded, oldest first)."""

    def __init__(self, bound: int = 8):
        self.store = InFlight()
        self.recent: OrderedDict[str, float | None] = OrderedDict()
        self.bound = bound
        self.order = 0
        self.n = 0

    def add(self, _arg=None):
        slot = f"r{self.order}"
        self.store[slot] = {"key": slot, "order": self.order}
        self.order += 1
        self.store.dirty.add(slot)

    def record(self, i):
        """The oldest in-flight request is recorded: its id joins recent."""
        if self.store:
            slot = next(iter(self.store))
            del self.store[slot]
            self.store.dirty.add(slot)
            self.recent[slot] = None if i % 5 == 0 else 1795315949.0 + i / 8
            while len(self.recent) > self.bound:
                self.recent.popitem(last=False)

    def forget(self, i):
        """A reused id: removed from the middle of recent."""
        if self.recent:
            del self.recent[list(self.recent)[i % len(self.recent)]]

    def retime(self, i):
        """An id recorded again keeps its place with a new time."""
        if self.recent:
            self.recent[list(self.recent)[i % len(self.recent)]] = float(i)

    def state(self):
        self.n += 1
        return {"version": 2, "sources": {"a": [1, self.n]},
                "correlator": {"inflight": self.store, "middleware_seen": False, "next_order": self.order,
                               "recent": list(self.recent.items())},
                "metrics": {"n": self.n}, "written_at": float(self.n)}


def snap(state):
    return json.loads(json.dumps(state))


@pytest.fixture
def path(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "JOURNAL_FROM", 0)  # journal from the first commit
    return str(tmp_path / "checkpoint.json")


def _records(path, gen=1):
    with open(journal.journal_name(path, gen), "rb") as f:
        return [json.loads(line)["commit"] for line in f.read().splitlines()]


def test_delta_record_reads_back_as_the_full_snapshot(path):
    m = Model()
    for i in range(12):
        m.add()
        m.record(i)
    write_atomic(path, m.state())
    for i in range(3):
        m.add()
        m.record(20 + i)
    s = m.state()
    write_atomic(path, s)
    rec = _records(path)[-1]
    assert rec["recent"][0] == 3 and len(rec["recent"][1]) == 3
    assert rec["state"]["correlator"]["recent"] is None
    loaded = read_checkpoint(path)
    assert loaded.source == "current"
    assert json.dumps(loaded.state) == json.dumps(snap(s))


def test_middle_removal_and_retime_write_the_list_whole(path):
    m = Model()
    for i in range(10):
        m.add()
        m.record(i)
    write_atomic(path, m.state())
    m.forget(3)
    s = m.state()
    write_atomic(path, s)
    m.retime(2)
    s2 = m.state()
    write_atomic(path, s2)
    recs = _records(path)
    assert all("recent" not in r for r in recs)
    assert json.dumps(read_checkpoint(path).state) == json.dumps(snap(s2))


def test_emptied_and_unchanged_lists(path):
    m = Model(bound=3)
    for i in range(3):
        m.add()
        m.record(i)
    write_atomic(path, m.state())
    write_atomic(path, m.state())  # unchanged: an empty delta
    assert _records(path)[-1]["recent"] == [0, []]
    m.recent.clear()
    s = m.state()
    write_atomic(path, s)
    assert _records(path)[-1]["recent"] == [3, []]
    assert json.dumps(read_checkpoint(path).state) == json.dumps(snap(s))


def test_delta_beyond_the_list_is_corrupt_not_guessed(path):
    m = Model()
    for i in range(4):
        m.add()
        m.record(i)
    write_atomic(path, m.state())
    m.add()
    m.record(9)
    write_atomic(path, m.state())
    m.add()
    m.record(10)
    write_atomic(path, m.state())
    # Rewrite the first record's delta to drop more ids than there are, resealed
    # (no key): a record the journal cannot apply is not intact.
    jname = journal.journal_name(path, 1)
    with open(jname, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    body = json.loads(lines[0][lines[0].index(b'"commit":') + 9:-2])
    body["recent"][0] = 99
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    digest = journal.keyed_digest(None, b"1:1:" + raw)
    lines[0] = b'{"j":1,"seq":1,"digest":"%s","commit":' % digest.encode() + raw + b"}\n"
    with open(jname, "wb") as f:
        f.write(b"".join(lines))
    assert "journal_corrupt" in read_checkpoint(path).reason


def test_recent_delta_helper():
    a, b, c, d = ("a", 1.0), ("b", None), ("c", 2.0), ("d", 3.0)
    assert journal.recent_delta([a, b, c], [b, c, d]) == (1, [d])
    assert journal.recent_delta([a, b, c], [a, b, c]) == (0, [])
    assert journal.recent_delta([a, b, c], []) == (3, [])
    assert journal.recent_delta([a, b, c], [a, c]) is None  # b left from the middle
    assert journal.recent_delta([a, b, c], [b, ("c", 5.0)]) is None  # a time changed
    assert journal.recent_delta([a, b], [c, d]) is None  # nothing kept
    assert journal.recent_delta([], [a]) is None and journal.recent_delta(None, [a]) is None


OPS = st.lists(st.tuples(st.sampled_from(["add", "record", "record", "forget", "retime", "commit", "commit"]),
                         st.integers(0, 50)), min_size=1, max_size=50)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=OPS, crash_at=st.integers(1, 300))
def test_random_histories_recover_the_last_durable_commit(tmp_path_factory, monkeypatch, script, crash_at):
    """Random histories of the recent list, killed at a random OS call: the
    state read back is the last acknowledged commit's (or the one under way
    once durable), byte for byte as its full snapshot."""
    monkeypatch.setattr(ckpt, "JOURNAL_FROM", 0)
    monkeypatch.setattr(ckpt, "JOURNAL_MIN", 2000)
    path = str(tmp_path_factory.mktemp("r") / "checkpoint.json")
    m = Model(bound=6)
    counter = [0]
    acked, pending = [], None
    for op, arg in script + [("commit", 0)]:
        if op != "commit":
            getattr(m, op)(arg)
            continue
        s = m.state()
        pending = json.dumps(snap(s))
        try:
            write_atomic(path, s, ops=CrashAt(counter, crash_at))
        except Die:
            break
        acked.append(pending)
        pending = None
    got = read_checkpoint(path).state
    got = None if got is None else json.dumps(got)
    # before the first durable commit there is nothing to read back
    assert got in (acked[-1:] or [None]) + ([pending] if pending is not None else [])
    # a restart continues from what was read: its next commits read back exactly
    if got is not None and os.path.exists(path):
        m.store.sync = None
        for i in range(3):
            m.add()
            m.record(100 + i)
            s = m.state()
            write_atomic(path, s)
            assert json.dumps(read_checkpoint(path).state) == json.dumps(snap(s))
