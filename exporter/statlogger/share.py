"""Each request's share of the engine's busy time (stdlib only, pure).

An engine step serves a batch of requests at once, so a request's own
``inference_time`` (first scheduled → last token) overstates what it used:
ten requests decoding together for one second each show 10 s of inference
time for 1 s of engine time. Here every step's duration is split equally
among the requests in that step's batch, which is processor sharing:

    C(t) = ∫ dt / B(t)        (B: requests in the batch at time t)
    share(request) = C(end) - C(start)

``C`` is a "per-request clock" that advances at 1/B. It is kept as a
piecewise-linear function: one sample per change of the batch size (not per
step), bounded by ``max_samples`` (the oldest half is dropped when full);
``share`` interpolates it. The shares of
all requests add up to the time the engine was busy, since at every instant
the B requests in the batch each accrue 1/B.

Rules:
- ``step(now, batch)`` is called once per engine step reported to the stat
  logger, ``batch`` requests having been served since the previous call
  (``None``: not known, e.g. the scheduler's statistics went to another API
  server); the segment from the previous call to ``now`` runs at ``1/batch``
  (0 when idle).
- ``share(start, end)`` is ``None`` (unknown, never a guess) when the
  interval starts before the oldest sample kept, or overlaps a segment whose
  batch size was unknown.
- Times are one monotonic clock (``time.monotonic``); vLLM's durations are
  measured on the same system clock in the engine process.
"""

from __future__ import annotations

from bisect import bisect_right


class ShareClock:
    def __init__(self, max_samples: int = 50_000) -> None:
        # Sample points (t, C(t)) in three parallel lists, oldest first, and the
        # rate of the segment ending at each: lists, not a deque, so bisect is
        # O(log n) (indexing a deque's middle is O(n)); trimmed by halves.
        self.max_samples = max_samples
        self.ts: list[float] = []
        self.cs: list[float] = []
        self.rates: list[float] = []
        self.last_t: float | None = None
        self.c = 0.0
        self.unknown_until: float | None = None  # end of the last segment of unknown batch size

    @property
    def samples(self) -> list[tuple]:
        return list(zip(self.ts, self.cs, self.rates))

    def step(self, now: float, batch: int | None) -> None:
        if self.last_t is None:
            self.last_t = now
        now = max(now, self.last_t)  # a clock that went back credits nothing
        if batch is None:
            # Unknown batch size: the segment credits nothing, and any
            # interval that overlaps it gets no share.
            rate = 0.0
            self.unknown_until = now
        else:
            rate = 1.0 / batch if batch > 0 else 0.0
        self.c += (now - self.last_t) * rate
        self.last_t = now
        # Same rate as the segment before: the points are collinear, so the
        # last one moves forward (one sample per change of batch size).
        if len(self.ts) >= 2 and self.rates[-1] == rate:
            self.ts[-1], self.cs[-1] = now, self.c
            return
        self.ts.append(now)
        self.cs.append(self.c)
        self.rates.append(rate)
        if len(self.ts) > self.max_samples:
            cut = len(self.ts) - self.max_samples // 2
            del self.ts[:cut], self.cs[:cut], self.rates[:cut]

    def at(self, t: float) -> float | None:
        """C(t) by linear interpolation; None before the first sample kept."""
        ts = self.ts
        if not ts or t < ts[0]:
            return None
        if t >= ts[-1]:
            return self.cs[-1]  # after the last report nothing was credited yet
        i = bisect_right(ts, t)
        t0, t1 = ts[i - 1], ts[i]
        c0, c1 = self.cs[i - 1], self.cs[i]
        if t1 <= t0:
            return c1
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0)

    def share(self, start: float, end: float) -> float | None:
        if end < start:
            return None
        if self.unknown_until is not None and start < self.unknown_until:
            return None
        a, b = self.at(start), self.at(end)
        if a is None or b is None:
            return None
        return max(0.0, b - a)
