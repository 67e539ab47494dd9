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
servers the live tests started instead of leaving them running.
"""

from __future__ import annotations

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
