"""The parse/correlate stage's shortcuts give what the plain paths give.

* The C scanner allocates each Event and fills its four slots itself (no
  Python ``__init__`` call per line) only when Event is the plain slots
  dataclass; any other Event class is called. Either way the event equals
  the pure-Python parser's.
* Its small header cache (keyed by a hash of the header's text, no string
  object per line) answers exactly what the header dict answers: the same
  header text in lines of another string kind, many headers colliding in
  its 64 slots, a cleared cache.
* ``Correlator.state()`` hands ``recent`` over as a JSON object; a restore
  reads it and the old list of pairs alike.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest

import cbuild
from exporter import events as ev
from exporter.correlate import Correlator
from exporter.parse import fast, messages

_scan = fast.load()
needs_c = cbuild.needs_c(_scan is not None)  # built where a compiler exists: tests/test_cbuild.py

HEAD = "(APIServer pid=9141) INFO 11-22 02:27:{sec:02d} [{file}:{line}] "
LINES = [
    HEAD + "Added request chatcmpl-{i:016x}-8478d877.",
    HEAD + "Generated response chatcmpl-{i:016x}: output: 'h\u00e9llo \u4f60\u597d \U0001f600', finish_reason: stop",
    HEAD + "Generated response chatcmpl-{i:016x} details: output_token_ids: [1, 2, {i}]",
    HEAD + "Generated response chatcmpl-{i:016x}: output: 'plain', finish_reason: length",
]
FILES = {0: "async_llm.py", 1: "request_logger.py", 2: "request_logger.py", 3: "request_logger.py"}


def reference(text: str):
    saved = fast.scan, fast.dispatch
    fast.scan = fast.dispatch = None
    try:
        return messages.parse_line(text)
    finally:
        fast.scan, fast.dispatch = saved


def lines(n: int):
    for i in range(n):
        shape = i % len(LINES)
        yield LINES[shape].format(sec=i % 60, file=FILES[shape], line=100 + i % 97, i=i)


def same(text: str):
    got, want = _scan.scan(text), reference(text)
    assert got is not None, text
    assert type(got) is type(want) and got == want and repr(got) == repr(want)
    return got


@needs_c
def test_events_are_allocated_directly_and_equal_the_python_ones():
    assert _scan.direct_events()
    for text in lines(400):
        got = same(text)
        assert type(got) is ev.Event
        got.data["touched"] = 1  # a real, mutable event: its dict is its own
        assert "touched" not in same(text).data


@needs_c
def test_access_line_event():
    text = '(APIServer pid=9141) INFO:     127.0.0.1:60996 - "POST /v1/chat/completions HTTP/1.1" 200 OK'
    got = same(text)
    assert got.kind == ev.ACCESS and got.request_id is None and got.when is None


@needs_c
def test_header_cache_collisions_kinds_and_clearing():
    # 2 000 distinct headers through 64 slots, each header text once in a
    # 1-byte and once in a 2- or 4-byte line: every answer is the reference's.
    texts = list(lines(2000))
    for _ in range(2):
        for text in texts:
            same(text)
        _scan.clear_cache()
    # The same header text, alternately in an ASCII line and in a wide one.
    head = HEAD.format(sec=9, file="request_logger.py", line=108)
    for i in range(50):
        same(head + f"Generated response chatcmpl-{i:x}: output: 'x', finish_reason: stop")
        same(head + f"Generated response chatcmpl-{i:x}: output: '\u4f60{i}', finish_reason: stop")


class _Traced(ev.Event):
    """An Event whose __init__ is not the dataclass's: must be called."""

    __slots__ = ()
    calls = 0

    def __init__(self, *args):
        type(self).calls += 1
        super().__init__(*args)


@needs_c
def test_another_event_class_is_called():
    assert fast.plain_event(ev.Event) and not fast.plain_event(_Traced)
    mod = fast.load()
    try:
        mod.configure(_Traced, fast._header, *_configured_rest())
        assert not mod.direct_events()
        text = next(lines(1))
        got = mod.scan(text)
        assert type(got) is _Traced and _Traced.calls == 1
        assert (got.kind, got.request_id, got.when, got.data) == (ev.ADDED, "chatcmpl-0000000000000000-8478d877",
                                                                 reference(text).when, {})
    finally:
        fast.configure(mod)
    assert mod.direct_events()


def _configured_rest():
    from exporter.parse.body_line import body_event
    from exporter.parse.fields import sampling_params
    return (sampling_params, body_event, ev.OUTPUT, ev.OUTPUT_DETAILS, ev.ADDED, ev.FINISHED, ev.DETAILS,
            ev.RECEIVED, ev.ACCESS)


def _fed() -> Correlator:
    c = Correlator(merge_grace=0.0)
    for i in range(5):
        c.feed(ev.Event(ev.RECEIVED, f"chatcmpl-r{i}", None, {"params": {}}), 100.0 + i)
        c.feed(ev.Event(ev.OUTPUT, f"chatcmpl-r{i}", None,
                        {"stream_info": "", "output": "x", "finish_reason": "stop"}), 101.0 + i)
    c.feed(ev.Event(ev.RECEIVED, "chatcmpl-open", None, {"params": {}}), 200.0)
    assert len(c.ready(150.0)) == 5
    return c


def test_recent_state_round_trips_in_both_forms():
    c = _fed()
    state = json.loads(json.dumps(c.state()))
    # a list of [id, time] pairs, oldest first: the journal carries how it changed (exporter.journal)
    assert state["recent"] == [[f"r{i}", 100.0 + i] for i in range(5)]
    for form in (state["recent"], dict(state["recent"])):  # the list, and the object form restore() also reads
        again = Correlator(merge_grace=0.0)
        again.restore(dict(state, recent=form))
        assert again.recent == OrderedDict((f"r{i}", 100.0 + i) for i in range(5))
        assert list(again.recent) == [f"r{i}" for i in range(5)]
        assert list(again.inflight) == ["open"]
