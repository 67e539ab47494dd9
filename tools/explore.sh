#!/usr/bin/env bash
# Wide Hypothesis exploration, outside CI's pass/fail (CI runs the
# derandomized "ci" profile). Random seeds, at least
# VLLM_AUDIT_HYPOTHESIS_EXAMPLES (default 10000) examples per property.
# A failure prints the example and a @reproduce_failure blob: keep it as an
# @example on the property so CI checks it from then on.
#   bash tools/explore.sh                          every property test
#   bash tools/explore.sh tests/test_compliance_policy.py -k never_leaks
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- tests/test_compliance_policy.py tests/test_parse_fuzz.py tests/test_middleware_fuzz.py \
  tests/test_loki_entries.py tests/test_metrics.py tests/test_tail_faults.py tests/test_pyrepr.py
VLLM_AUDIT_HYPOTHESIS=explore exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
