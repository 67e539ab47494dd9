"""vLLM's start-up lines → a ``startup`` event (pure, never raises past ReprError).

What vLLM prints once per server start, per version (format strings from
vLLM's source; the logger file is checked like every other message, see
rule 2 of :mod:`exporter.parse.messages`):

==============================================  ===============================  ===========
message                                         file (text) / logger (JSON)      versions
==============================================  ===============================  ===========
``vLLM API server version %s``                  ``api_server.py``                0.6.3-0.2x
``args: %s`` (an ``argparse.Namespace`` repr)   ``api_server.py``                0.6.3-0.8.x
``non-default args: %s`` (a ``dict`` repr)      ``utils.py`` / ``api_utils.py``  0.9-0.33
``vLLM server version %s, serving model %s``    ``api_utils.py``                 0.3x, logo off
``Initializing a V1 LLM engine (v%s) with       ``core.py`` (engine core)        V1
config: ...``
``Starting vLLM API server on %s`` (and         ``launcher.py`` /                all
``... server %d on %s``, ``Starting vLLM        ``api_server.py`` / ``entry.py``
server on %s``)
``Launching Rust frontend: ... --args-json J``  ``utils.py`` (``v1/utils.py``)   0.32+
==============================================  ===============================  ===========

The 0.3x logo (``version X`` inside a multi-line record) is not read: its
lines after the first are continuation lines, and continuation lines are
never parsed (security rule 3 of :mod:`exporter.parse.messages`).

Values are read with the repr scanner (:mod:`exporter.parse.pyrepr`), never
``eval``: strings, numbers, ``True``/``False``/``None`` and lists or dicts of
them. Anything else (an enum repr, a dataclass) is left out of ``args``. Only
the keys :data:`KEYS` are kept (a start-up line also carries host, port and
paths the exporter has no use for).

Event: ``Event("startup", None, when, data)`` with ``data["what"]`` one of
``args`` (``args``: the kept keys, ``full``: True for the Namespace form,
which lists every argument, so an absent key there means nothing),
``version`` (``version``, maybe ``model``), ``listening``, ``rust_frontend``
(``args`` from its ``--args-json``), and ``process`` (the process name of the
header, ``APIServer``, ``RustFrontend``) plus ``pid`` when the line shows one.
"""

from __future__ import annotations

import json
import re

from exporter import events as ev
from exporter.events import Event
from exporter.parse.header import Header
from exporter.parse.pyrepr import (
    QUOTES,
    ReprError,
    decode_str,
    group_end,
    split_kwargs,
    string_end,
    to_float,
    to_int,
    value_end,
)

# The start-up settings the exporter uses (vLLM's argument names).
KEYS = frozenset({
    "model", "model_tag", "served_model_name", "max_log_len", "max_model_len",
    "enable_log_requests", "disable_log_requests", "enable_log_outputs",
    "enable_log_deltas", "middleware", "api_server_count", "host", "port",
})
STARTUP_FILES = frozenset({"api_server.py", "utils.py", "api_utils.py", "launcher.py", "entry.py", "core.py"})
_PID = re.compile(r"\(([^()]{1,80}?) pid=(\d{1,10})\) ")
_VERSION = re.compile(r"vLLM (?:API )?server version (\S{1,64}?)(?:, serving model (\S.{0,1023}))?")
_ENGINE_VERSION = re.compile(r"Initializing a V1 LLM engine \(v([0-9][\w.+-]{0,63})\) with config: ")
_LISTENING = re.compile(r"Starting vLLM (?:API )?server (?:\d{1,4} )?on \S{1,300}")
_MAX_DEPTH = 8
_FLOAT = re.compile(r"-?\d{1,30}\.\d{0,30}(?:e[-+]?\d{1,3})?")


def startup_event(s: str, m: int, h: Header) -> Event | None:
    """The start-up event of the message at ``s[m:]``, or None (not one)."""
    if h.file not in STARTUP_FILES:
        return None
    data: dict | None = None
    if s.startswith("non-default args: {", m):
        data = {"what": "args", "args": _dict_args(s, m + 18), "full": False}
    elif s.startswith("args: Namespace(", m) and h.file == "api_server.py":
        data = {"what": "args", "args": _namespace_args(s, m + 15), "full": True}
    elif s.startswith("Initializing a V1 LLM engine (v", m) and h.file == "core.py":
        v = _ENGINE_VERSION.match(s, m)
        if v is None:
            return None
        data = {"what": "version", "version": v.group(1)}
    elif s.startswith("vLLM ", m):
        v = _VERSION.fullmatch(s, m)
        if v is None:
            return None
        data = {"what": "version", "version": v.group(1)}
        if v.group(2):
            data["model"] = v.group(2)
    elif s.startswith("Starting vLLM ", m) and h.file in ("launcher.py", "api_server.py", "entry.py"):
        if _LISTENING.fullmatch(s, m) is None:
            return None
        data = {"what": "listening"}
    elif s.startswith("Launching Rust frontend: ", m) and h.file == "utils.py":
        data = {"what": "rust_frontend", "args": _rust_args(s, m)}
    if data is None:
        return None
    data["process"] = h.process
    p = _PID.search(s, 0, m)  # in the header only (after a VLLM_LOGGING_PREFIX, 0.31+)
    if p is not None:
        data["pid"] = int(p.group(2))
    return Event(ev.STARTUP, None, h.when, data)


def _dict_args(s: str, i: int) -> dict:
    end = group_end(s, i)
    if end != len(s):
        raise ReprError("junk after the args dict")
    out = {}
    for key, a, b in _dict_entries(s, i, end):
        if key in KEYS:
            try:
                out[key] = _literal(s, a, b, 0)
            except ReprError:
                continue  # a value the scanner does not read: left out
    return out


def _dict_entries(s: str, a: int, b: int):
    """(key, value start, value end) of each entry of the dict ``s[a:b]``."""
    pos, stop = a + 1, b - 1
    while pos < stop:
        if s[pos] not in QUOTES:
            raise ReprError("dict key is not a string")
        kend = string_end(s, pos)
        if not s.startswith(": ", kend):
            raise ReprError("expected ': '")
        key = decode_str(s, pos)[0]
        vend = value_end(s, kend + 2, stop)
        yield key, kend + 2, vend
        pos = vend + 2


def _namespace_args(s: str, i: int) -> dict:
    end = group_end(s, i)
    if end != len(s):
        raise ReprError("junk after Namespace(...)")
    out = {}
    for key, (a, b) in split_kwargs(s, i + 1, end - 1).items():
        if key in KEYS:
            try:
                out[key] = _literal(s, a, b, 0)
            except ReprError:
                continue  # a value the scanner does not read: left out
    return out


def _rust_args(s: str, m: int) -> dict:
    k = s.find(" --args-json {", m)
    if k < 0:
        return {}
    try:
        value = json.loads(s[k + 13:])
    except (ValueError, RecursionError):
        return {}
    return {key: v for key, v in value.items() if key in KEYS} if isinstance(value, dict) else {}


def _literal(s: str, a: int, b: int, depth: int):
    """One repr value in ``s[a:b]``: str, int, float, bool, None, list, tuple, dict."""
    if depth > _MAX_DEPTH or a >= b:
        raise ReprError("value too deep or empty")
    c = s[a]
    if c in QUOTES:
        text, end = decode_str(s, a)
        if end != b:
            raise ReprError("junk after string")
        return text
    if c in "[({":
        if group_end(s, a) != b:
            raise ReprError("junk after group")
        return _group(s, a, b, depth)
    atom = s[a:b]
    if atom in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[atom]
    n = to_int(atom)
    if n is not None:
        return n
    if _FLOAT.fullmatch(atom):
        return to_float(atom)
    raise ReprError("not a literal")


def _group(s: str, a: int, b: int, depth: int):
    opening = s[a]
    if opening == "{":
        return {k: _literal(s, x, y, depth + 1) for k, x, y in _dict_entries(s, a, b)}
    if opening == "(" and a > 0 and (s[a - 1].isalnum() or s[a - 1] == "_"):
        raise ReprError("a call, not a tuple")
    items, pos, stop = [], a + 1, b - 1
    while pos < stop:
        vend = value_end(s, pos, stop)
        if opening == "(" and vend == stop and s[vend - 1] == ",":
            items.append(_literal(s, pos, vend - 1, depth + 1))  # (x,) one-tuple
        else:
            items.append(_literal(s, pos, vend, depth + 1))
        pos = vend + 2
    return items
