"""Correlator rules that real captures rarely exercise: late lines and reused ids.

Events here are built directly (the parser's output contract, docs/design.md);
the field values are those of the real 0.32 capture's first request.
"""

from exporter import events as ev
from exporter.correlate import Correlator

LT = ev.LogTime(None, 11, 22, 2, 27, 9)
RID = "chatcmpl-993a83d038fc1d4d"


def _received(t):
    return ev.Event(ev.RECEIVED, RID, LT, {"params": {"max_tokens": 16, "n": 1}}), t


def _output(t):
    return ev.Event(ev.OUTPUT, RID, LT, {"stream_info": "", "output": "hi", "finish_reason": "stop"}), t


def _middleware(received_at, finished_at):
    line = {"type": "vllm_audit_middleware", "request_id": "993a83d038fc1d4d",
            "received_at": received_at, "finished_at": finished_at, "status": "completed"}
    return ev.Event(ev.MIDDLEWARE, "993a83d038fc1d4d", None, {"line": line}), 0.0


def _correlator(evicted):
    return Correlator(request_timeout=30, merge_grace=0.5, on_evict=evicted.append)


def test_a_middleware_line_after_its_request_was_recorded_opens_no_second_record():
    evicted = []
    c = _correlator(evicted)
    t0 = 1_795_314_429.0  # 2026-11-22T02:27:09Z
    for event, t in (_received(t0), _output(t0)):
        c.feed(event, t)
    c.middleware_seen = True  # a middleware source exists, but this line is delayed
    first = c.ready(t0 + 31)  # waited request_timeout for it, then recorded
    assert len(first) == 1 and first[0]["mw"] is None
    event, _ = _middleware("2026-11-22T02:27:09.120Z", "2026-11-22T02:27:09.300Z")
    c.feed(event, t0)
    assert c.drain() == [] and evicted == ["late_event"]


def test_a_reused_request_id_is_two_requests():
    evicted = []
    c = _correlator(evicted)
    t0 = 1_795_314_429.0
    for event, t in (_received(t0), _output(t0)):
        c.feed(event, t)
    assert len(c.ready(t0 + 1)) == 1
    for event, t in (_received(t0 + 60), _output(t0 + 60)):  # same X-Request-Id, a minute later
        c.feed(event, t)
    assert len(c.ready(t0 + 61)) == 1 and evicted == []


def test_late_lines_survive_a_restart():
    c = _correlator([])
    t0 = 1_795_314_429.0
    for event, t in (_received(t0), _output(t0)):
        c.feed(event, t)
    assert len(c.ready(t0 + 1)) == 1
    evicted = []
    restored = _correlator(evicted)
    restored.restore(c.state())
    event, t = _output(t0 + 2)
    restored.feed(event, t)
    assert restored.drain() == [] and evicted == ["late_event"]


def test_capacity_evicts_the_oldest_also_after_a_restore():
    evicted = []
    c = Correlator(request_timeout=30, merge_grace=0.5, max_inflight=2, on_evict=evicted.append)
    t0 = 1_795_314_429.0
    for i in range(3):
        c.feed(ev.Event(ev.RECEIVED, f"chatcmpl-r{i}", LT, {}), t0 + i)
    assert evicted == ["capacity"] and [e["key"] for e in c.ready(t0)] == ["r0"]
    # a checkpoint whose in-flight map came back in another order
    state = c.state()
    state["inflight"] = dict(reversed(list(state["inflight"].items())))
    d = Correlator(request_timeout=30, merge_grace=0.5, max_inflight=2, on_evict=evicted.append)
    d.restore(state)
    d.feed(ev.Event(ev.RECEIVED, "chatcmpl-r3", LT, {}), t0 + 3)
    assert [e["key"] for e in d.ready(t0)] == ["r1"]


def _received_as(rid, t):
    return ev.Event(ev.RECEIVED, rid, LT, {"params": {"max_tokens": 16, "n": 1}}), t


def test_ready_looks_only_at_requests_that_may_be_due_not_at_every_one_in_flight():
    # A pile-up: thousands of requests received, none finished. Each step's
    # ready() must not examine them all again (that made a pile-up quadratic).
    c = _correlator([])
    t0 = 1_795_314_429.0
    for i in range(3000):
        c.feed(*_received_as(f"chatcmpl-{i:016x}", t0))
    examined = []
    take = c._take
    c._take = lambda slot, e, w, out: examined.append(slot) or take(slot, e, w, out)
    assert c.ready(t0 + 1) == [] and examined == []  # none due: none looked at
    c.feed(*_received_as("chatcmpl-late", t0 + 5))
    for step in range(100):
        assert c.ready(t0 + 2 + step * 0.1) == []
    assert examined == []
    # at the timeout exactly the first 3000 are due (the late one is not yet)
    out = c.ready(t0 + 30)
    assert len(out) == 3000 and len(examined) == 3000
    assert [e["order"] for e in out] == sorted(e["order"] for e in out)
    assert list(c.inflight) == ["late"]


def test_a_wait_that_grows_after_a_request_was_filed_is_honoured():
    # Filed under merge_grace, then a middleware source appears: the request
    # now waits request_timeout for its middleware line (the bound was low).
    c = _correlator([])
    t0 = 1_795_314_429.0
    for event, t in (_received(t0), _output(t0)):
        c.feed(event, t)
    assert c.ready(t0) == []  # filed: due at t0 + 0.5
    c.middleware_seen = True
    assert c.ready(t0 + 1) == []  # looked at, not due any more: refiled
    assert len(c.ready(t0 + 30)) == 1
