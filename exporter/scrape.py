"""Scrape vLLM's own ``/metrics`` for liveness and a completeness figure.

Decision: vLLM's series are **not** re-exposed. Prometheus should scrape vLLM
directly; re-exposing would double ingestion of every ``vllm:*`` series and
hide vLLM's real ``up`` behind the exporter's. The exporter scrapes only to
answer two questions of its own:

- is vLLM reachable (``vllm_audit_vllm_up``, and ``/health``);
- how many requests has vLLM finished (``vllm_audit_vllm_requests_finished``,
  the sum of ``vllm:request_success_total`` over every label set), so an
  alert can compare it with ``vllm_audit_requests_total`` and notice request
  logging that was switched off or lines that never reached the exporter.

``scrape_once()`` is synchronous and blocking; run it off the event loop
(a thread or ``asyncio.to_thread``) every scrape interval. Failed scrapes
set up to 0 rather than failing the exporter's own ``/metrics`` (the
``*_up`` pattern of the Prometheus exporter guide, because the request
metrics are still useful while vLLM is down).

Sample exposition::

    # HELP vllm_audit_vllm_up 1 if the last scrape of vLLM /metrics succeeded, else 0.
    # TYPE vllm_audit_vllm_up gauge
    vllm_audit_vllm_up 1.0
    # HELP vllm_audit_vllm_scrape_duration_seconds Duration of the last scrape of vLLM /metrics.
    # TYPE vllm_audit_vllm_scrape_duration_seconds gauge
    vllm_audit_vllm_scrape_duration_seconds 0.0042
    # HELP vllm_audit_vllm_scrape_errors_total Failed scrapes of vLLM /metrics.
    # TYPE vllm_audit_vllm_scrape_errors_total counter
    vllm_audit_vllm_scrape_errors_total 0.0
    # HELP vllm_audit_vllm_requests_finished Sum of vllm:request_success_total at the last successful scrape.
    # TYPE vllm_audit_vllm_requests_finished gauge
    vllm_audit_vllm_requests_finished 1234.0

Absent series mean "unknown": ``up`` and the duration appear after the first
attempt; ``requests_finished`` only while the last scrape succeeded and vLLM
exposed the counter (a stale value would mislead a completeness alert).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

import httpx
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

# Classic text format first: it is what every vLLM version serves by default.
ACCEPT = "text/plain;version=0.0.4;q=1.0, application/openmetrics-text;version=1.0.0;q=0.5"
# The parser drops a counter's _total from the family name when a TYPE line is
# present; an untyped sample keeps it. Accept both spellings.
_SUCCESS_FAMILIES = ("vllm:request_success", "vllm:request_success_total")
_SUCCESS_SAMPLES = ("vllm:request_success_total", "vllm:request_success")


@dataclass(frozen=True)
class ScrapeStatus:
    """Outcome of the last scrape; replaced whole, so readers see one state."""

    up: bool | None = None  # None: not scraped yet
    attempts: int = 0
    consecutive_failures: int = 0
    last_attempt_unix: float | None = None
    last_success_unix: float | None = None
    duration_seconds: float | None = None
    error: str | None = None
    requests_finished: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def metrics_url(url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/metrics`` -> the /metrics URL."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"vLLM URL must be http(s)://host[:port][/metrics], got {url!r}")
    base = url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def sum_request_success(text: str, openmetrics: bool = False) -> float | None:
    """Sum of ``vllm:request_success_total`` over all label sets in an
    exposition; ``None`` when the family is not there at all."""
    parse = om_parser.text_string_to_metric_families if openmetrics else text_string_to_metric_families
    total, found = 0.0, False
    for family in parse(text):
        if family.name in _SUCCESS_FAMILIES:
            found = True
            total += sum(s.value for s in family.samples if s.name in _SUCCESS_SAMPLES)
    return total if found else None


class VllmScraper(Collector):
    """Scrapes ``<url>/metrics``; registers its own four series on ``registry``."""

    def __init__(self, url: str, registry: CollectorRegistry, *, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 5.0,
                 wallclock: Callable[[], float] = time.time):
        self.url = metrics_url(url)
        self.timeout = timeout
        self._client = client if client is not None else httpx.Client()
        self._owns_client = client is None
        self._clock = clock
        self._wallclock = wallclock
        self._errors = 0
        self.last_scrape = ScrapeStatus()
        registry.register(self)

    def scrape_once(self) -> ScrapeStatus:
        """Fetch and parse once; never raises for vLLM-side problems."""
        start = self._clock()
        try:
            resp = self._client.get(self.url, timeout=self.timeout, headers={"Accept": ACCEPT})
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code} from {self.url}")
            openmetrics = resp.headers.get("content-type", "").startswith("application/openmetrics-text")
            finished = sum_request_success(resp.text, openmetrics)
            error = None
        # Anything that goes wrong here (connection refused, timeout, a 5xx, an
        # exposition the parser rejects) means the same thing to an operator:
        # vLLM's /metrics is not usable right now. Record it and carry on.
        except Exception as exc:  # noqa: BLE001
            finished, error = None, f"{type(exc).__name__}: {exc}"[:500]
        duration = max(0.0, self._clock() - start)
        prev = self.last_scrape
        now = self._wallclock()
        if error is None:
            status = replace(prev, up=True, attempts=prev.attempts + 1, consecutive_failures=0,
                             last_attempt_unix=now, last_success_unix=now,
                             duration_seconds=duration, error=None, requests_finished=finished)
        else:
            self._errors += 1
            status = replace(prev, up=False, attempts=prev.attempts + 1,
                             consecutive_failures=prev.consecutive_failures + 1,
                             last_attempt_unix=now, duration_seconds=duration, error=error,
                             requests_finished=None)
        self.last_scrape = status
        return status

    def collect(self) -> Iterable[Metric]:
        status, errors = self.last_scrape, self._errors
        if status.up is not None:
            yield GaugeMetricFamily("vllm_audit_vllm_up",
                                    "1 if the last scrape of vLLM /metrics succeeded, else 0.",
                                    value=1.0 if status.up else 0.0)
            yield GaugeMetricFamily("vllm_audit_vllm_scrape_duration_seconds",
                                    "Duration of the last scrape of vLLM /metrics.",
                                    value=status.duration_seconds)
        yield CounterMetricFamily("vllm_audit_vllm_scrape_errors_total",
                                  "Failed scrapes of vLLM /metrics.", value=errors)
        if status.up and status.requests_finished is not None:
            yield GaugeMetricFamily(
                "vllm_audit_vllm_requests_finished",
                "Sum of vllm:request_success_total at the last successful scrape.",
                value=status.requests_finished)

    def describe(self) -> Iterable[Metric]:
        # Fixed names, without calling collect() at registration time.
        yield GaugeMetricFamily("vllm_audit_vllm_up", "")
        yield GaugeMetricFamily("vllm_audit_vllm_scrape_duration_seconds", "")
        yield CounterMetricFamily("vllm_audit_vllm_scrape_errors_total", "")
        yield GaugeMetricFamily("vllm_audit_vllm_requests_finished", "")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
