#!/usr/bin/env bash
# Every benchmark of bench/README.md, one JSON line each (stdout, and appended to $OUT).
#
#   bash bench/run_all.sh                       # published figures (~10 min on 2 cores)
#   SIZE=64MiB REQUESTS=50000 bash bench/run_all.sh   # quick look
#
# SIZE       replay throughput log size (default 1GiB)
# REQUESTS   requests in the RSS log (default 1000000), USERS distinct users (10000)
# LAG_REQUESTS requests per lag mode (default 100)
# OUT        results file (default /tmp/vllm-audit-bench.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SIZE=${SIZE:-1GiB}
REQUESTS=${REQUESTS:-1000000}
USERS=${USERS:-10000}
LAG_REQUESTS=${LAG_REQUESTS:-100}
OUT=${OUT:-/tmp/vllm-audit-bench.jsonl}

echo "# $(date -u +%FT%TZ) nproc=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) python=$($PY -V 2>&1)" | tee -a "$OUT" >&2
run() {
  echo "## $*" >&2
  local start=$SECONDS
  "$PY" "$@" | tee -a "$OUT"
  echo "## done in $((SECONDS - start)) s" >&2
}
run bench/replay_throughput.py --size "$SIZE" --capture debug
run bench/rss.py --requests "$REQUESTS" --users "$USERS"
run bench/lag.py --requests "$LAG_REQUESTS"
run bench/tlog_cost.py --size "${TLOG_SIZE:-32MiB}"
echo "# results appended to $OUT" >&2
