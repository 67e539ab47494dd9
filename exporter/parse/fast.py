"""Which implementation of the hot parse path runs: the optional C
accelerator (``exporter/parse/_scan.c``) or none (pure Python).

``scan(text)`` returns the Event the Python parser would return for the
common request-log lines, or None, and the caller then runs the Python
parser, which remains the reference and the only path for every other line.
The accelerator is used when it was built (``pip install`` builds it where
a C compiler exists) unless ``VLLM_AUDIT_PURE_PYTHON=1``; ``IMPLEMENTATION``
says which (``c`` or ``python``; exported as ``vllm_audit_parser_info``).
"""

from __future__ import annotations

import os

from exporter import events as ev
from exporter.parse.fields import sampling_params
from exporter.parse.header import text_header

ENV = "VLLM_AUDIT_PURE_PYTHON"


def _header(text: str):
    return text_header(text, 0, None)


def load():
    """The configured ``_scan`` module, or None (absent, or forced off by the env)."""
    if os.environ.get(ENV, "") not in ("", "0"):
        return None
    try:
        from exporter.parse import _scan
    except ImportError:
        return None
    _scan.configure(ev.Event, _header, sampling_params, ev.OUTPUT, ev.OUTPUT_DETAILS, ev.ADDED,
                    ev.FINISHED, ev.DETAILS, ev.RECEIVED)
    return _scan


_module = load()
scan = None if _module is None else _module.scan
IMPLEMENTATION = "python" if scan is None else "c"
