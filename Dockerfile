# vllm-audit-exporter image (compose.yaml service `exporter`).
#   docker build -t vllm-audit-exporter .
FROM python:3.12-slim AS build
# A C compiler for the optional accelerators (exporter/parse/_scan.c, README
# "Parser fast path"; exporter/transparency/_leaf.c, which needs OpenSSL's
# headers: "Transparency log fast path"), in this stage only: the image gets
# the built modules (and the slim image's own libcrypto), no compiler.
# Without one the install still succeeds (pure Python).
RUN (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
     && rm -rf /var/lib/apt/lists/*) || echo "no C compiler: the parser runs in pure Python"
WORKDIR /src
COPY pyproject.toml setup.py README.md* ./
COPY exporter ./exporter
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
COPY --from=build /install /usr/local
# The stat-logger plugin's entry point for the package copied, not installed,
# into vLLM's image (deploy/kubernetes' install-middleware init container
# copies it beside the package; compose mounts the same directory).
COPY vllm-plugin /usr/local/share/vllm-audit/vllm-plugin
# Runs as uid 10001, group 0: the audit middleware writes its file 0640 as
# root inside the vLLM container, readable through the group. /alerts is the
# alert-log service's volume (compose.yaml); a new named volume takes this owner.
RUN mkdir -p /archive /alerts && chown 10001:0 /archive /alerts && chmod 0770 /archive /alerts
# /signing: the signing key's volume (compose.yaml), the exporter's only.
RUN mkdir -p /signing && chown 10001:0 /signing && chmod 0700 /signing
USER 10001:0
VOLUME ["/archive"]
EXPOSE 9400
ENTRYPOINT ["vllm-audit-exporter"]
CMD ["run", "--help"]
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/health', timeout=5)"]
