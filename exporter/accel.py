"""The rules every optional C accelerator is loaded by.

Four extensions (``exporter/parse/_scan.c``, ``exporter/tail/_cut.c``,
``exporter/transparency/_leaf.c``, ``exporter/_assemble.c``) are built by ``pip install`` where a
compiler exists; each has a pure-Python reference beside it that runs when
the module is missing, out of date, or switched off. The two rules they
share live here, once:

* ``VLLM_AUDIT_PURE_PYTHON=1`` (anything but empty or ``0``) forces every
  pure-Python path (read when the module loads: benchmarks and tests flip
  them with each module's ``set_enabled``);
* a checkout never runs a module built from another version of its source:
  setup.py compiles the SHA-256 of the source files, joined in name order,
  into the module as ``SOURCE_SHA256``. An installed package may ship no
  source; then nothing is compared.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Sequence
from pathlib import Path

ENV = "VLLM_AUDIT_PURE_PYTHON"


def forced_off() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def stale(module, sources: Sequence[Path]) -> bool:
    """``module`` was built from other bytes than ``sources`` (in this order)."""
    present = [p for p in sources if p.exists()]
    if not present:
        return False
    try:
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in present)).hexdigest()
    except OSError:
        return False
    return getattr(module, "SOURCE_SHA256", "") != digest


def load(name: str, sources: Sequence[Path]):
    """The extension module ``name`` if it may run: not forced off, built,
    and built from ``sources``; else None (the caller's pure-Python path)."""
    if forced_off():
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return None if stale(module, sources) else module
