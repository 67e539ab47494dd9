"""``parse_line(text) -> Event | Ignored``: one vLLM log line, no I/O, never raises.

Accepted input: one physical line of vLLM's stdout (text or JSON formatter,
0.6.3-0.33), a uvicorn access line, or one middleware JSON line; the tailer has
removed the newline (a stray ``\\r`` is tolerated). See :mod:`exporter.parse.header`
for the header rules and ``docs/design.md`` ("Events") for the event shapes.

Message grammar (``%r`` values are Python reprs, see :mod:`exporter.parse.pyrepr`)::

    Received request ID: FIELDS.          fields: prompt, params, prompt_token_ids,
                                          prompt_embeds shape, lora_request,
                                          prompt_adapter_request (any subset, in order)
    Request ID details: FIELDS.           prompt, prompt_token_ids, prompt_embeds shape
    Request ID JSON body: RAW             RAW to end of line; truncated -> body None
    Generated response ID[ (streaming delta|complete)]: output: R, [output_token_ids: L, ]finish_reason: F
    Generated response ID[ (...)] details: output_token_ids: L
    Added request ID.  /  Finished request ID.  /  Request ID aborted.
    Aborted request ID.  /  Aborted request(s) ID,ID.
    Request ID failed[ (engine dead)| (bad request)[: X]| due to X| (input error): X| validation: X][.]

Security rules (a prompt or output must never create or alter a record):

1. Field boundaries come from scanning repr literals, never from searching for
   separators: a quoted prompt containing ``", finish_reason: stop"`` or
   ``"Received request x: ..."`` is skipped whole. Every field value must be
   exactly one repr value (``None``, a literal, a list, ``Name(...)``), field
   names may not repeat, and ``finish_reason`` must be a bare word, so text
   injected through a client-chosen request id (``X-Request-Id``) cannot add or
   replace fields either. Request ids may not contain whitespace.
2. vLLM's NewLineFormatter repeats the genuine header on every line of a
   multi-line message (an exception text), so a continuation line can carry
   arbitrary text after a real header. The logger file must therefore match the
   message kind: request-log messages (``Received``, ``Request .. details``,
   ``JSON body``, ``Generated response``) only from ``logger.py`` /
   ``request_logger.py``; ``Added``/``Aborted``/``Finished``/``aborted``/
   ``failed`` only from the engine files (``async_llm.py``, ``engine.py``,
   ``async_llm_engine.py``, and ``core.py`` for the engine-core validation
   failure). A mismatch is ``Ignored("continuation")``. For the JSON formatter
   the logger ``name`` is checked the same way (``vllm.…request_logger`` etc.).
3. The remaining hole: a multi-line message *from an allowed file* (only
   ``Request X failed due to <exception text>`` in practice). The pipeline
   decides which physical lines continue a record (NewLineFormatter writes
   one ``\\r`` more than the log's usual line end inside a record, and
   continuation lines repeat the ``failed`` line's exact header; rules in
   ``Pipeline._lines``) and passes ``continued=True``: the line is then
   ``continuation`` whatever it says.
4. No arbitrary text before the header (see :mod:`exporter.parse.header`); the
   exact ``VLLM_LOGGING_PREFIX`` is passed as ``logging_prefix``.

Token ids: ``prompt_token_ids`` / ``output_token_ids`` are plain ``list[int]``
(or None when vLLM logged ``None``), as the contract says, and
``prompt_token_count`` / ``output_token_count`` carry the length beside them
(None with None). The lists are exactly what was logged: ``--max-log-len``
truncation is invisible in the line, the correlator decides what it may count.
Building the list costs about four times as much as validating and counting it
(128k ids: ~10 ms against ~2.5 ms), which only matters at DEBUG with huge
prompts; a count-only mode would be a keyword away if the pipeline wants it.

Keys of fields a format does not log are absent, not None, so the DEBUG
``details`` line of 0.11.1+ is not overwritten by its INFO ``received`` line.
``received`` may also carry ``lora_name``; ``output``/``output_details`` carry
``stream_info`` both; ``body`` carries ``truncated_body`` (True when the
logged text is not a complete JSON object). ``params`` holds only the keys
found: ``max_tokens`` (vLLM's *effective* value, ``max_model_len - prompt``
when the client sent none), ``temperature``, ``n``, ``json_mode`` (True when
``json_object=True`` or ``json=``/``json_schema=`` is set in
``guided_decoding``/``structured_outputs``; absent when neither field exists,
e.g. ``PoolingParams``). ``aborted`` has ``request_id`` = the first id and
``ids`` = all of them (``Aborted request(s) a,b.``). ``failed`` has ``reason``
= the text after "failed", brackets and "due to" removed (``engine dead``,
``bad request: X``, ``ValueError: ...``); only the first line of a multi-line
exception is read.

Start-up lines (settings, version, listening, the Rust frontend) are
``startup`` events (:mod:`exporter.parse.startup`): only from vLLM's own
start-up files, checked like every message, never from a continuation
line; any line the Rust frontend wrote (``(RustFrontend pid=N)``, a ``*.rs``
file) is never a Python request-log message: its per-request line is a
``summary`` event, every other one a ``startup`` event
(:mod:`exporter.parse.rust`).

Ignored reasons: ``empty``, ``not_vllm`` (no vLLM header), ``other_logger``,
``stats``, ``continuation``, ``traceback``, ``not_request_log`` (a request-log
or engine file, but another message), ``malformed_received``,
``malformed_output``, ``malformed_body`` (a JSON-body line whose text does not
start with ``{``), ``malformed_details``, ``malformed_middleware``, ``malformed_engine``, and
``internal_error`` (a parser bug caught by the last-resort guard; the fuzz
tests keep it unreachable).

Speed: a substring gate (``"equest"``/``"Generated response"``/``"HTTP/"``)
sends lines that cannot matter to a cheap classification; the header is one
anchored regex with cached time and file parts; Generated-response lines (most
lines of a stream) are matched by one regex; everything is linear in the line
length (see :mod:`exporter.parse.pyrepr`).
"""

from __future__ import annotations

import json
import re

from exporter import events as ev
from exporter.events import Event, Ignored
from exporter.parse.header import Header, access_fields, body_start, clean, json_header, text_header
from exporter.parse.engine_line import ENGINE_TYPES, MALFORMED_ENGINE, engine_event
from exporter.parse.middleware_line import MALFORMED, MIDDLEWARE_TYPES, middleware_event
from exporter.parse import fast
from exporter.parse.body_line import body_event
from exporter.parse.output_line import generated
from exporter.parse.prompt_line import details, received
from exporter.parse.pyrepr import ReprError
from exporter.parse.untrusted import clean_text
from exporter.parse.rust import is_rust, rust_event
from exporter.parse.startup import STARTUP_FILES, startup_event

REQUEST_LOGGER_FILES = frozenset({"logger.py", "request_logger.py"})
ENGINE_FILES = frozenset({"async_llm.py", "engine.py", "async_llm_engine.py"})
# The engine core (0.33) logs "Request X failed validation: ..." and nothing
# else of ours; its many other lines are plain other_logger.
FAILED_FILES = ENGINE_FILES | {"core.py"}

_EMPTY = Ignored("empty")
_NOT_VLLM = Ignored("not_vllm")
_OTHER = Ignored("other_logger")
_STATS = Ignored("stats")
_CONT = Ignored("continuation")
_TRACE = Ignored("traceback")
_NOT_REQ = Ignored("not_request_log")

_TRACEBACK_STARTS = (
    "Traceback (most recent call last)",
    '  File "',
    "    ",
    "During handling of the above exception",
    "The above exception was the direct cause",
)
_ID = re.compile(r"\S+")


def parse_line(text: str, *, logging_prefix: str = "", continued: bool = False) -> Event | Ignored:
    """Parse one physical line; see the module docstring for every rule."""
    scan = fast.scan
    if scan is not None and not logging_prefix and not continued:
        # The C accelerator answers only for lines it is certain of (the
        # Python result, exactly); None sends the line down the Python path.
        try:
            found = scan(text)
        except Exception:  # noqa: BLE001 - never worse than the Python path
            found = None
        if found is not None:
            return found
    try:
        return _parse(text, logging_prefix, continued)
    except Exception:  # noqa: BLE001 - a parser bug must not stop ingestion
        return Ignored("internal_error")


def _parse(text: str, logging_prefix: str, continued: bool) -> Event | Ignored:
    if not text or text.isspace():
        return _EMPTY
    if continued:
        return _CONT
    text = clean(text)
    if not text:
        return _EMPTY
    if text[0] == "{":
        return _parse_json(text)
    # Cheap gate: every message we turn into an event contains one of these.
    interesting = "equest" in text or "Generated response" in text
    if not interesting and "HTTP/" not in text and "throughput:" in text:
        return _STATS
    # The header regex consumes a leading "(Name pid=N) " itself; only a
    # configured logging prefix needs the slower string walk first.
    pos, proc = body_start(text, logging_prefix) if logging_prefix else (0, None)
    found = text_header(text, pos, proc)
    if found is None:
        pos, proc = body_start(text, logging_prefix)
        fields = access_fields(text, pos) if "HTTP/" in text else None
        if fields is not None:
            return Event(ev.ACCESS, None, None, fields)
        return _TRACE if text.startswith(_TRACEBACK_STARTS, pos) else _NOT_VLLM
    header, m = found
    if not interesting:
        return _unknown_message(text, m, header)
    return _dispatch(text, m, header)


def _dispatch(s: str, m: int, h: Header) -> Event | Ignored:
    """Route the message at ``s[m:]`` by its opening words, checking the logger file."""
    if s.startswith("Received request ", m):
        return received(s, m + 17, h) if h.file in REQUEST_LOGGER_FILES else _other_file(s, m, h)
    if s.startswith("Generated response ", m):
        return generated(s, m + 19, h) if h.file in REQUEST_LOGGER_FILES else _other_file(s, m, h)
    if s.startswith("Request ", m):
        return _request(s, m + 8, h)
    for prefix, kind in (("Added request ", ev.ADDED), ("Finished request ", ev.FINISHED)):
        if s.startswith(prefix, m):
            if h.file not in ENGINE_FILES:
                return _other_file(s, m, h)
            rid = _dotted_id(s, m + len(prefix))
            return _NOT_REQ if rid is None else Event(kind, rid, h.when, {})
    if s.startswith("Aborted request", m):
        if h.file not in ENGINE_FILES:
            return _other_file(s, m, h)
        start = m + 19 if s.startswith("(s) ", m + 15) else m + 16
        if s[m + 15 : start] not in ("(s) ", " "):
            return _NOT_REQ
        joined = _dotted_id(s, start)
        if joined is None:
            return _NOT_REQ
        ids = joined.split(",")
        if not all(ids):
            return _NOT_REQ
        return Event(ev.ABORTED, ids[0], h.when, {"ids": ids})
    return _unknown_message(s, m, h)


def _other_file(s: str, m: int, h: Header) -> Event | Ignored:
    """A request-log or engine message from a file that does not write it:
    a continuation, or a line of the Rust frontend (never a Python request log)."""
    return rust_event(s, m, h) if is_rust(h) else _CONT


def _unknown_message(s: str, m: int, h: Header) -> Event | Ignored:
    if h.file in STARTUP_FILES:
        try:
            found = startup_event(s, m, h)
        except ReprError:
            found = None
        if found is not None:
            return found
    elif is_rust(h):
        return rust_event(s, m, h)
    if s.startswith(_TRACEBACK_STARTS, m):
        return _TRACE
    if "throughput:" in s[m : m + 200]:
        return _STATS
    if h.file in REQUEST_LOGGER_FILES or h.file in ENGINE_FILES:
        return _NOT_REQ
    return _OTHER


def _dotted_id(s: str, i: int) -> str | None:
    """``ID.`` to the end of the line, ID without whitespace."""
    if not s.endswith(".") or len(s) - 1 <= i:
        return None
    rid = s[i:-1]
    return rid if _no_space(rid) else None


def _no_space(t: str) -> bool:
    return _ID.fullmatch(t) is not None


# -- request logger -----------------------------------------------------------


def _request(s: str, i: int, h: Header) -> Event | Ignored:
    k = s.find(" ", i, i + 2048)
    if k <= i:
        return _unknown_message(s, i - 8, h)
    rid = s[i:k]
    if s.startswith(" details: ", k):
        if h.file not in REQUEST_LOGGER_FILES:
            return _other_file(s, i - 8, h)
        return details(s, k + 10, rid, h)
    if s.startswith(" JSON body: ", k):
        if h.file not in REQUEST_LOGGER_FILES:
            return _other_file(s, i - 8, h)
        return body_event(s, k + 12, rid, h.when)
    if s.startswith(" aborted", k):
        if h.file not in ENGINE_FILES:
            return _other_file(s, i - 8, h)
        if s[k + 8 :] != ".":
            return _NOT_REQ
        return Event(ev.ABORTED, rid, h.when, {"ids": [rid]})
    if s.startswith(" failed", k):
        if h.file not in FAILED_FILES:
            return _other_file(s, i - 8, h)
        return Event(ev.FAILED, rid, h.when, {"reason": _failure_reason(s[k + 7 :])})
    return _unknown_message(s, i - 8, h)


def _failure_reason(rest: str) -> str:
    """`` (bad request): X.`` → ``bad request: X``; `` due to X.`` → ``X``; ``.`` → ``""``."""
    r = rest[:-1] if rest.endswith(".") else rest
    r = r.strip()
    if r.startswith("due to "):
        return r[7:]
    if r.startswith("("):
        close = r.find(")")
        if close > 0:
            return r[1:close] + r[close + 1 :]
    return r


# -- JSON lines: vLLM's JSON formatter (our middleware line: middleware_line) --


def _parse_json(text: str) -> Event | Ignored:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        if '"vllm_audit_engine' in text:
            return MALFORMED_ENGINE
        return MALFORMED if '"vllm_audit_middleware' in text else _NOT_VLLM
    if not isinstance(obj, dict):
        return _NOT_VLLM
    kind = obj.get("type")
    if kind in MIDDLEWARE_TYPES:
        return middleware_event(obj)
    if kind in ENGINE_TYPES:
        return engine_event(obj)
    message = obj.get("message")
    if not isinstance(message, str):
        return _NOT_VLLM
    if "\\ud" in text or "\\uD" in text:  # a JSON "\\ud800" escape must not reach a UTF-8 writer
        message, _ = clean_text(message)
    header = json_header(obj)
    if header is None:
        return _NOT_VLLM
    if obj.get("name") == "uvicorn.access":
        fields = access_fields(message, 0)
        return _OTHER if fields is None else Event(ev.ACCESS, None, header.when, fields)
    if not header.file:
        return _OTHER
    if "\n" in message:
        # Only an exception text is multi-line; its first line is all we read.
        message = message.split("\n", 1)[0]
    result = None
    dispatch = fast.dispatch
    if dispatch is not None:
        try:
            result = dispatch(message, header)
        except Exception:  # noqa: BLE001 - never worse than the Python path
            result = None
    if result is None:
        result = _dispatch(message, 0, header)
    if result.__class__ is Event and result.kind == ev.STARTUP and isinstance(obj.get("process"), int):
        result.data["pid"] = obj["process"]
    return result
