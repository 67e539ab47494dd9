"""The rules every optional C accelerator is loaded by.

Five extensions (``exporter/parse/_scan.c``, ``exporter/tail/_cut.c``,
``exporter/transparency/_leaf.c``, ``exporter/_assemble.c``,
``exporter/_observe.c``) are built by ``pip install`` where a
compiler exists; each has a pure-Python reference beside it that runs when
the module is missing, out of date, or switched off. The rules they
share live here, once:

* ``VLLM_AUDIT_PURE_PYTHON=1`` (anything but empty or ``0``) forces every
  pure-Python path (read when the module loads: benchmarks and tests flip
  them with each module's ``set_enabled``);
* a checkout never runs a module built from another version of its source:
  setup.py compiles the SHA-256 of the source files, joined in name order,
  into the module as ``SOURCE_SHA256``. An installed package may ship no
  source; then nothing is compared;
* a module whose C path is one global ``_C`` (None: pure Python) gets its
  ``set_enabled`` from :func:`switch`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Sequence
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


def switch(namespace: dict, loader: Callable[[], object]) -> Callable[[bool], None]:
    """The ``set_enabled(enabled)`` of the module whose ``globals()`` is
    ``namespace``: it sets ``_C`` to ``loader()`` (the configured extension,
    or None) or to None, and ``IMPLEMENTATION`` to ``"c"`` or ``"python"``
    (what ``vllm_audit_accelerator_info`` reports)."""
    def set_enabled(enabled: bool) -> None:
        """Use the C module (when built and current) or the pure-Python path."""
        module = loader() if enabled else None
        namespace["_C"] = module
        namespace["IMPLEMENTATION"] = "python" if module is None else "c"
    return set_enabled
