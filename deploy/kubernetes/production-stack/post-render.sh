#!/bin/sh
# helm --post-renderer for vLLM's production-stack chart (README "Kubernetes"):
#   helm install vllm vllm/vllm-stack -f deploy/kubernetes/production-stack/values.yaml \
#     --post-renderer deploy/kubernetes/production-stack/post-render.sh
# Reads helm's rendered manifests on stdin, writes them with the exporter
# sidecar and the monitoring resources on stdout. Needs kubectl (its kustomize).
# Works on a copy: the checkout is never written to.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -R "$here/../monitoring" "$tmp/monitoring"
cp -R "$here" "$tmp/production-stack"
cat > "$tmp/production-stack/helm-output.yaml"
kubectl kustomize "$tmp/production-stack"
