"""Read audit records back from Loki (``export --source loki``).

``GET /loki/api/v1/query_range`` with ``direction=forward``, paginated: the
next page starts AT the last timestamp seen (Loki's start is inclusive and
several entries may share a nanosecond), and entries already returned at that
boundary timestamp are skipped. The window is cut into one-day pieces so
Loki's ``max_query_length`` never rejects a long export.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx

from exporter.loki.client import auth_headers, build_http_client
from exporter.loki.config import LokiSettings

DEFAULT_SELECTOR = '{service_name="vllm-audit"}'
_DAY_NS = 86_400 * 10**9
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def _logql_string(text: str) -> str:
    # LogQL double-quoted strings use Go escapes; JSON's are a subset.
    return json.dumps(text, ensure_ascii=False)


def build_query(selector: str | None, *, user: str | None = None, model: str | None = None,
                grep: str | None = None) -> str:
    """Stream selector + line filters; the exact match is redone client-side.

    User/model filter on the serialized ``"user":"alice"`` fragment: the
    pushed line is ``dumps_line`` output (compact), and inside a JSON string
    value the same fragment would appear escaped, so it cannot match there.
    """
    parts = [selector or DEFAULT_SELECTOR]
    for name, value in (("user", user), ("model", model)):
        if value is not None:
            parts.append("|= " + _logql_string(f'"{name}":' + json.dumps(value, ensure_ascii=False,
                                                                          separators=(",", ":"))))
    if grep and json.dumps(grep, ensure_ascii=False)[1:-1] == grep:
        # Only when the text needs no JSON escaping: otherwise it looks
        # different in the line and only the client-side filter can find it.
        parts.append("|~ " + _logql_string("(?i)" + _RE2_SPECIAL.sub(r"\\\1", grep)))
    return " ".join(parts)


def query_range(client: httpx.Client, base_url: str, query: str, start_ns: int, end_ns: int, *,
                limit: int = 1000, headers: dict | None = None) -> Iterator[tuple[int, str]]:
    """``(timestamp_ns, line)`` in time order, each entry once, for ``[start, end)``."""
    url = base_url.rstrip("/") + "/loki/api/v1/query_range"
    start = start_ns
    boundary_ts: int | None = None
    boundary_lines: set[str] = set()
    while start < end_ns:
        resp = client.get(url, params={"query": query, "start": str(start), "end": str(end_ns),
                                       "limit": str(limit), "direction": "forward"}, headers=headers)
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "streams":
            raise RuntimeError(f"unexpected Loki response: status={body.get('status')!r}")
        entries = sorted((int(ts), line) for stream in body["data"]["result"] for ts, line in stream["values"])
        new = 0
        for ts, line in entries:
            if ts == boundary_ts and line in boundary_lines:
                continue
            if ts != boundary_ts:
                boundary_ts, boundary_lines = ts, set()
            boundary_lines.add(line)
            new += 1
            yield ts, line
        if len(entries) < limit:
            return
        # A full page of already-seen entries: more than `limit` share one
        # nanosecond; step past it rather than loop forever.
        start = boundary_ts if new else boundary_ts + 1


def records(settings: LokiSettings, t_from: float, t_to: float, *, user: str | None = None,
            model: str | None = None, grep: str | None = None, selector: str | None = None,
            client: httpx.Client | None = None, limit: int = 1000) -> Iterator[dict]:
    """Parsed records from Loki for ``[t_from, t_to)`` (by entry timestamp),
    with the same tenant, auth and TLS the pusher uses (one Loki client)."""
    own = client is None
    client = client or build_http_client(settings)
    headers = auth_headers(settings) or None
    query = build_query(selector, user=user, model=model, grep=grep)
    start, end = int(t_from * 10**9), int(t_to * 10**9)
    base_url = settings.url.removesuffix("/loki/api/v1/push")
    try:
        while start < end:
            piece_end = min(start + _DAY_NS, end)
            for _, line in query_range(client, base_url, query, start, piece_end, limit=limit, headers=headers):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec
            start = piece_end
    finally:
        if own:
            client.close()
