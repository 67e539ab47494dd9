"""RequestMetrics.observe's fast path (the memo of label heads, the inlined
histogram updates) counts as the plain per-record code does: the same
snapshot and the same /metrics text after any mix of records, restores,
changes of the served models and odd values."""

from __future__ import annotations

import json
import math
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.labels import ServedModels, UserLabels
from exporter.metrics import _INF, _NUMERIC, RequestMetrics


class PlainMetrics(RequestMetrics):
    """observe() as it was before the fast path: every label looked up on
    every record, histograms through _Histogram.observe."""

    def observe(self, rec: dict) -> None:
        dims = self.dims
        served = self.served
        model = dims["model"].label(rec.get("model") if served is None else served.fold(rec.get("model")))
        user = self.users.label(rec.get("user"))
        endpoint = dims["endpoint"].label(rec.get("endpoint"))
        status = rec.get("status")
        mu = (model, user) if self._with_user else (model,)
        served = status != "rejected"
        with self._lock:
            c = self._c_requests
            key = mu + (endpoint, dims["status"].label(status),
                        dims["finish_reason"].label(rec.get("finish_reason")))
            c[key] = c.get(key, 0.0) + 1.0
            pt = rec.get("prompt_tokens")
            if pt.__class__ in _NUMERIC and 0 <= pt < _INF:
                if served:
                    c = self._c_prompt
                    c[mu] = c.get(mu, 0.0) + pt
                    self._h_prompt.observe((model,), pt)
                if pt > self.oversized_input_tokens:
                    c = self._c_oversized
                    k = mu + ("accepted" if served else "rejected",)
                    c[k] = c.get(k, 0.0) + 1.0
            ct = rec.get("completion_tokens")
            if served and ct.__class__ in _NUMERIC and 0 <= ct < _INF:
                c = self._c_completion
                c[mu] = c.get(mu, 0.0) + ct
                self._h_completion.observe((model,), ct)
            lat = rec.get("latency_seconds")
            if lat.__class__ in _NUMERIC and lat < _INF and lat == lat:
                lat = lat if lat > 0 else 0.0
                c = self._c_user_duration
                c[mu] = c.get(mu, 0.0) + lat
                c = self._c_user_timed
                c[mu] = c.get(mu, 0) + 1
                self._h_duration.observe((model, endpoint), lat)
            ttft = rec.get("ttft_seconds")
            if ttft.__class__ in _NUMERIC and ttft < _INF and ttft == ttft:
                self._h_ttft.observe((model,), ttft if ttft > 0 else 0.0)
            empty = rec.get("empty_response")
            if empty is True:
                c = self._c_empty
                c[mu] = c.get(mu, 0.0) + 1.0
            if status == "completed" and empty is not None:
                g = self._g_consecutive
                g[(model,)] = g.get((model,), 0.0) + 1.0 if empty is True else 0.0
            c = self._c_source
            k = (model, dims["source"].label(rec.get("identity_source") or "none"))
            c[k] = c.get(k, 0.0) + 1.0
            ident = rec.get("identity")
            reason = ident.get("invalid_reason") if isinstance(ident, dict) else None
            if reason is not None:
                c = self._c_invalid
                k = (model, dims["reason"].label(reason))
                c[k] = c.get(k, 0.0) + 1.0
            engine = rec.get("engine")
            if engine is not None:
                self._observe_engine(rec, engine, model, mu)
            flags = rec.get("flags")
            if flags:
                c = self._c_flags
                label = dims["flag"].label
                for flag in (flags if len(flags) == 1 else dict.fromkeys(flags)):
                    k = (model, label(flag))
                    c[k] = c.get(k, 0.0) + 1.0


MODELS = ["tiny", "big", "bob@example.com", None, "", 7, True, 1.0, ["odd"], "m" * 140, "bad\udc80"]
NUMBERS = [0, 1, 3, 2049, 5000, 0.5, -1, -0.0, math.nan, math.inf, True, None, "12", 1e6]


def _record(rng: random.Random, models: list) -> dict:
    pick = rng.choice
    return {
        "model": pick(models), "user": pick([f"user{rng.randrange(30)}", f"p{rng.randrange(5)}@example.com",
                                             None, "", "u:0123456789abcdef", ["odd"], 3]),
        "endpoint": pick(["chat", "completion", None, 1, ["odd"]]),
        "status": pick(["completed", "completed", "rejected", "aborted", "incomplete", None, 0]),
        "finish_reason": pick(["stop", "length", None, "abort", False]),
        "identity_source": pick(["user_field", "header", None, "", 0, "x" * 30]),
        "identity": pick([None, {"invalid_reason": pick(["expired", "bad_signature", None, 4])}, "junk"]),
        "prompt_tokens": pick(NUMBERS), "completion_tokens": pick(NUMBERS),
        "latency_seconds": pick(NUMBERS), "ttft_seconds": pick(NUMBERS),
        "empty_response": pick([True, False, None, 1]),
        "engine": pick([None, "junk", {"share_seconds": pick(NUMBERS), "devices": pick([1, 2, None]),
                                       "queue_seconds": pick(NUMBERS), "prefill_seconds": pick(NUMBERS),
                                       "decode_seconds": pick(NUMBERS)}]),
        "flags": pick([[], ["pii"], ["pii", "pii", "oversized"], [f"f{rng.randrange(200)}"]]),
    }


def _pair(with_user: bool, max_models: int, max_users: int):
    out = []
    for cls in (RequestMetrics, PlainMetrics):
        registry = CollectorRegistry()
        users = UserLabels(max_users, enabled=with_user, key=b"k")
        out.append((cls(registry, users=users, max_models=max_models, oversized_input_tokens=2048), registry))
    return out


def _same(fast, plain) -> None:
    (m, reg), (p, preg) = fast, plain
    assert json.dumps(m.snapshot()) == json.dumps(p.snapshot())
    assert generate_latest(reg) == generate_latest(preg)


@pytest.mark.parametrize("with_user", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_same_snapshot_and_exposition_as_the_plain_observe(with_user, seed):
    rng = random.Random(seed)
    fast, plain = _pair(with_user, max_models=rng.choice([0, 1, 3, 100]), max_users=rng.choice([0, 2, 10, 500]))
    served = ServedModels(rng.choice([None, "tiny"]))
    for i in range(8):
        if rng.random() < 0.5:
            # The pipeline learns the served names from a start-up line: the
            # model label folds differently from the next record on.
            served.learn("vllm", rng.choice([None, ["tiny"], ["big", "tiny"], ["m" * 140]]))
            fast[0].served = plain[0].served = served
        # ServedModels.fold cannot take an unhashable name (records carry str
        # or None there); the memo's unhashable path is tested without it.
        models = MODELS if fast[0].served is None or served.names is None else \
            [v for v in MODELS if not isinstance(v, list)]
        records = [_record(rng, models) for _ in range(300)]
        for r in records:
            fast[0].observe(r)
            plain[0].observe(r)
        _same(fast, plain)
        if rng.random() < 0.3:
            snap = json.loads(json.dumps(rng.choice([fast, plain])[0].snapshot()))
            if rng.random() < 0.5:
                snap["labels"]["model"] = ["bob@example.com", "big"]  # another build's bounds
            for m, _ in (fast, plain):
                m.users.restore(snap["labels"]["user"])
                m.restore(snap)
            _same(fast, plain)


def test_the_head_memo_stays_bounded():
    (m, _), _ = _pair(True, max_models=100, max_users=10)
    for i in range(10_000):
        m.observe({"model": f"m{i}", "user": "alice", "endpoint": "chat", "status": "completed"})
    from exporter.metrics import _HEADS_MAX
    assert len(m._heads) <= _HEADS_MAX
