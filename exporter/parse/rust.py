"""Lines of vLLM's Rust frontend (``VLLM_USE_RUST_FRONTEND=1``, pure).

The Rust binary writes vLLM's header itself (``rust/src/cmd/src/logging.rs``,
``VllmEventFormatter``): ``(RustFrontend pid=N) LEVEL MM-DD HH:MM:SS
[file.rs:line] `` then the tracing span scope (``span{field=value ...}: ``)
and the event: its message, then `` key=value`` per field (tracing's default
field format: ``%`` values raw, strings without ``%`` quoted, numbers bare).

With ``--enable-log-requests`` it writes one line per finished request
(``rust/src/server/src/routes/openai/chat_completions.rs``,
``completions.rs``)::

    chat_completions{request_id=ID[ engine_request_id=X]}: chat completion finished[ stream=true] model=M prompt_tokens=P output_tokens=O finish_reason=F

(``completion finished`` for /v1/completions; ``F`` is bare or quoted). That
line is a ``summary`` event; every other Rust line is a ``startup`` event
that only says the Rust frontend runs. The request id can come from the
client (``X-Request-Id``) and tracing prints it raw, so the whole message
must match exactly, the id without whitespace: an id carrying text shaped
like more fields cannot match, and the line makes no record.
"""

from __future__ import annotations

import re

from exporter import events as ev
from exporter.events import Event
from exporter.parse.header import Header

_SUMMARY = re.compile(
    r"(?P<span>[a-z_]{1,40})\{request_id=(?P<id>\S{1,512}?)(?: engine_request_id=\S{1,512})?\}: "
    r"(?P<what>chat completion|completion) finished(?P<stream> stream=true)? model=(?P<model>\S{1,512}) "
    r"prompt_tokens=(?P<pt>\d{1,12}) output_tokens=(?P<ot>\d{1,12}) "
    r"finish_reason=(?P<q>\"?)(?P<finish>[a-z_]{1,40})(?P=q)"
)


def is_rust(h: Header) -> bool:
    return h.file.endswith(".rs") or h.process == "RustFrontend"


def rust_line_event(h: Header) -> Event:
    """Any line the Rust frontend wrote: it runs (``exporter.learned``)."""
    return Event(ev.STARTUP, None, h.when, {"what": "rust_frontend", "process": h.process})


def rust_event(s: str, m: int, h: Header) -> Event:
    """The per-request summary line, else the plain "the Rust frontend runs" event."""
    found = _SUMMARY.fullmatch(s, m) if "finished" in s else None
    if found is None:
        return rust_line_event(h)
    endpoint = "chat" if found.group("what") == "chat completion" else "completion"
    data = {"endpoint": endpoint, "model": found.group("model"), "prompt_tokens": int(found.group("pt")),
            "completion_tokens": int(found.group("ot")), "finish_reason": found.group("finish"),
            # the chat line says stream=true when streamed and nothing else when not
            # (both branches read); the completions streaming branch was not
            "stream": True if found.group("stream") else (False if endpoint == "chat" else None)}
    return Event(ev.SUMMARY, found.group("id"), h.when, data)
