"""Merge parsed events into exactly one record per request.

Keys. Every event is filed under the request's *base id*: vLLM's external id
without its endpoint prefix (``chatcmpl-X`` → ``X``, ``cmpl-X-0`` → ``X``),
the bare id of the DEBUG ``JSON body`` line, or the middleware's
``request_id`` (the ``X-Request-Id`` it made vLLM use). Engine-internal ids in
``Added``/``Aborted`` lines (``chatcmpl-X-1a2b3c4d`` since 0.14, ``0_chatcmpl-X``
for n>1 children) are mapped back to a known request.

When a request is finished (V1 logs no "finished" event, so it is decided
from what is logged):

* the middleware line (written when the response is complete) — definitive;
* a non-streaming ``Generated response`` line (vLLM logs every non-empty
  choice in one loop once the response is built);
* ``Generated response … (streaming complete)``; the real finish reason is
  the last delta's, never the literal ``streaming_complete``;
* ``Aborted request`` / ``Request X aborted.`` (status ``aborted``),
  ``Request X failed`` (status ``error``), V0 ``Finished request``;
* otherwise, ``request_timeout`` seconds of *log time* after the request's
  last event, status ``incomplete`` (e.g. stock vLLM never logs an empty
  non-streaming answer, nor any /v1/completions output in 0.32).

A finished request is held ``merge_grace`` seconds (log time, measured on the
*watermark*: the time up to which every source has been read) so the other
source's lines can join; with a middleware source seen, a request finished
by vLLM's log waits for the middleware line up to ``request_timeout``.
With ``eager`` (``run``), a request whose both sides are in -- its
middleware line and the log line that ends it in vLLM's log (the last
choice's output line, ``streaming complete`` for every choice, aborted,
failed) -- is recorded as soon as the watermark reaches its end, with no
``merge_grace``: nothing more can come for it. (Replay keeps the grace, so
its records and their order are what they always were.)

Settings learned from vLLM's start-up lines (:mod:`exporter.learned`) are
set in ``cfg`` by the pipeline for the source being read; the first log
line of a request stores them in its entry, so a restart with other
settings applies to the requests after it only. ``max_log_len`` (the flag)
wins over the entry's.

In-flight state is bounded (``max_inflight``; the oldest is recorded as
``incomplete`` and counted) and is plain JSON data, so it is checkpointed.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import OrderedDict
from typing import Callable

from . import events as ev
from .events import id_count
from .inflight import InFlight
from .record import parse_ts_or_none

_TAIL_INDEX = re.compile(r"-\d+$")
_INTERNAL_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_CHILD_PREFIX = re.compile(r"^\d+_")

RECENT_MAX = 20000  # recorded requests remembered against late lines
LATE_WINDOW = 2.0  # s: a middleware line this close to a recorded request's receive time is its own

ENDPOINT_BY_PREFIX = (("chatcmpl-", "chat"), ("chat-", "chat"), ("cmpl-", "completion"),
                      ("embd-", "embeddings"), ("resp_", "responses"))


def base_id(log_id: str) -> tuple[str, str | None]:
    """(base id, endpoint) of a vLLM external request id."""
    for prefix, endpoint in ENDPOINT_BY_PREFIX:
        if log_id.startswith(prefix):
            rest = log_id[len(prefix):]
            if endpoint in ("completion", "embeddings"):
                rest = _TAIL_INDEX.sub("", rest)
            return rest, endpoint
    return log_id, None


class Correlator:
    def __init__(self, *, request_timeout: float = 300.0, merge_grace: float = 5.0,
                 max_inflight: int = 10000, max_log_len: int | None = None,
                 on_evict: Callable[[str], None] = lambda reason: None):
        self.request_timeout = request_timeout
        self.merge_grace = merge_grace
        self.max_inflight = max_inflight
        self.max_log_len = max_log_len
        self.on_evict = on_evict
        self.eager = False  # record a request whose both sides are in at once (live)
        self.cfg: dict | None = None  # learned settings of the source being read (exporter.learned)
        self.inflight = InFlight()  # slot -> entry, oldest first (exporter.inflight)
        self.by_log_id: dict[str, str] = {}
        self.middleware_seen = False
        self._pending_evicted: list[dict] = []
        self._next_order = 0  # arrival order: emission order must not depend on dict order
        # Requests recorded lately (key -> their received time), oldest first:
        # a line arriving after its request was recorded must not open a
        # second record for it (RECENT_MAX bounds the memory).
        self.recent: OrderedDict[str, float | None] = OrderedDict()
        # A client may reuse its X-Request-Id: a second request under a base
        # id that is still in flight gets an entry of its own under an alias
        # slot ("<id>#<order>"); base id -> its alias slots, oldest first.
        self.aliases: dict[str, list[str]] = {}
        # When each entry may next be due (ready()): a heap of lower bounds
        # (due, order, slot) so ready() looks only at entries that may be due
        # instead of scanning every in-flight request each step (a pile-up
        # made that quadratic). Slots touched since the last ready() have
        # their due time re-read there; _heaped is the smallest bound in the
        # heap per slot, so a later (larger) due needs no push.
        self._due: list[tuple[float, int, str]] = []
        self._heaped: dict[str, float] = {}
        self._touched: set[str] = set()

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        # Evicted-but-not-yet-recorded entries are recorded before any
        # checkpoint (the pipeline calls ready() first), so they are not kept.
        # The in-flight store goes as it is: the checkpoint journals only its
        # dirty slots (exporter.checkpoint, exporter.journal). ``recent`` goes
        # as a list of [key, received time] pairs, oldest first: the journal
        # then carries only how it changed since the last commit (ids left at
        # the front, joined at the back). restore() also reads the object form.
        self.inflight.mark(self._touched)
        return {"inflight": self.inflight, "middleware_seen": self.middleware_seen,
                "next_order": self._next_order, "recent": list(self.recent.items())}

    def restore(self, state: dict | None) -> None:
        if not state:
            return
        # Arrival order is dict order (the oldest first): _bound relies on it.
        self.inflight = InFlight(sorted((state.get("inflight") or {}).items(), key=lambda kv: kv[1]["order"]))
        self.middleware_seen = bool(state.get("middleware_seen"))
        self._next_order = int(state.get("next_order") or 0)
        recent = state.get("recent") or []
        self.recent = OrderedDict(recent.items() if isinstance(recent, dict) else ((k, v) for k, v in recent))
        self.by_log_id = {e["log_id"]: k for k, e in self.inflight.items() if e.get("log_id")}
        self.aliases = {}
        for slot, e in self.inflight.items():
            if slot != e["key"]:
                self.aliases.setdefault(e["key"], []).append(slot)
        self._due, self._heaped = [], {}
        self._touched = set(self.inflight)

    # ---------------------------------------------------------------- input
    def _entry(self, slot: str, t: float | None, key: str | None = None) -> dict:
        """The in-flight entry in ``slot`` (made if new); ``key`` is the base
        id when ``slot`` is an alias."""
        entry = self.inflight.get(slot)
        if entry is None:
            entry = {"key": key or slot, "log_id": None, "endpoint": None, "first_t": t, "last_t": t,
                     "received_t": None, "done_t": None, "status": None, "received": None,
                     "details": None, "body": None, "outputs": [], "deltas": 0,
                     "delta_ids": 0, "delta_ids_known": True, "last_finish": None,
                     "complete": [], "out_ids": None, "mw": None, "aborted": False,
                     "failed": None, "stream": None, "precise": False, "engine": None,
                     "order": self._next_order}
            if key is not None and key != slot:
                entry["slot"] = slot
            self._next_order += 1
            self.inflight[slot] = entry
            self._touched.add(slot)
            return entry  # its times are t already
        self._touched.add(slot)
        if t is not None:
            # first_t and last_t are None together (both start as t), so a
            # line no later than the last one (most: they share its second)
            # writes nothing.
            last = entry["last_t"]
            if last is None or t > last:
                entry["last_t"] = t
                if last is None:
                    entry["first_t"] = t
        return entry

    def _key_for(self, log_id: str) -> tuple[str, str | None]:
        known = self.by_log_id.get(log_id)
        if known is not None:
            return known, None
        return base_id(log_id)

    def _find_internal(self, rid: str) -> str | None:
        by_log_id, inflight = self.by_log_id, self.inflight
        known = by_log_id.get(rid)
        if known is not None:
            return known
        # The candidates in order: child prefix off, suffix off, both off.
        # Each is built only when the one before it failed (most Added lines
        # match on the second), and one equal to a candidate already tried
        # is skipped: neither dict changes in between, so the answer is the same.
        child = _CHILD_PREFIX.sub("", rid) if rid[:1].isdecimal() else rid
        if child != rid:
            known = by_log_id.get(child)
            if known is not None:
                return known
        key, _ = base_id(child)
        if key in inflight:
            return key
        bare = _INTERNAL_SUFFIX.sub("", rid)
        known = by_log_id.get(bare)
        if known is not None:
            return known
        key, _ = base_id(bare)
        if key in inflight:
            return key
        if child == rid:
            return None  # "both off" is "suffix off", tried above
        both = _INTERNAL_SUFFIX.sub("", child)
        known = by_log_id.get(both)
        if known is not None:
            return known
        key, _ = base_id(both)
        return key if key in inflight else None

    def feed(self, event: ev.Event, t: float | None) -> None:
        """File one event; ``t`` is its resolved time (epoch seconds) or None."""
        kind = event.kind
        if kind == ev.OUTPUT or kind == ev.OUTPUT_DETAILS:
            # Fast path for the bulk of a log (one line per stream delta): the
            # request is known under this id already, so only its times and
            # outputs change -- the same effects as the general path below.
            key = self.by_log_id.get(event.request_id)
            entry = self.inflight.get(key) if key is not None else None
            if entry is not None and entry["log_id"] is not None:
                self._touched.add(key)
                if t is not None:  # as _entry does
                    last = entry["last_t"]
                    if last is None or t > last:
                        entry["last_t"] = t
                        if last is None:
                            entry["first_t"] = t
                when = event.when
                if when is not None and when.year is not None:
                    entry["precise"] = True
                if kind == ev.OUTPUT:
                    self._output(entry, event.data, t)
                elif not event.data.get("stream_info"):  # a stream's details count nothing (_output_details)
                    self._output_details(entry, event.data)
                return  # no new entry: the in-flight bound still holds
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event, t)

    def _on_middleware(self, event: ev.Event, t: float | None) -> None:
        line = event.data.get("line") or {}
        key = str(line.get("request_id") or line.get("response_id") or "")
        if not key:
            return
        self.middleware_seen = True
        received = parse_ts_or_none(line.get("received_at"))
        if self._late(key, ev.MIDDLEWARE, received):
            return
        entry = self._entry(self._slot(key, "mw", received), t, key)
        entry["mw"] = line
        entry["precise"] = True
        # 0.0 when the line gives no time and none was known: the line is
        # definitive, so the request is recorded, never left waiting.
        entry["done_t"] = parse_ts_or_none(line.get("finished_at")) or t or 0.0

    def _on_engine_line(self, event: ev.Event, t: float | None) -> None:
        """The stat-logger plugin's line: engine timings under vLLM's external
        id (``chatcmpl-X`` → X). It annotates a request and never finishes
        one: a request that reached no other source is not recorded from it.
        n>1 children report under their parent's external id: their lines
        are merged (``merge_engine``)."""
        line = event.data.get("engine")
        rid = event.request_id
        if not rid or line is None:
            return
        key, _ = self._key_for(rid)
        if key in self.inflight:
            key = self.inflight[key]["key"]
        arrived = parse_ts_or_none(line.get("arrived_at"))
        if self._late(key, ev.ENGINE, arrived):
            return
        slots = [s for s in (key, *self.aliases.get(key, ())) if s in self.inflight]
        # A second line for a request that has one already is an n>1 sibling
        # (same external id), not a reused id: merge into the newest slot.
        had = [s for s in slots if self.inflight[s].get("engine") is not None]
        if had and not [s for s in slots if self.inflight[s].get("engine") is None]:
            entry = self._entry(had[-1], t, key)
        else:
            entry = self._entry(self._slot(key, "engine", arrived), t, key)
        entry["engine"] = merge_engine(entry.get("engine"), line)
        if len(self.inflight) > self.max_inflight:
            self._bound()

    def _on_engine(self, event: ev.Event, t: float | None) -> None:
        """Added / Aborted / Failed / Finished: engine-internal ids, mapped back."""
        rid, kind = event.request_id, event.kind
        if not rid:
            return
        for one in event.data.get("ids") or [rid]:
            key = self._find_internal(one)
            if key is None:
                continue
            entry = self._entry(key, t)
            if kind == ev.ABORTED:
                entry["aborted"] = True
            elif kind == ev.FAILED:
                entry["failed"] = event.data.get("reason") or "failed"
            if kind != ev.ADDED:
                entry["done_t"] = entry["done_t"] or t
                entry["log_done"] = True

    def _on_request(self, event: ev.Event, t: float | None) -> None:
        """The request logger's lines: Received, details, JSON body, Generated."""
        rid, kind = event.request_id, event.kind
        if not rid:
            return
        if kind == ev.BODY:
            key, endpoint = rid, None
        else:
            key, endpoint = self._key_for(rid)
        if key in self.recent and self._late(key, kind):
            return
        slot = key
        if kind == ev.RECEIVED or kind == ev.BODY:
            e = self.inflight.get(key)
            base = key if e is None else e["key"]
            slot = self._slot(base, "received" if kind == ev.RECEIVED else "body", t)
            key = base
        entry = self._entry(slot, t, key)
        if self.cfg is not None and "cfg" not in entry:
            entry["cfg"] = self.cfg
        if event.when is not None and event.when.year is not None:
            entry["precise"] = True
        if kind != ev.BODY and (entry["log_id"] is None or kind == ev.RECEIVED):
            entry["log_id"] = rid
            if endpoint is not None:
                entry["endpoint"] = endpoint
            self.by_log_id[rid] = slot
        if kind == ev.RECEIVED:
            entry["received"] = event.data
            entry["received_t"] = t
        elif kind == ev.DETAILS:
            entry["details"] = event.data
        elif kind == ev.BODY:
            entry["body"] = event.data.get("body")
            if entry["body"] is None and "body_closed" in event.data and (entry.get("cfg") or {}).get("body_lost_brace"):
                entry["body"] = event.data["body_closed"]  # vLLM 0.31's [:-1]: the body with its "}"
        elif kind == ev.OUTPUT:
            self._output(entry, event.data, t)
        else:
            self._output_details(entry, event.data)
        if len(self.inflight) > self.max_inflight:
            self._bound()

    def _slot(self, key: str, field: str, t: float | None) -> str:
        """Where a request-opening event for base id ``key`` goes.

        ``field`` is what the event fills (``received``, ``body``, ``mw``).
        The in-flight entries under that id that still lack it are the
        candidates: one is taken whatever the times say (as before ids were
        reused, so a server clock in the wrong zone does not split a
        request); among several, the one whose other source's receive time is
        nearest to ``t``. With none, a reused id opens a new slot. So a
        backlog read one file after the other splits into the same requests
        as when the lines are fed live."""
        inflight = self.inflight
        aliases = self.aliases.get(key)
        if not aliases:  # the usual case: at most the base slot itself
            e = inflight.get(key)
            if e is None or e.get(field) is None:
                return key
            alias = f"{key}#{self._next_order}"
            self.aliases[key] = [alias]
            return alias
        slots = [s for s in (key, *aliases) if s in inflight]
        free = [s for s in slots if inflight[s].get(field) is None]
        if len(free) == 1:
            return free[0]
        if free:
            return min(free, key=lambda s: self._distance(self.inflight[s], field, t))
        if not slots:
            return key
        alias = f"{key}#{self._next_order}"
        self.aliases.setdefault(key, []).append(alias)
        return alias

    @staticmethod
    def _distance(e: dict, field: str, t: float | None) -> float:
        """Seconds between ``t`` and the entry's receive time as the other
        source saw it; LATE_WINDOW when either is unknown."""
        if field == "mw":
            other = e["received_t"]
        elif field == "engine":  # t is the engine's arrival time: either source's receive time
            other = e["received_t"]
            if other is None and e["mw"] is not None:
                other = parse_ts_or_none(e["mw"].get("received_at"))
        else:
            other = parse_ts_or_none(e["mw"].get("received_at")) if e["mw"] is not None else None
        return LATE_WINDOW if t is None or other is None else abs(other - t)

    def _on_summary(self, event: ev.Event, t: float | None) -> None:
        """The Rust frontend's one line per finished request: it opens and ends
        the request (that frontend logs nothing when a request comes in)."""
        rid = event.request_id
        if not rid:
            return
        key, endpoint = self._key_for(rid)
        if self._late(key, ev.RECEIVED):  # like a Received line: a reused id is a new request
            return
        base = self.inflight[key]["key"] if key in self.inflight else key
        slot = self._slot(base, "summary", t)
        entry = self._entry(slot, t, base)
        if self.cfg is not None and "cfg" not in entry:
            entry["cfg"] = self.cfg
        entry["log_id"] = rid
        entry["endpoint"] = event.data.get("endpoint") or endpoint
        self.by_log_id[rid] = slot
        entry["summary"] = event.data
        entry["stream"] = event.data.get("stream")
        entry["done_t"] = entry["done_t"] or t
        entry["log_done"] = True
        if len(self.inflight) > self.max_inflight:
            self._bound()

    def _output_details(self, entry: dict, data: dict) -> None:
        ids = data.get("output_token_ids")
        # Only a non-streaming list is the whole output: a stream's deltas
        # with empty text are never logged, so summing delta lists
        # under-counts (seen on 0.32: 14 logged of 16 generated).
        if ids is not None and not data.get("stream_info"):
            n = id_count(ids)
            entry["out_ids"] = (entry["out_ids"] or 0) + n
            limit = self.limit(entry)
            if limit is not None and n >= limit:
                entry["out_ids_truncated"] = True  # a cut list is no count

    def _output(self, entry: dict, data: dict, t: float | None) -> None:
        info = data.get("stream_info") or ""
        if info == "delta":
            entry["stream"] = True
            entry["deltas"] += 1
            ids = data.get("output_token_ids")
            if ids is None:
                entry["delta_ids_known"] = False  # unknown (no list on the line)
            else:
                n = id_count(ids)
                limit = self.limit(entry)
                if limit is not None and n >= limit:
                    entry["delta_ids_known"] = False  # a list --max-log-len may have cut
                else:
                    entry["delta_ids"] += n
            reason = data.get("finish_reason")
            if reason not in (None, "None", "streaming_complete"):
                entry["last_finish"] = reason
        elif info == "complete":
            entry["stream"] = True
            entry["complete"].append(data.get("output"))
            entry["done_t"] = entry["done_t"] or t
            if len(entry["complete"]) >= _choices(entry):
                entry["log_done"] = True
        else:
            entry["stream"] = False
            ids = data.get("output_token_ids")
            entry["outputs"].append({"text": data.get("output"), "finish_reason": data.get("finish_reason"),
                                     "ids": None if ids is None else id_count(ids)})
            entry["done_t"] = entry["done_t"] or t
            if len(entry["outputs"]) >= _choices(entry):
                entry["log_done"] = True

    def limit(self, entry: dict) -> int | None:
        """``--max-log-len`` in effect for this request: the flag, else what
        vLLM's start-up line said when the request came."""
        if self.max_log_len is not None:
            return self.max_log_len
        cfg = entry.get("cfg")
        return cfg.get("max_log_len") if cfg else None

    # --------------------------------------------------------------- output
    def _bound(self) -> None:
        while len(self.inflight) > self.max_inflight:
            # Entries are inserted in arrival order and never re-inserted, so
            # the first is the oldest: O(1) (an OrderedDict, exporter.inflight),
            # where a min() over every in-flight request made a pile-up quadratic.
            oldest = self.inflight.oldest()
            self.on_evict("capacity")
            self._pending_evicted.append(self._pop(oldest.get("slot", oldest["key"])))

    def _pop(self, slot: str) -> dict:
        entry = self.inflight.pop(slot)
        self.inflight.dirty.add(slot)
        self._heaped.pop(slot, None)
        if entry.get("log_id") and self.by_log_id.get(entry["log_id"]) == slot:
            del self.by_log_id[entry["log_id"]]
        key = entry["key"]
        if key != slot:
            self.aliases[key].remove(slot)
            if not self.aliases[key]:
                del self.aliases[key]
        self.recent[key] = entry["received_t"] if entry["received_t"] is not None else entry["first_t"]
        if len(self.recent) > RECENT_MAX:
            self.recent.popitem(last=False)  # O(1): a dict's front fills with dead slots
        return entry

    def _late(self, key: str, kind: str, received: float | None = None) -> bool:
        """Is this event for a request already recorded? (Then it is dropped
        and counted.) A ``Received`` line always starts a request: an id seen
        again is a client reusing its X-Request-Id. So is a middleware line
        (or engine line) whose receive time is not the recorded request's."""
        if key not in self.recent:
            return False
        if kind != ev.MIDDLEWARE and (key in self.inflight or key in self.aliases):
            return False  # a request under this id is in flight: the line is its
        if kind == ev.RECEIVED:
            del self.recent[key]
            return False
        if kind == ev.MIDDLEWARE or kind == ev.ENGINE:
            # The engine line comes before the middleware line: for a reused
            # id it may be the first line of the next request.
            was = self.recent[key]
            if was is not None and received is not None and abs(received - was) > LATE_WINDOW:
                del self.recent[key]
                return False
        self.on_evict("late_event")
        return True

    def _wait(self, e: dict) -> float:
        """How long after its end a request waits for the other source."""
        if e["mw"] is None:
            return self.request_timeout if self.middleware_seen else self.merge_grace
        if self.eager and e.get("log_done"):
            return 0.0  # both sides are in: nothing more can come
        return self.merge_grace

    def _due_at(self, e: dict) -> float:
        """The earliest watermark at which _take records ``e`` (its state now).
        A wait only grows without a touch (middleware_seen turning true), so
        a due time computed earlier is a lower bound."""
        due = math.inf
        if e["done_t"] is not None:
            due = e["done_t"] + self._wait(e)
        if e["last_t"] is not None:
            due = min(due, e["last_t"] + self.request_timeout)
        return due

    def _take(self, slot: str, e: dict, watermark: float, out: list[dict]) -> bool:
        done = e["done_t"]
        if done is not None and watermark >= done + self._wait(e):
            out.append(self._pop(slot))
            return True
        last = e["last_t"]
        if last is not None and watermark >= last + self.request_timeout:
            self.on_evict("timeout")
            out.append(self._pop(slot))
            return True
        return False

    def _push(self, slot: str, e: dict) -> None:
        due = self._due_at(e)
        if due < self._heaped.get(slot, math.inf):
            heapq.heappush(self._due, (due, e["order"], slot))
            self._heaped[slot] = due

    def ready(self, watermark: float) -> list[dict]:
        """Entries that may be recorded now, in first-seen order."""
        out: list[dict] = []
        if self._pending_evicted:
            out.extend(self._pending_evicted)
            self._pending_evicted = []
        for slot in self._touched:
            e = self.inflight.get(slot)
            if e is not None:
                self._push(slot, e)
        self.inflight.mark(self._touched)  # what the next checkpoint journals
        self._touched = set()
        heap = self._due
        while heap and heap[0][0] <= watermark:
            _due, order, slot = heapq.heappop(heap)
            e = self.inflight.get(slot)
            if e is None or e["order"] != order:
                continue  # recorded already (a stale bound), or the slot holds a newer request
            if self._heaped.get(slot) == _due:
                del self._heaped[slot]
            if not self._take(slot, e, watermark, out):
                self._push(slot, e)  # its wait grew since: file it under its due time now
        out.sort(key=lambda e: e["order"])
        return out

    def drain(self) -> list[dict]:
        """Everything still held (end of a replay)."""
        return self.ready(math.inf)


def _choices(entry: dict) -> int:
    """Choices vLLM logs for this request (``n`` of its SamplingParams; 1 if unknown)."""
    n = ((entry["received"] or {}).get("params") or {}).get("n")
    return n if isinstance(n, int) and n > 0 else 1


_ENGINE_SUMS = ("share_seconds", "cached_tokens", "preemptions", "generation_tokens")
_ENGINE_MAX = ("queue_seconds", "prefill_seconds", "decode_seconds", "inference_seconds", "e2e_seconds")


def merge_engine(have: dict | None, line: dict) -> dict:
    """One request's engine data from its lines: the first as it is; for
    n>1 siblings, what each used adds up (share, cached tokens, preemptions,
    generated tokens) and the request's times are the longest sibling's.
    A value unknown in any line is unknown in the sum."""
    if have is None:
        return dict(line, lines=1)
    out = dict(have, lines=have.get("lines", 1) + 1)
    for k in _ENGINE_SUMS:
        a, b = have.get(k), line.get(k)
        out[k] = None if a is None or b is None else a + b
    for k in _ENGINE_MAX:
        a, b = have.get(k), line.get(k)
        out[k] = None if a is None or b is None else max(a, b)
    return out


# Event kind -> Correlator method (feed's dispatch; OUTPUT lines of a known
# request take feed's fast path first).
_HANDLERS = {
    ev.MIDDLEWARE: Correlator._on_middleware,
    ev.SUMMARY: Correlator._on_summary,
    ev.ENGINE: Correlator._on_engine_line,
    **dict.fromkeys((ev.ADDED, ev.ABORTED, ev.FAILED, ev.FINISHED), Correlator._on_engine),
    **dict.fromkeys((ev.RECEIVED, ev.DETAILS, ev.BODY, ev.OUTPUT, ev.OUTPUT_DETAILS), Correlator._on_request),
}
