"""vLLM /metrics scraper, against a MockTransport serving real-format text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from exporter.scrape import VllmScraper, metrics_url, sum_request_success

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.32.0"

# Names, labels and layout as vLLM 0.32/0.33 exposes them through
# prometheus_client (docs: vllm-surface.md section 7): counters with _total and
# _created, two engines, finished_reason on request_success.
EXCERPT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 120.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7953e+09
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 2.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny"} 1.0
vllm:request_success_total{engine="1",finished_reason="stop",model_name="tiny"} 5.0
# HELP vllm:request_success_created Count of successfully processed requests.
# TYPE vllm:request_success_created gauge
vllm:request_success_created{engine="0",finished_reason="stop",model_name="tiny"} 1.7953e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="tiny"} 3.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 10.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny"} 10.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="tiny"} 9.5
"""
EXCERPT_TOTAL = 15.0


class Clock:
    """Advances by ``step`` on every call: scrape duration = step."""

    def __init__(self, step: float = 0.25):
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def scraper_for(handler, url="http://vllm:8000"):
    registry = CollectorRegistry()
    client = httpx.Client(transport=httpx.MockTransport(handler))
    scraper = VllmScraper(url, registry, client=client, clock=Clock(), wallclock=lambda: 1_790_000_000.0)
    return scraper, registry


def serve(text: str, status: int = 200, content_type: str = "text/plain; version=0.0.4"):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text=text, headers={"content-type": content_type})
    handler.seen = seen
    return handler


def sample(registry, name):
    return registry.get_sample_value(name)


@pytest.mark.parametrize("url", ["http://vllm:8000", "http://vllm:8000/", "http://vllm:8000/metrics"])
def test_url_forms(url):
    assert metrics_url(url) == "http://vllm:8000/metrics"


def test_bad_url_fails_at_startup():
    with pytest.raises(ValueError, match="http"):
        metrics_url("vllm:8000")


def test_successful_scrape():
    handler = serve(EXCERPT)
    scraper, reg = scraper_for(handler)
    assert sample(reg, "vllm_audit_vllm_up") is None  # not scraped yet: unknown, not "down"
    status = scraper.scrape_once()
    assert handler.seen[0].url == "http://vllm:8000/metrics"
    assert handler.seen[0].headers["accept"].startswith("text/plain")
    assert status.up and status.error is None and status.attempts == 1
    assert status.last_success_unix == 1_790_000_000.0
    assert sample(reg, "vllm_audit_vllm_up") == 1
    assert sample(reg, "vllm_audit_vllm_scrape_duration_seconds") == 0.25
    assert sample(reg, "vllm_audit_vllm_scrape_errors_total") == 0
    assert sample(reg, "vllm_audit_vllm_requests_finished") == EXCERPT_TOTAL


@pytest.mark.parametrize("response, error", [
    (httpx.Response(503, text="starting"), "HTTP 503"),
    (httpx.ConnectError("connection refused"), "ConnectError"),
    (httpx.Response(200, text="vllm:request_success_total{oops 1\n"), "ValueError"),
])
def test_failed_scrape(response, error):
    def handler(request):
        if isinstance(response, Exception):
            raise response
        return response
    scraper, reg = scraper_for(handler)
    status = scraper.scrape_once()
    assert status.up is False and error in status.error and status.consecutive_failures == 1
    assert sample(reg, "vllm_audit_vllm_up") == 0
    assert sample(reg, "vllm_audit_vllm_scrape_errors_total") == 1
    # A stale completeness figure would mislead an alert: drop it.
    assert sample(reg, "vllm_audit_vllm_requests_finished") is None


def test_recovery_keeps_error_count_and_last_success():
    state = {"fail": False}

    def handler(request):
        if state["fail"]:
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(200, text=EXCERPT)
    scraper, reg = scraper_for(handler)
    scraper.scrape_once()
    state["fail"] = True
    scraper.scrape_once()
    down = scraper.scrape_once()
    assert down.consecutive_failures == 2 and down.last_success_unix == 1_790_000_000.0
    state["fail"] = False
    up = scraper.scrape_once()
    assert up.up and up.consecutive_failures == 0 and up.attempts == 4
    assert sample(reg, "vllm_audit_vllm_scrape_errors_total") == 2
    assert sample(reg, "vllm_audit_vllm_requests_finished") == EXCERPT_TOTAL


def test_untyped_and_missing_family():
    # Without a TYPE line the parser keeps the _total in the family name.
    assert sum_request_success('vllm:request_success_total{finished_reason="stop"} 4\n') == 4
    # vLLM up but no such family (renamed, or not a vLLM): unknown, not 0.
    scraper, reg = scraper_for(serve("# TYPE other gauge\nother 1\n"))
    assert scraper.scrape_once().up
    assert sample(reg, "vllm_audit_vllm_requests_finished") is None


def test_openmetrics_response():
    text = ("# TYPE vllm:request_success counter\n"
            'vllm:request_success_total{finished_reason="stop"} 3.0\n'
            'vllm:request_success_created{finished_reason="stop"} 1.7e+09\n# EOF\n')
    scraper, reg = scraper_for(serve(text, content_type="application/openmetrics-text; version=1.0.0"))
    assert scraper.scrape_once().up
    assert sample(reg, "vllm_audit_vllm_requests_finished") == 3


@pytest.mark.parametrize("capture", ["info", "debug"])
def test_real_vllm_capture(capture):
    """Real /metrics captured from vLLM 0.32.0 (tests/fixtures): the figure is
    the plain sum of every ``vllm:request_success_total`` line, computed here
    without prometheus_client's parser."""
    text = (FIXTURES / capture / "metrics.txt").read_text()
    expected = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))
    assert expected > 0
    scraper, reg = scraper_for(serve(text))
    status = scraper.scrape_once()
    assert status.up, status.error
    assert sample(reg, "vllm_audit_vllm_requests_finished") == expected
