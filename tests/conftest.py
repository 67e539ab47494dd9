"""Hypothesis profiles: CI is reproducible, exploration is wide.

``ci`` (the default, what `bash .ci/run` uses): derandomized, so every
machine draws the same examples and a failure fails the same way
everywhere; no example database, so nothing a previous run left on this
machine changes what runs. ``explore`` (``VLLM_AUDIT_HYPOTHESIS=explore``,
see ``tools/explore.sh``): random seeds and at least
``VLLM_AUDIT_HYPOTHESIS_EXAMPLES`` (default 10 000) examples per property;
not part of CI's pass/fail, its failures are turned into ``@example``
regression cases.

It also installs :mod:`reaper`: an interrupted run (SIGTERM, ^C) stops the
servers the live tests started instead of leaving them running. And it
builds, once per session, the 2 MB real-format log the C stages'
differentials replay (``big_debug_log``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

import reaper
from hyp import EXPLORE_EXAMPLES, PROFILE  # tests/ is on sys.path (rootdir-relative imports)

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("explore", derandomize=False, max_examples=EXPLORE_EXAMPLES, database=None,
                          print_blob=True, deadline=None)
if PROFILE not in ("ci", "explore"):
    raise SystemExit(f"VLLM_AUDIT_HYPOTHESIS={PROFILE!r}: expected 'ci' or 'explore'")
settings.load_profile(PROFILE)


def pytest_configure(config):
    reaper.install()


@pytest.fixture(scope="session")
def big_debug_log(tmp_path_factory):
    """2 MB of vLLM 0.32 DEBUG log made from the real capture
    (bench/make_big_log.py, 500 users, seed 1): big enough to meet every
    record shape many times, built once per session on any clone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import make_big_log

    out = tmp_path_factory.mktemp("big") / "big.log"
    make_big_log.make(out, capture="debug", size=2_000_000, users=500, seed=1)
    return out
