"""The engine line the plugin writes (stdlib only; runs in the writer thread).

One ``vllm_audit_engine`` line per finished request, keyed by vLLM's
*external* request id (``chatcmpl-…``, ``cmpl-…-0``: the id of the
"Received request" log line and of the response body). Times are seconds as
vLLM measured them (``FinishedRequestStats``); ``share_seconds`` is the
request's share of the engine's busy time (:mod:`exporter.statlogger.share`),
``devices`` the engine's tensor × pipeline parallel size. Unknown → null.

``vllm_audit_engine_status`` lines say the plugin started (with vLLM's
version) and report, as counts since the last report, what it could not
write: ``problems`` maps a reason (``no_request_id``, ``stats_changed``,
``record_error``, ``dropped`` …) to a count.
"""

from __future__ import annotations

from exporter.wire import ENGINE_STATUS_TYPE, ENGINE_TYPE, ENGINE_VERSION, utc_text

# What the event loop hands over per finished request (a tuple: cheap to build).
FIELDS = ("request_id", "finished_wall", "e2e", "finish_reason", "prompt_tokens",
          "generation_tokens", "cached_tokens", "preemptions", "queue", "prefill", "decode",
          "inference", "share", "devices", "engine_index")


def _seconds(value):
    return round(value, 6) if isinstance(value, float) else value


def render(item) -> dict:
    kind, values = item
    if kind == "status":
        return status_line(*values)
    v = dict(zip(FIELDS, values))
    wall, e2e = v["finished_wall"], v["e2e"]
    arrived = utc_text(wall - e2e) if isinstance(e2e, float) and e2e >= 0 else None
    return {"type": ENGINE_TYPE, "v": ENGINE_VERSION, "request_id": v["request_id"],
            "arrived_at": arrived, "finished_at": utc_text(wall),
            "engine_index": v["engine_index"], "finish_reason": v["finish_reason"],
            "queue_seconds": _seconds(v["queue"]), "prefill_seconds": _seconds(v["prefill"]),
            "decode_seconds": _seconds(v["decode"]), "inference_seconds": _seconds(v["inference"]),
            "e2e_seconds": _seconds(e2e), "share_seconds": _seconds(v["share"]),
            "devices": v["devices"], "prompt_tokens": v["prompt_tokens"],
            "generation_tokens": v["generation_tokens"], "cached_tokens": v["cached_tokens"],
            "preemptions": v["preemptions"]}


def status_line(wall: float, problems: dict, started: dict | None = None) -> dict:
    line = {"type": ENGINE_STATUS_TYPE, "v": ENGINE_VERSION, "at": utc_text(wall),
            "problems": dict(problems)}
    if started is not None:
        line["started"] = started
    return line


def fallback(item, exc) -> dict:
    """A line that could not be rendered is reported, never silently lost."""
    import time
    return status_line(time.time(), {"render_error": 1})


def dropped(count: int, wall: float) -> dict:
    return status_line(wall, {"dropped": count})
