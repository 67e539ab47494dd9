"""When a C accelerator's tests may skip, decided once.

Only where no C compiler exists, or where ``VLLM_AUDIT_PURE_PYTHON=1``
switched the accelerators off, do they skip. Where a compiler exists, a
missing or stale module is a failure (``tests/test_cbuild.py``), never a
quiet skip: a fresh clone that failed to build would otherwise report green
while testing nothing of the C path.
"""

from __future__ import annotations

import os
import shutil

import pytest

from exporter import accel

HAVE_CC = any(shutil.which(cc) for cc in (os.environ.get("CC") or "cc", "gcc", "cc"))


def needs_c(built: bool):
    """Skip only when the module is absent *and* there is no reason it
    should be there; otherwise the tests run (and fail if it is absent)."""
    return pytest.mark.skipif(not built and (not HAVE_CC or accel.forced_off()),
                              reason="no C compiler (or VLLM_AUDIT_PURE_PYTHON=1): only the Python path runs")
