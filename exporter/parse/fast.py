"""Which implementation of the hot parse path runs: the optional C
accelerator (``exporter/parse/_scan.c``) or none (pure Python).

It also encodes records (``json_line``, set in :mod:`exporter.record`):
the bytes of the json module for what a record holds, else None and json
runs.

``scan(text)`` returns what the Python parser returns for the common
request-log lines (``dispatch(message, header)`` the same for a JSON-formatter
message), or None, and the caller then runs the Python parser,
which remains the reference and the only path for every other line. The
accelerator is used when it was built (``pip install`` builds it where a C
compiler exists) unless ``VLLM_AUDIT_PURE_PYTHON=1``; ``IMPLEMENTATION``
says which (``c`` or ``python``; exported as ``vllm_audit_parser_info``).
"""

from __future__ import annotations

from pathlib import Path

from exporter import accel
from exporter import events as ev
from exporter import record
from exporter.parse.body_line import body_event
from exporter.parse.fields import sampling_params
from exporter.parse.header import text_header

ENV = accel.ENV  # "1" forces the pure-Python path (exporter.accel)


def _header(text: str):
    return text_header(text, 0, None)


def load():
    """The configured ``_scan`` module, or None (not built, or forced off by the env)."""
    _scan = accel.load("exporter.parse._scan", _parts())
    if _scan is None:
        return None
    try:
        configure(_scan)
    except TypeError:  # a build of another version
        return None
    return _scan


def stale(module) -> bool:
    """A checkout's module built from another version of ``_scan.c`` and its
    ``_scan_*.h`` parts (an installed package may ship no source: then
    nothing is compared)."""
    return accel.stale(module, _parts())


def _parts() -> list[Path]:
    return sorted(Path(__file__).parent.glob("_scan*.[ch]"), key=lambda p: p.name)  # as setup.py


def configure(module) -> None:
    """Hand the C module the Python pieces it calls back (the header rules,
    SamplingParams, the JSON body) and the event kinds."""
    module.configure(ev.Event, _header, sampling_params, body_event, ev.OUTPUT, ev.OUTPUT_DETAILS,
                     ev.ADDED, ev.FINISHED, ev.DETAILS, ev.RECEIVED, ev.ACCESS, plain_event(ev.Event), ev.BODY)


def plain_event(cls) -> bool:
    """``cls`` is a dataclass of its own whose ``__init__`` is the generated
    one (it only stores its four arguments): the C module may then allocate
    events and fill their slots itself instead of calling ``cls`` per line
    (it checks the slots and one call's result too)."""
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return ("__dataclass_fields__" in cls.__dict__ and code is not None and code.co_filename == "<string>"
            and not hasattr(cls, "__post_init__")
            and list(cls.__dataclass_fields__) == ["kind", "request_id", "when", "data"])


def set_enabled(enabled: bool) -> None:
    """Switch the accelerator on (when built) or off, for benchmarks and tests
    (the parser and the record encoder of exporter.record together)."""
    global scan, dispatch, IMPLEMENTATION
    module = load() if enabled else None
    scan = None if module is None else module.scan
    dispatch = None if module is None else module.dispatch
    record.set_c_encoder(None if module is None else module.json_line)
    IMPLEMENTATION = "python" if scan is None else "c"


scan = dispatch = None
IMPLEMENTATION = "python"
set_enabled(True)
