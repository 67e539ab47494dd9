"""vllm-audit-exporter: one audit record per vLLM request.

Kept deliberately empty of imports: vLLM loads ``exporter.middleware`` from
this package inside its own process, and ``import exporter`` must not pull in
FastAPI, prometheus_client or transformers.
"""

__version__ = "0.1.0"
PROG = "vllm-audit-exporter"  # the command's name, in messages and --help
