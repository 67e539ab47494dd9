"""Loki self-metrics (names are public, docs/design.md) and /health status."""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Counter, Gauge

from .client import FAILURE_REASONS

DEAD_LETTER_REASONS = ("line_too_long", "invalid_record", "invalid_timestamp", "invalid_labels",
                       "too_old", "too_far_in_future", "too_far_behind", "rejected")


class LokiMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.entries = Counter("vllm_audit_loki_entries_pushed", "Entries Loki acknowledged (204)",
                               registry=registry)
        self.bytes = Counter("vllm_audit_loki_bytes_pushed",
                             "Uncompressed line bytes of acknowledged entries", registry=registry)
        self.failures = Counter("vllm_audit_loki_push_failures", "Failed push attempts by reason",
                                ["reason"], registry=registry)
        self.retries = Counter("vllm_audit_loki_retries", "Push attempts that repeat a failed one",
                               registry=registry)
        self.backlog = Gauge("vllm_audit_loki_backlog_records",
                             "Archive records not yet acknowledged by Loki", registry=registry)
        self.dead_letters = Counter("vllm_audit_loki_dead_letters",
                                    "Records Loki will never accept, written to dead-letter/",
                                    ["reason"], registry=registry)
        self.last_success = Gauge("vllm_audit_loki_last_success_timestamp_seconds",
                                  "Unix time of the last acknowledged push", registry=registry)
        # Known label values exported as 0 so rate()/alerts work from the start.
        for r in FAILURE_REASONS:
            self.failures.labels(reason=r)
        for r in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=r)
