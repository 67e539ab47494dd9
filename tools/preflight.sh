#!/usr/bin/env bash
# Host checks before `docker compose up` of this stack (docs/operations.md,
# "Before the first start"). Prints one line per check, exits 1 if any FAILs.
#
#   tools/preflight.sh          # GPU host (compose.yaml)
#   tools/preflight.sh --cpu    # compose.yaml + compose.cpu.yaml: no NVIDIA checks
#   ENV_FILE=path tools/preflight.sh
#
# Checks: Docker Compose plugin >= 2.24 (configs.content needs 2.23.1,
# `!reset` 2.18, env-sourced secrets 2.6.1; Debian's `docker-compose` 1.29 is
# Compose v1 and supports none of them); .env has every required secret;
# NVIDIA driver >= 580 (vLLM 0.32/0.33 images are CUDA 13 builds) and the
# NVIDIA Container Toolkit (the `driver: nvidia` device reservation);
# SELinux: enforcing hosts need the `z` relabel on bind mounts (compose.yaml
# has it; this says whether it matters here).
set -u
MIN_COMPOSE=2.24.0
MIN_DRIVER=580
REQUIRED="VLLM_AUDIT_API_KEY_SALT VLLM_AUDIT_OPENWEBUI_JWT_SECRET VLLM_AUDIT_HMAC_KEY WEBUI_SECRET_KEY GRAFANA_ADMIN_PASSWORD"
cd "$(dirname "$0")/.." || exit 2
ENV_FILE=${ENV_FILE:-.env}
cpu=0
[ "${1:-}" = "--cpu" ] && cpu=1
failed=0
ok()   { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failed=1; }
info() { echo "info  $*"; }

version_ge() {  # version_ge A B: A >= B (dotted numbers, a leading v ignored)
  [ "$(printf '%s\n%s\n' "${2#v}" "${1#v}" | sort -t. -k1,1n -k2,2n -k3,3n | head -n1)" = "${2#v}" ]
}

# 1. Docker Compose
if ! command -v docker >/dev/null 2>&1; then
  fail "docker not found (install Docker Engine and the Compose plugin >= $MIN_COMPOSE)"
elif ! v=$(docker compose version --short 2>/dev/null) || [ -z "$v" ]; then
  fail "'docker compose' (the v2 plugin) not available; docker-compose v1 cannot run this file (need >= $MIN_COMPOSE)"
elif version_ge "$v" "$MIN_COMPOSE"; then
  ok "Docker Compose $v (>= $MIN_COMPOSE)"
else
  fail "Docker Compose $v is older than $MIN_COMPOSE (configs.content, !reset, env secrets)"
fi

# 2. .env: required secrets
if [ ! -f "$ENV_FILE" ]; then
  fail "$ENV_FILE missing: cp .env.example .env and fill in the (required) values"
else
  for var in $REQUIRED; do
    value=$(sed -n "s/^${var}=//p" "$ENV_FILE" | tail -n1 | tr -d '"'"'"' \r')
    if [ -n "$value" ]; then ok "$var is set"; else fail "$var is empty in $ENV_FILE (openssl rand -hex 32)"; fi
  done
fi

# 3. NVIDIA
if [ "$cpu" = 1 ]; then
  info "--cpu: NVIDIA checks skipped (use -f compose.yaml -f compose.cpu.yaml)"
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    fail "nvidia-smi not found: no NVIDIA driver (need >= $MIN_DRIVER), or use --cpu and compose.cpu.yaml"
  else
    drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
    if [ -z "$drv" ]; then fail "nvidia-smi found no GPU"
    elif [ "${drv%%.*}" -ge "$MIN_DRIVER" ] 2>/dev/null; then ok "NVIDIA driver $drv (>= $MIN_DRIVER, CUDA 13)"
    else fail "NVIDIA driver $drv is older than $MIN_DRIVER (the vLLM image is a CUDA 13 build)"; fi
  fi
  if command -v docker >/dev/null 2>&1 && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    ok "NVIDIA Container Toolkit: docker has the nvidia runtime"
  elif command -v nvidia-ctk >/dev/null 2>&1; then
    fail "nvidia-ctk is installed but docker has no nvidia runtime: sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
  else
    fail "NVIDIA Container Toolkit missing (install nvidia-container-toolkit, then nvidia-ctk runtime configure)"
  fi
fi

# 4. SELinux
if command -v getenforce >/dev/null 2>&1 && [ "$(getenforce 2>/dev/null)" = "Enforcing" ]; then
  info "SELinux is enforcing: compose.yaml's bind mounts carry 'z' (relabelled for containers); keep it on any mount you add"
else
  ok "SELinux not enforcing (the 'z' on bind mounts is a no-op)"
fi

[ "$failed" = 0 ] && echo "preflight: ready for docker compose up" || echo "preflight: fix the FAIL lines first"
exit "$failed"
