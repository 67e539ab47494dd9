"""exporter/_observe.c counts as the Python observe does: two stores, one
with the C observe and one pure Python, fed the same record sequences
(every field varied, adversarial types), give the same snapshot and the
same /metrics text; and the C path really counts (not only declines)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from pathlib import Path

from exporter import checkpoint, metrics
from exporter.labels import ServedModels, UserLabels
from exporter.metrics import RequestMetrics

from cbuild import needs_c
from leakcheck import assert_no_leaks
from oddvalues import DictSub, IntSub, StrSub
from tests.real_captures import replay

FIXTURE_LOGS = [str(Path(__file__).parent / "fixtures" / "vllm-0.32.0" / d / "vllm.log")
                for d in ("debug", "engine", "middleware")]

pytestmark = needs_c(metrics._C is not None)  # built where a compiler exists: tests/test_cbuild.py


class PyMetrics(RequestMetrics):
    def observe(self, rec):
        self.py_observe(rec)


odd = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.just(math.nan),
                st.just(-math.inf), st.lists(st.text(max_size=3), max_size=2), st.text(max_size=4),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
label = st.one_of(st.sampled_from(["tiny", "big", "chat", "completed", "rejected", "stop", "", "bob@example.com",
                                   "user_field", "m" * 140, "bad\udc80", None]), odd)
num = st.one_of(st.sampled_from([0, 1, 3, 2048, 2049, 5000, 0.5, -1, -0.0, 0.05, 600, 1e6, 2**63, 2**80,
                                 2**53, 2**53 + 1, -2**53 - 1, 2.0**53, 1e16, 10**400, -10**400, 1e308]),
                odd)  # around record.MAX_MEASURE and beyond any float: skipped, never raised
engine = st.one_of(st.none(), odd, st.fixed_dictionaries(
    {}, optional={k: num for k in ("share_seconds", "devices", "queue_seconds", "prefill_seconds",
                                   "decode_seconds")}))
record = st.fixed_dictionaries({}, optional={
    "model": label, "user": label, "endpoint": label, "finish_reason": label, "identity_source": label,
    "status": st.one_of(st.sampled_from(["completed", "rejected", "aborted", None]), label),
    "prompt_tokens": num, "completion_tokens": num, "latency_seconds": num, "ttft_seconds": num,
    "empty_response": st.one_of(st.sampled_from([True, False, None]), odd),
    "identity": st.one_of(odd, st.fixed_dictionaries({}, optional={"invalid_reason": label})),
    "engine": engine,
    "flags": st.one_of(odd, st.lists(st.one_of(st.sampled_from(["pii", "oversized", "pii"]), label), max_size=4)),
})


NUMERIC_FIELDS = ("prompt_tokens", "completion_tokens", "latency_seconds", "ttft_seconds", "empty_response",
                  "engine")


def _pair(with_user, max_models, max_users, oversized):
    out = []
    for cls in (RequestMetrics, PyMetrics):
        registry = CollectorRegistry()
        users = UserLabels(max_users, enabled=with_user, key=b"k")
        m = cls(registry, users=users, max_models=max_models, oversized_input_tokens=oversized)
        out.append((m, registry))
    return out


def _same(fast, plain):
    (m, reg), (p, preg) = fast, plain
    assert json.dumps(m.snapshot()) == json.dumps(p.snapshot())
    checkpoint.encode({"metrics": m.snapshot()})  # strict JSON: no sum ever reaches inf
    assert generate_latest(reg) == generate_latest(preg)


def _feed(pair, recs, served=None):
    for m, _ in pair:
        m.served = served
    for r in recs:
        for m, _ in pair:
            # observe() never raises, whatever the record holds: an exception
            # here stopped the pipeline, the record and the ones after it unarchived.
            m.observe(r)
    _same(*pair)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, max_size=40), st.booleans(), st.sampled_from([0, 1, 3, 100]),
       st.sampled_from([0, 2, 500]), st.sampled_from([None, "tiny", "learned"]))
def test_c_observe_matches_python(recs, with_user, max_models, max_users, served_kind):
    pair = _pair(with_user, max_models, max_users, 2048)
    served = None if served_kind is None else ServedModels(served_kind if served_kind == "tiny" else None)
    if served_kind == "learned":
        served.learn("vllm", ["big", "tiny"])
    # First the labels alone (no numbers): the passes after it find their
    # labels memoised, so the C path counts, and makes the numeric series.
    _feed(pair, [{k: v for k, v in r.items() if k not in NUMERIC_FIELDS} for r in recs], served)
    _feed(pair, recs, served)
    _feed(pair, recs, served)
    snap = json.loads(json.dumps(pair[1][0].snapshot()))
    for m, _ in pair:
        m.users.restore(snap["labels"]["user"])
        m.restore(snap)
    _feed(pair, recs, served)


def test_c_observe_counts_and_declines_when_locked():
    pair = _pair(True, 100, 500, 2048)
    rec = {"model": "tiny", "user": "alice", "endpoint": "chat", "status": "completed", "finish_reason": "stop",
           "prompt_tokens": 3, "completion_tokens": 5, "latency_seconds": 0.2, "ttft_seconds": 0.01,
           "empty_response": False, "flags": ["pii", "pii"], "identity": {"invalid_reason": "expired"}}
    _feed(pair, [rec])
    m = pair[0][0]
    assert metrics._C.observe(m._state, rec) is True
    with m._lock:
        assert metrics._C.observe(m._state, rec) is None  # the scrape holds the lock: Python waits
    pair[1][0].observe(rec)
    _same(*pair)


@pytest.mark.parametrize("log", ["big", *FIXTURE_LOGS])
def test_replay_records_match(tmp_path, log, big_debug_log):
    """The records of a real replay (2 MB made from the real DEBUG capture,
    the fixtures' captured logs), through both, as the pipeline passes them."""
    recs = replay(tmp_path, [str(big_debug_log if log == "big" else log)])
    assert recs
    for with_user in (True, False):
        pair = _pair(with_user, 100, 500, 2048)
        _feed(pair, recs, ServedModels("tiny"))
        # and the C path really counted them (not only declined)
        assert any(metrics._C.observe(pair[0][0]._state, r) is True for r in recs)


def test_accelerator_info_names_the_metrics_stage():
    from exporter.selfmetrics import SelfMetrics

    reg = CollectorRegistry()
    SelfMetrics(reg, sources=("vllm",))
    assert reg.get_sample_value("vllm_audit_accelerator_info",
                                {"stage": "metrics", "implementation": metrics.IMPLEMENTATION}) == 1
    metrics.set_enabled(False)
    try:
        assert metrics.IMPLEMENTATION == "python" and metrics._C is None
    finally:
        metrics.set_enabled(True)
    assert metrics.IMPLEMENTATION == "c"


# -- every field the C observe reads, set to each odd value (deterministic) ---

_MISSING = object()  # the field removed
ODD_VALUES = [_MISSING, None, "", "\ud800", 0, -1, 2**100, 2**63, -2**63, 1.5, -0.0, math.nan, math.inf, -math.inf,
              True, False, [], {}, (1,), b"x", StrSub("tiny"), StrSub(""), IntSub(3), DictSub(invalid_reason="expired"),
              [None], ["pii", None], "completed", "rejected", "tiny", "stop", "pii"]


def _base_record():
    return {"model": "tiny", "user": "alice", "endpoint": "chat", "status": "completed", "finish_reason": "stop",
            "identity_source": "header", "prompt_tokens": 3000, "completion_tokens": 5, "latency_seconds": 0.2,
            "ttft_seconds": 0.01, "empty_response": False, "flags": ["pii", "oversized", "pii"],
            "identity": {"invalid_reason": "expired"},
            "engine": {"share_seconds": 0.1, "devices": 2, "queue_seconds": 0.01, "prefill_seconds": 0.02,
                       "decode_seconds": 0.3}}


# (field, nested key or index): every value the C observe reads (and the
# engine's, which its callback reads)
_PATHS = [(k, None) for k in _base_record()] + [
    ("identity", "invalid_reason"), ("flags", 0), ("flags", 1),
    *(("engine", k) for k in ("share_seconds", "devices", "queue_seconds", "prefill_seconds", "decode_seconds"))]


def _with(rec, path, value):
    field, sub = path
    target, key = (rec, field) if sub is None else (rec[field], sub)
    if value is _MISSING:
        if isinstance(target, list):
            del target[key]
        else:
            target.pop(key, None)
    else:
        target[key] = value
    return rec


def _observe_both(pair, rec):
    """rec through the C observe (then Python if it declined) and through
    py_observe alone: the same exception (or none) from both. True when
    the C path counted it."""
    (m, _), (p, _) = pair
    outcome = []
    counted = False
    for store, fast in ((m, True), (p, False)):
        try:
            if fast:
                got = metrics._C.observe(store._state, rec)
                assert got in (True, None)
                counted = got is True
                if got is None:
                    store.py_observe(rec)
            else:
                store.py_observe(rec)
            outcome.append(None)
        except Exception as exc:
            outcome.append(type(exc))
    assert outcome[0] == outcome[1], rec
    return counted


@pytest.mark.parametrize("with_user,served,max_users", [(True, None, 500), (False, "tiny", 500), (True, "tiny", 0),
                                                        (True, "learned", 2)])
def test_c_observe_every_field_odd(with_user, served, max_users):
    """Each field (and nested field) of a realistic record set to each odd
    value, through a store already holding the record's labels: the process
    survives, and the exposition is byte-identical to the Python path's."""
    counted = 0
    for path in _PATHS:
        for value in ODD_VALUES:
            pair = _pair(with_user, 100, max_users, 2048)
            s = None if served is None else ServedModels("tiny" if served == "tiny" else None)
            if served == "learned":
                s.learn("vllm", ["big", "tiny"])
            for m, _ in pair:
                m.served = s
            base = _base_record()
            _observe_both(pair, base)  # memoises the base record's labels
            rec = _with(_base_record(), path, value)
            for _ in range(3):  # the first may memoise new labels: then the C path counts
                counted += _observe_both(pair, rec)
            # and the record is unchanged by either
            assert repr(rec) == repr(_with(_base_record(), path, value))
            _same(*pair)
    assert counted  # the C path counted, not only declined


def test_no_reference_or_memory_leaks():
    """Counted, declined and raising records alike, into a store that already
    holds their labels: nothing may grow per record."""
    (m, _), _plain = _pair(True, 100, 500, 2048)
    m.served = ServedModels("tiny")
    recs = [_base_record()] + [_with(_base_record(), path, value) for path in _PATHS
                               for value in (_MISSING, None, 2**100, "\ud800", math.nan, [], StrSub("tiny"))]

    def run():
        counted = 0
        for r in recs:
            try:
                if metrics._C.observe(m._state, r) is None:
                    m.py_observe(r)  # declined: Python counts it (and memoises its labels)
                else:
                    counted += 1
            except Exception:  # noqa: BLE001 - the raising paths must not leak either
                pass
        return counted

    run()
    assert run()  # the C path counts, not only declines

    assert_no_leaks(run, (None, True, False, "tiny", "alice", "chat", "completed", "stop", "header", "pii"),
                    repeats=20)
