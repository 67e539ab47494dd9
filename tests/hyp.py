"""Example counts for property tests under the two Hypothesis profiles
(registered in tests/conftest.py)."""

from __future__ import annotations

import os

PROFILE = os.environ.get("VLLM_AUDIT_HYPOTHESIS", "ci")
EXPLORE_EXAMPLES = int(os.environ.get("VLLM_AUDIT_HYPOTHESIS_EXAMPLES", "10000"))


def examples(n: int) -> int:
    """``n`` in CI; at least the exploration count under ``explore``."""
    return n if PROFILE == "ci" else max(n, EXPLORE_EXAMPLES)
