"""The replay summary: requests, tokens per user, latency percentiles,
empty and oversized counts. Pure accumulation; ``render`` returns text."""

from __future__ import annotations

from collections import Counter, defaultdict


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every reported value was seen)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100)
    return ordered[int(rank) - 1]


class Summary:
    def __init__(self) -> None:
        self.requests = 0
        self.by_status: Counter = Counter()
        self.by_model: Counter = Counter()
        self.users: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # requests, in, out
        self.latencies: list[float] = []
        self.empty = 0
        self.oversized = 0
        self.tokens_unknown = 0

    def add(self, rec: dict) -> None:
        # Once per record (the replay's hook): each field read once.
        get = rec.get
        self.requests += 1
        self.by_status[get("status")] += 1
        self.by_model[get("model") or "unknown"] += 1
        user = get("user")
        row = self.users[user if user is not None else "(unknown)"]
        prompt_tokens, completion_tokens = get("prompt_tokens"), get("completion_tokens")
        row[0] += 1
        row[1] += prompt_tokens or 0
        row[2] += completion_tokens or 0
        if prompt_tokens is None or completion_tokens is None:
            self.tokens_unknown += 1
        latency = get("latency_seconds")
        if latency is not None:
            self.latencies.append(latency)
        if get("empty_response"):
            self.empty += 1
        if "oversized_input" in (get("flags") or ()):
            self.oversized += 1

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "by_model": dict(self.by_model),
            "users": {u: {"requests": r[0], "prompt_tokens": r[1], "completion_tokens": r[2]}
                      for u, r in sorted(self.users.items())},
            "latency_p50_seconds": percentile(self.latencies, 50),
            "latency_p95_seconds": percentile(self.latencies, 95),
            "latency_known": len(self.latencies),
            "empty_responses": self.empty,
            "oversized_inputs": self.oversized,
            "records_with_unknown_tokens": self.tokens_unknown,
        }

    def render(self, top: int = 20) -> str:
        d = self.as_dict()
        out = [f"requests: {d['requests']}  "
               + "  ".join(f"{k}={v}" for k, v in sorted(d["by_status"].items())),
               "models: " + ", ".join(f"{k}={v}" for k, v in sorted(d["by_model"].items())),
               f"empty responses: {d['empty_responses']}   oversized inputs: {d['oversized_inputs']}"]

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}s"
        out.append(f"latency p50: {fmt(d['latency_p50_seconds'])}  p95: {fmt(d['latency_p95_seconds'])}"
                   f"  (known for {d['latency_known']} of {d['requests']})")
        if d["records_with_unknown_tokens"]:
            out.append(f"records with unknown token counts: {d['records_with_unknown_tokens']}")
        out.append(f"{'user':<32} {'requests':>8} {'prompt_tok':>10} {'output_tok':>10}")
        rows = sorted(self.users.items(), key=lambda kv: (-kv[1][1] - kv[1][2], kv[0]))
        for user, (n, pin, pout) in rows[:top]:
            out.append(f"{user[:32]:<32} {n:>8} {pin:>10} {pout:>10}")
        if len(rows) > top:
            out.append(f"... and {len(rows) - top} more users")
        return "\n".join(out)
