"""Per-request metrics, derived from audit records, with snapshot/restore.

``RequestMetrics`` keeps its own plain-Python store (dicts of label tuples to
numbers; histograms as per-bucket count lists found with ``bisect``) and
exposes it through a custom collector on the registry it is given. Two
reasons for not using prometheus_client's Counter/Histogram here:

- ``observe(record)`` runs once per request on the pipeline thread and
  touches up to a dozen series; plain dict updates are several times cheaper
  than ``Counter.labels(...).inc()`` (``bench/metrics_bench.py``);
- the whole store must round-trip through the checkpoint (``snapshot()`` /
  ``restore()``), so counters continue across restarts without resetting or
  double counting the records re-derived after a crash. The label bounds
  (which users/models own a series) are part of the snapshot for the same
  reason.

Sample exposition::

    # HELP vllm_audit_requests_total Requests seen in the vLLM request log, by outcome.
    # TYPE vllm_audit_requests_total counter
    vllm_audit_requests_total{endpoint="chat",finish_reason="stop",model="tiny",status="completed",user="alice"} 3.0
    # HELP vllm_audit_request_duration_seconds Request latency, received to finished.
    # TYPE vllm_audit_request_duration_seconds histogram
    vllm_audit_request_duration_seconds_bucket{endpoint="chat",le="0.05",model="tiny"} 0.0
    ...
    vllm_audit_request_duration_seconds_bucket{endpoint="chat",le="+Inf",model="tiny"} 3.0
    vllm_audit_request_duration_seconds_count{endpoint="chat",model="tiny"} 3.0
    vllm_audit_request_duration_seconds_sum{endpoint="chat",model="tiny"} 1.5

Every family is exposed (HELP/TYPE) even before the first record; no series
is pre-created per user (it would be pure cardinality).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter import accel
from exporter.cost import Pricing, engine_seconds
from exporter.labels import OTHER, BoundedLabels, ServedModels, UserLabels
from exporter.record import MAX_MEASURE

SNAPSHOT_VERSION = 1

# Token counts: 1-2-5 series like vLLM's own request_prompt_tokens buckets, so
# the two can be compared, but fixed up to 200k (the largest context windows
# in use) instead of max_model_len, which the exporter does not know.
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                 20000, 50000, 100000, 200000)
# End-to-end latency: chat requests range from tens of milliseconds (cached,
# short) to many minutes (long generations on CPU); vLLM's own e2e buckets
# start at 0.3 s, which hides the fast path. 600 s covers the usual proxy
# timeouts; anything longer lands in +Inf and still counts in _sum.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Time to first token: interactive SLOs sit between 0.1 and 2 s, so spend
# resolution there; 60 s is already an outage.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Engine phases (the stat-logger plugin's timings): queueing and prefill are
# milliseconds when the server keeps up and tens of seconds when it does not.
ENGINE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Bounds for label dimensions that come from clients or the model. The
# values normally form a small fixed set, but a client can send any model
# name (vLLM rejects it, the middleware still records it) and each bad value
# would otherwise become a series.
LABEL_LIMITS = {"model": 100, "endpoint": 16, "status": 16, "finish_reason": 32, "flag": 128,
                "source": 8, "reason": 16}

# Memo of distinct (model, endpoint, status, finish_reason, identity_source)
# raw values (RequestMetrics._head): a handful in practice, bounded because
# a client chooses the model name.
_HEADS_MAX = 4096
_NUMERIC = (int, float)  # exact classes: bool is not a count
_INF = float("inf")
_MAX = float(MAX_MEASURE)  # ``v <= _MAX`` also excludes inf and NaN

# name -> (help, label names with "user" where it applies)
_COUNTERS = {
    "vllm_audit_requests_total": (
        "Requests seen in the vLLM request log, by outcome.",
        ("model", "user", "endpoint", "status", "finish_reason")),
    "vllm_audit_prompt_tokens_total": (
        "Prompt tokens of served (not rejected) requests.", ("model", "user")),
    "vllm_audit_completion_tokens_total": (
        "Completion tokens of served requests, summed over choices.", ("model", "user")),
    "vllm_audit_user_request_duration_seconds_total": (
        "Sum of request latencies, per user.", ("model", "user")),
    # The denominator of the per-user mean latency: requests_total also counts
    # records whose latency is unknown (null), which would make the mean read low.
    "vllm_audit_user_timed_requests_total": (
        "Requests with a known latency, per user (they make up the duration sum).", ("model", "user")),
    "vllm_audit_empty_responses_total": (
        "Requests that returned no output text.", ("model", "user")),
    "vllm_audit_oversized_inputs_total": (
        "Requests whose prompt exceeded the oversized-input token threshold.",
        ("model", "user", "status")),
    "vllm_audit_flags_total": (
        "Detector and data-quality flags raised on records.", ("model", "flag")),
    # How far each request's user can be trusted (record.identity_source;
    # "none" = no user): the share of unverified identity at a glance.
    "vllm_audit_identity_source_requests_total": (
        "Requests by how their user was established (identity_source, none when unknown).",
        ("model", "source")),
    "vllm_audit_identity_invalid_total": (
        "Requests whose Open WebUI identity token was missing or refused, by reason.",
        ("model", "reason")),
    # From the record's engine object (the stat-logger plugin): each request's
    # share of the engine's busy time, so per-user sums add up to busy time.
    "vllm_audit_engine_seconds_total": (
        "Requests' shares of engine busy time (each engine step split equally among its batch).",
        ("model", "user")),
    "vllm_audit_engine_requests_total": (
        "Requests with a known engine share (they make up the engine seconds).", ("model", "user")),
    "vllm_audit_cost_total": (
        "Cost of requests: engine share x the engine's GPUs x --gpu-hour-price / 3600.",
        ("model", "user")),
}
_GAUGES = {
    "vllm_audit_consecutive_empty_responses": (
        "Completed requests in a row, per model, that returned no output text.", ("model",)),
}
_HISTOGRAMS = {
    "vllm_audit_request_prompt_tokens": (
        "Prompt tokens per served request.", ("model",), TOKEN_BUCKETS),
    "vllm_audit_request_completion_tokens": (
        "Completion tokens per served request.", ("model",), TOKEN_BUCKETS),
    "vllm_audit_request_duration_seconds": (
        "Request latency, received to finished.", ("model", "endpoint"), LATENCY_BUCKETS),
    "vllm_audit_time_to_first_token_seconds": (
        "Time to first token of streamed requests.", ("model",), TTFT_BUCKETS),
    "vllm_audit_engine_queue_seconds": (
        "Time requests waited in vLLM's queue before first scheduled (engine measurement).",
        ("model",), ENGINE_BUCKETS),
    "vllm_audit_engine_prefill_seconds": (
        "Prefill time of requests, first scheduled to first token (engine measurement).",
        ("model",), ENGINE_BUCKETS),
    "vllm_audit_engine_decode_seconds": (
        "Decode time of requests, first to last token (engine measurement).",
        ("model",), LATENCY_BUCKETS),
}


def _distinct(values: list) -> list:
    """``dict.fromkeys(values)`` where some values are unhashable (lists from
    a damaged archive line): those compare by repr. Linear, however long."""
    seen: dict = {}
    for v in values:
        try:
            key = (0, v)
            hash(key)
        except TypeError:
            key = (1, repr(v))
        seen.setdefault(key, v)
    return list(seen.values())


class _Histogram:
    """Label tuple -> [count per bucket..., count in +Inf, sum]."""

    __slots__ = ("bounds", "series", "_width")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[tuple, list] = {}
        self._width = len(self.bounds) + 1

    def observe(self, key: tuple, value: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0] * self._width + [0.0]
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value


class RequestMetrics:
    """Request metrics store; ``observe(record)`` once per finished record."""

    def __init__(self, registry: CollectorRegistry, *, users: UserLabels,
                 oversized_input_tokens: int = 2048, max_models: int = LABEL_LIMITS["model"],
                 pricing: Pricing | None = None):
        self.users = users
        self.pricing = pricing or Pricing()
        # labels.ServedModels or None: names vLLM does not serve fold to __other__
        self.served = None
        self.oversized_input_tokens = oversized_input_tokens
        limits = dict(LABEL_LIMITS, model=max_models)
        self.dims: dict[str, BoundedLabels] = {d: BoundedLabels(n) for d, n in limits.items()}
        self.dims["user"] = users
        self._with_user = users.enabled
        self._lock = threading.Lock()
        self._clear()
        registry.register(_Collector(self))

    def label_names(self, family: str) -> tuple[str, ...]:
        spec = _COUNTERS.get(family) or _GAUGES.get(family) or _HISTOGRAMS[family]
        return tuple(n for n in spec[1] if self._with_user or n != "user")

    def _clear(self) -> None:
        self._counters: dict[str, dict[tuple, float]] = {n: {} for n in _COUNTERS}
        self._gauges: dict[str, dict[tuple, float]] = {n: {} for n in _GAUGES}
        self._hists = {n: _Histogram(spec[2]) for n, spec in _HISTOGRAMS.items()}
        # Raw label values -> labels and keys (_head); emptied with the store,
        # as restore() replaces the label bounds it was derived from.
        self._heads: dict[tuple, tuple] = {}
        c, h = self._counters, self._hists
        # Bound once: attribute and dict lookups are a visible share of the
        # per-record cost.
        self._c_requests = c["vllm_audit_requests_total"]
        self._c_prompt = c["vllm_audit_prompt_tokens_total"]
        self._c_completion = c["vllm_audit_completion_tokens_total"]
        self._c_user_duration = c["vllm_audit_user_request_duration_seconds_total"]
        self._c_user_timed = c["vllm_audit_user_timed_requests_total"]
        self._c_empty = c["vllm_audit_empty_responses_total"]
        self._c_oversized = c["vllm_audit_oversized_inputs_total"]
        self._c_flags = c["vllm_audit_flags_total"]
        self._c_source = c["vllm_audit_identity_source_requests_total"]
        self._c_invalid = c["vllm_audit_identity_invalid_total"]
        self._g_consecutive = self._gauges["vllm_audit_consecutive_empty_responses"]
        self._h_prompt = h["vllm_audit_request_prompt_tokens"]
        self._h_completion = h["vllm_audit_request_completion_tokens"]
        self._h_duration = h["vllm_audit_request_duration_seconds"]
        self._h_ttft = h["vllm_audit_time_to_first_token_seconds"]
        self._c_engine = c["vllm_audit_engine_seconds_total"]
        self._c_engine_requests = c["vllm_audit_engine_requests_total"]
        self._c_cost = c["vllm_audit_cost_total"]
        self._h_engine = [(k, h[name]) for k, name in (
            ("queue_seconds", "vllm_audit_engine_queue_seconds"),
            ("prefill_seconds", "vllm_audit_engine_prefill_seconds"),
            ("decode_seconds", "vllm_audit_engine_decode_seconds"))]
        self._state = self._fast_state()

    def _fast_state(self) -> tuple | None:
        """What the C observe (exporter/_observe.c) updates, in its order;
        None when a label dimension's label() is not BoundedLabels' own (the
        C reads that method's memos)."""
        dims = (self.users, self.dims["flag"], self.dims["reason"])
        if any(type(d).label is not BoundedLabels.label for d in dims):
            return None
        hist = self._hists
        return (self, self._heads, *dims, self._lock.acquire, self._lock.release, bool(self._with_user),
                self._c_requests, self._c_prompt, self._c_completion, self._c_user_duration,
                self._c_user_timed, self._c_empty, self._c_oversized, self._c_flags, self._c_source,
                self._c_invalid, self._g_consecutive,
                *(x for n in ("vllm_audit_request_prompt_tokens", "vllm_audit_request_completion_tokens",
                              "vllm_audit_request_duration_seconds", "vllm_audit_time_to_first_token_seconds")
                  for x in (hist[n].series, hist[n].bounds)))

    def observe(self, rec: dict) -> None:
        """Count one record (a dict with the ``record.RECORD_FIELDS`` keys).

        Values that are missing or not usable numbers are skipped for the
        metric that needs them; they never raise, so one odd record cannot
        stop the pipeline. The C module counts the common case (every label
        already memoised) and declines the rest to :meth:`py_observe`.
        """
        state = self._state
        if _C is not None and state is not None and _C.observe(state, rec) is not None:
            return
        self.py_observe(rec)

    def py_observe(self, rec: dict) -> None:
        """observe() in pure Python: the reference of exporter/_observe.c."""
        served = self.served
        model = rec.get("model")
        if served is not None:
            model = served.fold(model)
        status = rec.get("status")
        raw = (model, rec.get("endpoint"), status, rec.get("finish_reason"), rec.get("identity_source") or "none")
        try:
            head = self._heads.get(raw)
        except TypeError:  # an unhashable raw value (a list from bad JSON)
            head = None
        if head is None:
            head = self._head(raw)
        model, endpoint, m1, request_tail, source_key = head
        user = self.users.label(rec.get("user"))
        mu = (model, user) if self._with_user else m1
        served = status != "rejected"
        with self._lock:
            c = self._c_requests
            key = mu + request_tail
            c[key] = c.get(key, 0.0) + 1.0

            pt = rec.get("prompt_tokens")
            if pt.__class__ in _NUMERIC and 0 <= pt < _INF:
                # A rejected record's prompt_tokens (from the middleware) was
                # never processed: it counts as oversized below, not as usage,
                # so these counters stay comparable with vllm:prompt_tokens.
                if served and pt <= _MAX:
                    c = self._c_prompt
                    c[mu] = c.get(mu, 0.0) + pt
                    # _Histogram.observe, inlined (as below): the call is a
                    # visible share of this method.
                    h = self._h_prompt
                    row = h.series.get(m1)
                    if row is None:
                        row = h.series[m1] = [0] * h._width + [0.0]
                    row[bisect_left(h.bounds, pt)] += 1
                    row[-1] += pt
                if pt > self.oversized_input_tokens:
                    c = self._c_oversized
                    k = mu + ("accepted" if served else "rejected",)
                    c[k] = c.get(k, 0.0) + 1.0

            ct = rec.get("completion_tokens")
            if served and ct.__class__ in _NUMERIC and 0 <= ct <= _MAX:
                c = self._c_completion
                c[mu] = c.get(mu, 0.0) + ct
                h = self._h_completion
                row = h.series.get(m1)
                if row is None:
                    row = h.series[m1] = [0] * h._width + [0.0]
                row[bisect_left(h.bounds, ct)] += 1
                row[-1] += ct

            lat = rec.get("latency_seconds")
            if lat.__class__ in _NUMERIC and -_MAX <= lat <= _MAX:  # NaN compares False
                # Clock skew between log lines can make received > finished;
                # clamp, as a negative duration would corrupt _sum.
                lat = lat if lat > 0 else 0.0
                c = self._c_user_duration
                c[mu] = c.get(mu, 0.0) + lat
                c = self._c_user_timed
                c[mu] = c.get(mu, 0) + 1
                self._h_duration.observe((model, endpoint), lat)

            ttft = rec.get("ttft_seconds")
            if ttft.__class__ in _NUMERIC and -_MAX <= ttft <= _MAX:
                self._h_ttft.observe(m1, ttft if ttft > 0 else 0.0)

            empty = rec.get("empty_response")
            if empty is True:
                c = self._c_empty
                c[mu] = c.get(mu, 0.0) + 1.0
            if status == "completed" and empty is not None:
                # None (unknown) leaves the streak alone: it is neither
                # evidence of a broken model nor of a healthy one.
                g = self._g_consecutive
                g[m1] = g.get(m1, 0.0) + 1.0 if empty is True else 0.0

            c = self._c_source
            c[source_key] = c.get(source_key, 0.0) + 1.0
            ident = rec.get("identity")
            reason = ident.get("invalid_reason") if isinstance(ident, dict) else None
            if reason is not None:
                c = self._c_invalid
                k = (model, self.dims["reason"].label(reason))
                c[k] = c.get(k, 0.0) + 1.0
            engine = rec.get("engine")
            if engine is not None:
                self._observe_engine(rec, engine, model, mu)

            flags = rec.get("flags")
            if flags and flags.__class__ is list:  # not a list: a damaged archive line at rebuild
                c = self._c_flags
                label = self.dims["flag"].label
                if len(flags) == 1:
                    distinct = flags
                else:
                    try:
                        distinct = dict.fromkeys(flags)
                    except TypeError:  # an unhashable flag (a damaged archive line)
                        distinct = _distinct(flags)
                for flag in distinct:
                    k = (model, label(flag))
                    c[k] = c.get(k, 0.0) + 1.0

    def _head(self, raw: tuple) -> tuple:
        """The labels of a record's (model, endpoint, status, finish_reason,
        identity_source) and the keys built from them, remembered for ``raw``.

        A label, once given, never changes until that dimension is restored
        (admission only grows the set, up to the limit; _clear() empties this
        memo), so the memo answers as the dimensions would. Only all-str (or
        None) tuples are kept: other raw values can be equal as keys while
        cleaning to different labels (1 and True).
        """
        dims = self.dims
        model = dims["model"].label(raw[0])
        endpoint = dims["endpoint"].label(raw[1])
        head = (model, endpoint, (model,),
                (endpoint, dims["status"].label(raw[2]), dims["finish_reason"].label(raw[3])),
                (model, dims["source"].label(raw[4])))
        if all(v is None or v.__class__ is str for v in raw):
            heads = self._heads
            if len(heads) >= _HEADS_MAX:  # many odd values: start again rather than grow
                heads.clear()
            heads[raw] = head
        return head

    def _observe_engine(self, rec: dict, engine, model: str, mu: tuple) -> None:
        """Engine share, cost and phase histograms (under the lock)."""
        if not isinstance(engine, dict):
            return
        share = engine_seconds(rec)
        if share is not None:
            c = self._c_engine
            c[mu] = c.get(mu, 0.0) + share
            c = self._c_engine_requests
            c[mu] = c.get(mu, 0.0) + 1.0
            cost = self.pricing.cost(rec)
            if cost is not None and cost <= _MAX:  # a price far beyond any real one
                c = self._c_cost
                c[mu] = c.get(mu, 0.0) + cost
        for key, hist in self._h_engine:
            v = engine.get(key)
            if v.__class__ in _NUMERIC and 0 <= v <= _MAX:
                hist.observe((model,), v)

    # -- checkpoint -------------------------------------------------------

    def snapshot(self) -> dict:
        """JSON-serialisable copy of the whole store and the label bounds."""
        with self._lock:
            return {
                "v": SNAPSHOT_VERSION,
                "labels": {d: b.state() for d, b in self.dims.items()},
                "counters": {n: self._rows(n, s) for n, s in self._counters.items()},
                "gauges": {n: self._rows(n, s) for n, s in self._gauges.items()},
                "histograms": {n: {"labels": list(self.label_names(n)),
                                   "buckets": list(h.bounds),
                                   # [*label values, [count per bucket incl. +Inf], sum]
                                   "series": [[*k, v[:-1], v[-1]] for k, v in h.series.items()]}
                               for n, h in self._hists.items()},
            }

    def _rows(self, name: str, series: dict) -> dict:
        return {"labels": list(self.label_names(name)),
                "series": [[*k, v] for k, v in series.items()]}

    def restore(self, snapshot: dict) -> None:
        """Replace the store with ``snapshot`` (call before the first observe).

        Tolerates a changed configuration: a label that no longer exists is
        summed away (``--no-user-label`` after running with users), a new one
        gets ``__other__``; changed histogram buckets are mapped onto the first
        new bucket whose bound is >= the old one (counts and sums stay exact,
        bucket placement is exact whenever the new bounds include the old).
        """
        version = snapshot.get("v") if isinstance(snapshot, dict) else None
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported metrics snapshot version {version!r} "
                             f"(this build reads {SNAPSHOT_VERSION})")
        before = self.snapshot()
        try:
            self._restore(snapshot)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # All or nothing: a damaged snapshot leaves the store as it was, so
            # the caller can decide (start from zero, or refuse to start).
            self._restore(before)
            raise ValueError(f"damaged metrics snapshot: {type(exc).__name__}: {exc}") from exc

    def _restore(self, snapshot: dict) -> None:
        with self._lock:
            for dim, state in snapshot.get("labels", {}).items():
                if dim in self.dims:
                    self.dims[dim].restore(state)
            self._clear()
            for kind, store in (("counters", self._counters), ("gauges", self._gauges)):
                for name, fam in snapshot.get(kind, {}).items():
                    if name not in store:
                        continue  # family retired since the snapshot
                    target, keys = store[name], self._remap(name, fam)
                    for key, row in zip(keys, fam["series"]):
                        target[key] = target.get(key, 0.0) + float(row[-1])
            for name, fam in snapshot.get("histograms", {}).items():
                if name not in self._hists:
                    continue
                hist = self._hists[name]
                old_bounds = [float(b) for b in fam["buckets"]] + [_INF]
                where = [bisect_left(hist.bounds, b) for b in old_bounds]
                for key, row in zip(self._remap(name, fam), fam["series"]):
                    counts, total = row[-2], float(row[-1])
                    dest = hist.series.setdefault(key, [0] * hist._width + [0.0])
                    for i, n in enumerate(counts):
                        dest[where[i]] += int(n)
                    dest[-1] += total

    def _remap(self, name: str, fam: dict) -> list[tuple]:
        old, new = fam["labels"], self.label_names(name)
        width = len(old)
        # A stored label value goes through today's label rules, so a raw
        # e-mail saved by an older build or under --user-label-mode raw is
        # not exposed again (its counts merge into the pseudonym's series).
        relabel = [self.dims[n].relabel if n in self.dims else None for n in new]
        keys = []
        for row in fam["series"]:
            values = dict(zip(old, row[:width]))
            keys.append(tuple(OTHER if n not in values else f(values[n]) if f and isinstance(values[n], str)
                              else values[n] for n, f in zip(new, relabel)))
        return keys

    # -- exposition -------------------------------------------------------

    def families(self) -> Iterable[Metric]:
        with self._lock:
            counters = {n: list(s.items()) for n, s in self._counters.items()}
            gauges = {n: list(s.items()) for n, s in self._gauges.items()}
            hists = {n: [(k, list(v)) for k, v in h.series.items()] for n, h in self._hists.items()}
        for name, items in counters.items():
            fam = CounterMetricFamily(name, _COUNTERS[name][0], labels=self.label_names(name))
            for key, value in items:
                fam.add_metric(key, value)
            yield fam
        for name, items in gauges.items():
            fam = GaugeMetricFamily(name, _GAUGES[name][0], labels=self.label_names(name))
            for key, value in items:
                fam.add_metric(key, value)
            yield fam
        for name, items in hists.items():
            fam = HistogramMetricFamily(name, _HISTOGRAMS[name][0], labels=self.label_names(name))
            les = [floatToGoString(b) for b in self._hists[name].bounds] + ["+Inf"]
            for key, row in items:
                cumulative, buckets = 0, []
                for le, n in zip(les, row):
                    cumulative += n
                    buckets.append((le, cumulative))
                fam.add_metric(key, buckets, row[-1])
            yield fam


# -- the C accelerator (exporter/_observe.c) -----------------------------------


def _load():
    module = accel.load("exporter._observe", [Path(__file__).with_name("_observe.c")])
    if module is not None:
        module.configure(ServedModels, OTHER)
    return module


_C = None
IMPLEMENTATION = "python"
set_enabled = accel.switch(globals(), _load)
set_enabled(True)


class _Collector(Collector):
    def __init__(self, store: RequestMetrics):
        self._store = store

    def collect(self) -> Iterable[Metric]:
        return self._store.families()

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering twice fails loudly (duplicate timeseries)
        # without running collect() at registration time.
        for name, (doc, _) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc)
        for name, (doc, _) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc)
        for name, (doc, _, _) in _HISTOGRAMS.items():
            yield HistogramMetricFamily(name, doc)
