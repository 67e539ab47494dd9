"""The transparency log's counters on the exporter's registry, read at scrape
time (the log itself stays free of prometheus_client)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class LogCollector:
    def __init__(self, log, registry=None) -> None:
        self._log = log
        if registry is not None:
            registry.register(self)

    def describe(self):
        return list(self._families())

    def _families(self):
        yield CounterMetricFamily("vllm_audit_checkpoints_signed", "Signed checkpoints written (heartbeats included).")
        yield CounterMetricFamily("vllm_audit_checkpoint_sign_failures",
                                  "Checkpoints not signed when due, by reason (io, behind, forked).",
                                  labels=["reason"])
        yield GaugeMetricFamily("vllm_audit_signed_tree_size", "Records covered by the newest signed checkpoint.")
        yield GaugeMetricFamily("vllm_audit_last_signed_checkpoint_timestamp_seconds",
                                "Unix time of the newest checkpoint this process signed.")

    def collect(self):
        log = self._log
        signed, failures, size, last = self._families()
        signed.add_metric([], float(log.signed))
        for reason, n in sorted(log.failures.items()):
            failures.add_metric([reason], float(n))
        out = [signed, failures]
        if log.signed_size is not None:
            size.add_metric([], float(log.signed_size))
            out.append(size)
        if log.last_signed_unix is not None:
            last.add_metric([], log.last_signed_unix)
            out.append(last)
        return out
