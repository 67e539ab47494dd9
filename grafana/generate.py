"""Generate the vllm-audit Grafana dashboards.

The JSON files in grafana/dashboards/ are written by this script. Edit the
panels here and re-run it instead of editing the JSON.

Usage:
    python grafana/generate.py           # write grafana/dashboards/*.json
    python grafana/generate.py --check   # fail if the JSON is stale or a panel
                                         # queries an unknown metric

``--check`` fails when
- a committed dashboard differs from what this script generates;
- a PromQL expression does not parse (promql-parser), after Grafana's
  variables are replaced by sample values (SAMPLE_VARS);
- a PromQL expression queries a metric that neither the exporter (the
  metric list in docs/design.md) nor vLLM (VLLM_METRICS) exposes, nor a
  recording rule in prometheus/rules/ defines (EXTRA_METRICS lists the few
  others: Prometheus' own `up`/`ALERTS`, the optional DCGM exporter).
LogQL expressions are parsed by tests/test_stack_logql.py (Grafana's own
grammar runs on node, see tools/logql/).

Datasources are referenced by the fixed UIDs provisioned in
grafana/provisioning/datasources/datasources.yml.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "grafana" / "dashboards"

PROM = {"type": "prometheus", "uid": "vllm-audit-prometheus"}
LOKI = {"type": "loki", "uid": "vllm-audit-loki"}

TAG = "vllm-audit"
UID_OVERVIEW = "vllm-audit-overview"
UID_USERS = "vllm-audit-users"
UID_AUDIT = "vllm-audit-log"

# Loki stream selector of the exporter's records (exporter/loki/entries.py).
# `vllm_instance` is the replica (the exporter's --instance); `=~".*"` also
# matches streams without it (one replica, no --instance).
STREAM = ('service_name="vllm-audit", vllm_instance=~"$vllm_instance", model=~"$model", '
          'user=~"$user"')

# vLLM /metrics names the dashboards may use (exposed names; vLLM 0.32/0.33,
# V1 engine, labels model_name and engine). Histograms are listed by base
# name; _bucket/_sum/_count are implied.
VLLM_METRICS = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds", "vllm:request_queue_time_seconds",
    "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
})

# NVIDIA dcgm-exporter default counters (compose profile gpu-metrics).
DCGM_METRICS = frozenset({
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
})
EXTRA_METRICS = frozenset({"up", "ALERTS"}) | DCGM_METRICS

# Values Grafana would interpolate, used to parse and evaluate expressions.
SAMPLE_VARS = {
    "$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$__auto": "1m",
    "$vllm_instance": ".*", "$model": ".*", "$user": ".*", "$status": ".*", "$search": "", "$topn": "10",
    "$price_prompt_per_1k": "0.001", "$price_completion_per_1k": "0.002",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- panels

class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, panel: dict, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title: str) -> dict:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"type": "row", "title": title, "collapsed": False, "panels": []}
        self.place(panel, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0
        return panel


def prom(expr: str, legend: str = "", *, instant: bool = False, fmt: str | None = None) -> dict:
    target = {"datasource": PROM, "expr": expr, "legendFormat": legend or "__auto",
              "range": not instant, "instant": instant}
    if fmt:
        target["format"] = fmt
    return target


def loki(expr: str, legend: str = "", *, query_type: str = "range") -> dict:
    return {"datasource": LOKI, "expr": expr, "legendFormat": legend, "queryType": query_type}


def _panel(kind: str, title: str, description: str, targets: list[dict], ds: dict) -> dict:
    for i, target in enumerate(targets):
        target["refId"] = chr(ord("A") + i)
    return {"type": kind, "title": title, "description": description, "datasource": ds,
            "targets": targets}


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short", *,
               stack: bool = False, ds: dict = PROM) -> dict:
    panel = _panel("timeseries", title, description, targets, ds)
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    panel["fieldConfig"] = {"defaults": {"unit": unit, "custom": custom}, "overrides": []}
    panel["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["mean", "max"], "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel


def stat(title: str, description: str, targets: list[dict], unit: str = "short", *,
         thresholds: list[tuple[float | None, str]] = ((None, "green"),),
         mappings: list[dict] | None = None) -> dict:
    panel = _panel("stat", title, description, targets, PROM)
    panel["fieldConfig"] = {"defaults": {
        "unit": unit, "mappings": mappings or [],
        "thresholds": {"mode": "absolute",
                       "steps": [{"color": c, "value": v} for v, c in thresholds]}},
        "overrides": []}
    panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"}
    return panel


def bargauge(title: str, description: str, targets: list[dict], unit: str = "short") -> dict:
    panel = _panel("bargauge", title, description, targets, PROM)
    panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    panel["options"] = {"orientation": "horizontal", "displayMode": "gradient",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return panel


def table(title: str, description: str, targets: list[dict], *, ds: dict = PROM,
          transformations: list[dict] | None = None, overrides: list[dict] | None = None) -> dict:
    panel = _panel("table", title, description, targets, ds)
    panel["fieldConfig"] = {"defaults": {}, "overrides": overrides or []}
    panel["options"] = {"showHeader": True, "cellHeight": "sm"}
    panel["transformations"] = transformations or []
    return panel


def logs(title: str, description: str, targets: list[dict]) -> dict:
    panel = _panel("logs", title, description, targets, LOKI)
    panel["options"] = {"showTime": True, "wrapLogMessage": True, "prettifyLogMessage": False,
                        "enableLogDetails": True, "sortOrder": "Descending", "dedupStrategy": "none"}
    return panel


def link_to(uid: str, title: str, params: str = "") -> dict:
    return {"title": title, "url": f"/d/{uid}/{uid}?${{__url_time_range}}{params}"}


# --------------------------------------------------------------------------- variables

def instance_var() -> dict:
    # The replica: prometheus.yml's static `vllm_instance` in compose, NAMESPACE/POD
    # from the Kubernetes PodMonitor. Every panel aggregates over the selection.
    q = 'label_values(up{job=~"vllm|vllm-audit-exporter"}, vllm_instance)'
    return {"name": "vllm_instance", "label": "Replica", "type": "query", "datasource": PROM,
            "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": q, "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def model_var() -> dict:
    q = 'label_values(vllm_audit_requests_total{vllm_instance=~"$vllm_instance"}, model)'
    return {"name": "model", "label": "Model", "type": "query", "datasource": PROM,
            "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": q, "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def user_var() -> dict:
    q = 'label_values(vllm_audit_requests_total{model=~"$model"}, user)'
    return {"name": "user", "label": "User", "type": "query", "datasource": PROM,
            "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": q, "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def custom_var(name: str, label: str, values: list[str], *, default: str | None = None,
               multi: bool = False) -> dict:
    var = {"name": name, "label": label, "type": "custom", "query": ",".join(values),
           "multi": multi, "includeAll": multi,
           "options": [{"text": v, "value": v, "selected": v == default} for v in values]}
    if multi:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        var["current"] = {"selected": True, "text": default, "value": default}
    return var


def textbox_var(name: str, label: str, default: str, description: str) -> dict:
    return {"name": name, "label": label, "type": "textbox", "query": default,
            "description": description,
            "current": {"selected": False, "text": default, "value": default}}


# --------------------------------------------------------------------------- dashboards

def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict]) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": [TAG],
        "editable": True, "graphTooltip": 1, "timezone": "browser", "refresh": "30s",
        "schemaVersion": 39, "version": 1, "fiscalYearStartMonth": 0, "liveNow": False,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": False, "includeVars": True,
                   "keepTime": True, "title": "vllm-audit dashboards", "icon": "external link",
                   "targetBlank": False, "tooltip": ""}],
        "templating": {"list": variables},
        "panels": panels,
    }


INST = 'vllm_instance=~"$vllm_instance"'  # the selected replicas
EXP = f'job="vllm-audit-exporter", {INST}'
SEL = f'{EXP}, model=~"$model"'          # exporter series of the selected models
VSEL = f'job="vllm", {INST}, model_name=~"$model"'  # vLLM series of the selected models


def overview() -> dict:
    lay = Layout()
    p = []
    up_map = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                            "1": {"text": "UP", "color": "green"}}}]
    p.append(lay.row("Health"))
    p.append(lay.place(stat("vLLM", "Prometheus scrape of vLLM (`up{job=\"vllm\"}`).",
                            [prom(f'min(up{{job="vllm", {INST}}})', instant=True)],
                            thresholds=[(None, "red"), (1, "green")], mappings=up_map), 4, 4))
    p.append(lay.place(stat("Audit exporter", "Prometheus scrape of the exporter (`up`).",
                            [prom(f'min(up{{{EXP}}})', instant=True)],
                            thresholds=[(None, "red"), (1, "green")], mappings=up_map), 4, 4))
    p.append(lay.place(stat("Requests (range)", "Audit records in the time range (`vllm_audit_requests_total`).",
                            [prom(f'sum(increase(vllm_audit_requests_total{{{SEL}}}[$__range]))', instant=True)]),
                       4, 4))
    p.append(lay.place(stat("Unaudited (15m)", "vLLM-finished requests without an audit record, "
                            "recording rules behind the VllmAuditGap alert.",
                            [prom(f'sum(model:vllm_request_success:increase15m_offset5m{{{INST}, model=~"$model"}}) - '
                                  f'sum(model:vllm_audit_engine_requests:increase15m{{{INST}, model=~"$model"}})',
                                  instant=True)],
                            thresholds=[(None, "green"), (3, "red")]), 4, 4))
    p.append(lay.place(stat("Empty-response streak", "Longest current run of empty responses "
                            "(`vllm_audit_consecutive_empty_responses`); 5 pages.",
                            [prom(f'max(vllm_audit_consecutive_empty_responses{{{SEL}}})', instant=True)],
                            thresholds=[(None, "green"), (1, "orange"), (5, "red")]), 4, 4))
    p.append(lay.place(stat("Firing alerts", "Alerts firing in Prometheus (`ALERTS`).",
                            [prom('count(ALERTS{alertstate="firing", alertname=~"Vllm.*"}) or vector(0)',
                                  instant=True)],
                            thresholds=[(None, "green"), (1, "red")]), 4, 4))

    p.append(lay.row("Traffic (by model, summed over the selected replicas)"))
    p.append(lay.place(timeseries(
        "Requests/s by status", "Audited requests (`vllm_audit_requests_total`).",
        [prom(f'sum by (model, status) (rate(vllm_audit_requests_total{{{SEL}}}[$__rate_interval]))',
              "{{model}} {{status}}")], "reqps", stack=True), 8, 8))
    p.append(lay.place(timeseries(
        "Requests/s by replica", "Audited requests per replica (`vllm_instance`: the pod on "
        "Kubernetes); a replica whose line stays flat while others serve is worth a look.",
        [prom(f'sum by (vllm_instance) (rate(vllm_audit_requests_total{{{SEL}}}[$__rate_interval]))',
              "{{vllm_instance}}")], "reqps", stack=True), 8, 8))
    p.append(lay.place(timeseries(
        "Tokens/s in and out", "Prompt and completion tokens of audited requests "
        "(`vllm_audit_prompt_tokens_total`, `vllm_audit_completion_tokens_total`).",
        [prom(f'sum by (model) (rate(vllm_audit_prompt_tokens_total{{{SEL}}}[$__rate_interval]))',
              "{{model}} in"),
         prom(f'sum by (model) (rate(vllm_audit_completion_tokens_total{{{SEL}}}[$__rate_interval]))',
              "{{model}} out")], "short"), 8, 8))

    p.append(lay.row("Latency (vLLM engine)"))
    lat = []
    for q in ("0.5", "0.95", "0.99"):
        lat.append(prom(f'histogram_quantile({q}, sum by (model_name, le) '
                        f'(rate(vllm:e2e_request_latency_seconds_bucket{{{VSEL}}}[$__rate_interval])))',
                        f"{{{{model_name}}}} p{q[2:].ljust(2, '0')}"))
    p.append(lay.place(timeseries("End-to-end latency p50/p95/p99",
                                  "`vllm:e2e_request_latency_seconds` quantiles.", lat, "s"), 12, 8))
    ttft = []
    for q in ("0.5", "0.95", "0.99"):
        ttft.append(prom(f'histogram_quantile({q}, sum by (model_name, le) '
                         f'(rate(vllm:time_to_first_token_seconds_bucket{{{VSEL}}}[$__rate_interval])))',
                         f"{{{{model_name}}}} p{q[2:].ljust(2, '0')}"))
    p.append(lay.place(timeseries("Time to first token p50/p95/p99",
                                  "`vllm:time_to_first_token_seconds` quantiles.", ttft, "s"), 12, 8))
    phases = [prom(f'histogram_quantile(0.95, sum by (model, le) '
                   f'(rate(vllm_audit_engine_{phase}_seconds_bucket{{{SEL}}}[$__rate_interval])))',
                   f"{{{{model}}}} {phase} p95") for phase in ("queue", "prefill", "decode")]
    p.append(lay.place(timeseries(
        "Engine queue, prefill and decode p95", "Per audited request, as vLLM measured it (the "
        "stat-logger plugin): `vllm_audit_engine_queue_seconds`, `…_prefill_seconds`, "
        "`…_decode_seconds`.", phases, "s"), 24, 8))

    p.append(lay.row("Quality and errors"))
    p.append(lay.place(timeseries(
        "Empty and oversized responses/s", "`vllm_audit_empty_responses_total` and "
        "`vllm_audit_oversized_inputs_total` (status accepted as completed, or rejected).",
        [prom(f'sum by (model) (rate(vllm_audit_empty_responses_total{{{SEL}}}[$__rate_interval]))',
              "{{model}} empty"),
         prom(f'sum by (model, status) (rate(vllm_audit_oversized_inputs_total{{{SEL}}}[$__rate_interval]))',
              "{{model}} oversized {{status}}")], "reqps"), 12, 8))
    p.append(lay.place(timeseries(
        "Errors", "Share of audited requests with status error (recording rule "
        "`model:vllm_audit_requests_errors:ratio_rate5m`), and non-completed requests/s.",
        [prom(f'model:vllm_audit_requests_errors:ratio_rate5m{{{INST}, model=~"$model"}}',
              "{{vllm_instance}} {{model}} error ratio"),
         prom(f'sum by (model, status) (rate(vllm_audit_requests_total{{{SEL}, status!="completed"}}'
              f'[$__rate_interval]))', "{{model}} {{status}}/s")], "percentunit"), 12, 8))

    p.append(lay.row("Saturation (vLLM engine)"))
    p.append(lay.place(timeseries(
        "KV cache usage", "`vllm:kv_cache_usage_perc` (1 = full).",
        [prom(f'max by (model_name) (vllm:kv_cache_usage_perc{{{VSEL}}})', "{{model_name}}")],
        "percentunit"), 12, 8))
    p.append(lay.place(timeseries(
        "Queue", "`vllm:num_requests_waiting` and `vllm:num_requests_running`.",
        [prom(f'sum by (model_name) (vllm:num_requests_waiting{{{VSEL}}})', "{{model_name}} waiting"),
         prom(f'sum by (model_name) (vllm:num_requests_running{{{VSEL}}})', "{{model_name}} running")]),
        12, 8))

    p.append(lay.row("Audit pipeline"))
    p.append(lay.place(timeseries(
        "Log lines/s and parse errors", "`vllm_audit_log_lines_total`, `vllm_audit_parse_errors_total`.",
        [prom(f'sum by (source) (rate(vllm_audit_log_lines_total{{{EXP}}}[$__rate_interval]))', "{{source}}"),
         prom(f'sum by (reason) (rate(vllm_audit_parse_errors_total{{{EXP}}}[$__rate_interval]))',
              "parse error {{reason}}")]), 8, 8))
    p.append(lay.place(timeseries(
        "Loki backlog and failures", "`vllm_audit_loki_backlog_records`, "
        "`vllm_audit_loki_push_failures_total`.",
        [prom(f'sum(vllm_audit_loki_backlog_records{{{EXP}}})', "backlog"),
         prom(f'sum by (reason) (increase(vllm_audit_loki_push_failures_total{{{EXP}}}[$__rate_interval]))',
              "failures {{reason}}")]), 8, 8))
    p.append(lay.place(timeseries(
        "Requests: vLLM vs audited", "Engine-finished (`vllm:request_success_total`) against audit "
        "records (`vllm_audit_requests_total`).",
        [prom(f'sum(rate(vllm:request_success_total{{{VSEL}}}[$__rate_interval]))', "vLLM finished"),
         prom(f'sum(rate(vllm_audit_requests_total{{{SEL}}}[$__rate_interval]))', "audited")],
        "reqps"), 8, 8))

    p.append(lay.row("GPU (DCGM exporter, compose profile gpu-metrics)"))
    p.append(lay.place(timeseries("GPU utilisation", "`DCGM_FI_DEV_GPU_UTIL` (%).",
                                  [prom(f'DCGM_FI_DEV_GPU_UTIL{{job="dcgm", {INST}}}', "GPU {{gpu}}")], "percent"),
                       8, 8))
    p.append(lay.place(timeseries("GPU memory used", "`DCGM_FI_DEV_FB_USED` (MiB).",
                                  [prom(f'DCGM_FI_DEV_FB_USED{{job="dcgm", {INST}}}', "GPU {{gpu}}")], "decmbytes"),
                       8, 8))
    p.append(lay.place(timeseries("GPU power and temperature",
                                  "`DCGM_FI_DEV_POWER_USAGE` (W), `DCGM_FI_DEV_GPU_TEMP` (°C).",
                                  [prom(f'DCGM_FI_DEV_POWER_USAGE{{job="dcgm", {INST}}}', "GPU {{gpu}} W"),
                                   prom(f'DCGM_FI_DEV_GPU_TEMP{{job="dcgm", {INST}}}', "GPU {{gpu}} °C")]), 8, 8))
    return dashboard(UID_OVERVIEW, "vLLM audit / Overview",
                     "vLLM traffic, latency, errors and saturation, and the audit pipeline's health.",
                     p, [instance_var(), model_var()])


def users() -> dict:
    lay = Layout()
    u = f'{SEL}, user=~"$user"'
    prompt_range = f'sum by (user) (increase(vllm_audit_prompt_tokens_total{{{u}}}[$__range]))'
    compl_range = f'sum by (user) (increase(vllm_audit_completion_tokens_total{{{u}}}[$__range]))'
    cost = f'{prompt_range} / 1000 * $price_prompt_per_1k + {compl_range} / 1000 * $price_completion_per_1k'
    # GPU time: each request's share of engine busy time (stat-logger plugin),
    # priced by the exporter's --gpu-hour-price (README, "Engine time and cost").
    engine_range = f'sum by (user) (increase(vllm_audit_engine_seconds_total{{{u}}}[$__range]))'
    gpu_cost_range = f'sum by (user) (increase(vllm_audit_cost_total{{{u}}}[$__range]))'
    to_audit = [link_to(UID_AUDIT, "Audit log of ${__field.labels.user}",
                        "&var-user=${__field.labels.user}&${model:queryparam}")]
    p = [lay.row("Top users (time range)")]
    top_tokens = bargauge("Top users by tokens", "Prompt + completion tokens in the time range.",
                          [prom(f'topk($topn, {prompt_range} + {compl_range})', "{{user}}", instant=True)])
    top_tokens["fieldConfig"]["defaults"]["links"] = to_audit
    p.append(lay.place(top_tokens, 8, 10))
    top_req = bargauge("Top users by requests", "`vllm_audit_requests_total` in the time range.",
                       [prom(f'topk($topn, sum by (user) (increase(vllm_audit_requests_total{{{u}}}[$__range])))',
                             "{{user}}", instant=True)])
    top_req["fieldConfig"]["defaults"]["links"] = to_audit
    p.append(lay.place(top_req, 8, 10))
    top_cost = bargauge("Top users by cost", "Tokens priced with the dashboard variables "
                        "`price_prompt_per_1k` and `price_completion_per_1k` (per 1000 tokens).",
                        [prom(f'topk($topn, {cost})', "{{user}}", instant=True)], "currencyUSD")
    top_cost["fieldConfig"]["defaults"]["links"] = to_audit
    p.append(lay.place(top_cost, 8, 10))
    top_gpu = bargauge("Top users by GPU cost", "Each request's share of engine time priced at the "
                       "exporter's `--gpu-hour-price` (`vllm_audit_cost_total`).",
                       [prom(f'topk($topn, {gpu_cost_range})', "{{user}}", instant=True)], "currencyUSD")
    top_gpu["fieldConfig"]["defaults"]["links"] = to_audit
    p.append(lay.place(top_gpu, 12, 10))
    top_engine = bargauge("Top users by engine time", "Sum of each request's share of engine busy "
                          "time (`vllm_audit_engine_seconds_total`): every engine step split equally "
                          "among its batch.",
                          [prom(f'topk($topn, {engine_range})', "{{user}}", instant=True)], "s")
    top_engine["fieldConfig"]["defaults"]["links"] = to_audit
    p.append(lay.place(top_engine, 12, 10))
    p.append(lay.place(table(
        "Usage and cost per user", "Requests, tokens, token cost (dashboard prices), engine time "
        "and GPU cost (exporter's --gpu-hour-price) in the time range; click a user for the audit log.",
        [prom(f'sum by (user) (increase(vllm_audit_requests_total{{{u}}}[$__range]))', instant=True, fmt="table"),
         prom(prompt_range, instant=True, fmt="table"),
         prom(compl_range, instant=True, fmt="table"),
         prom(cost, instant=True, fmt="table"),
         prom(engine_range, instant=True, fmt="table"),
         prom(gpu_cost_range, instant=True, fmt="table")],
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "renameByName": {"Value #A": "requests", "Value #B": "prompt tokens",
                                 "Value #C": "completion tokens", "Value #D": "cost",
                                 "Value #E": "engine seconds", "Value #F": "GPU cost"}}},
            {"id": "sortBy", "options": {"sort": [{"field": "cost", "desc": True}]}}],
        overrides=[
            {"matcher": {"id": "byName", "options": "user"},
             "properties": [{"id": "links", "value": [link_to(
                 UID_AUDIT, "Audit log of ${__value.raw}",
                 "&var-user=${__value.raw}&${model:queryparam}")]}]},
            {"matcher": {"id": "byName", "options": "cost"},
             "properties": [{"id": "unit", "value": "currencyUSD"}, {"id": "decimals", "value": 4}]},
            {"matcher": {"id": "byName", "options": "GPU cost"},
             "properties": [{"id": "unit", "value": "currencyUSD"}, {"id": "decimals", "value": 4}]},
            {"matcher": {"id": "byName", "options": "engine seconds"},
             "properties": [{"id": "unit", "value": "s"}, {"id": "decimals", "value": 3}]}]),
        24, 9))

    p.append(lay.row("Over time"))
    p.append(lay.place(timeseries(
        "Requests/s per user", "`vllm_audit_requests_total`.",
        [prom(f'sum by (user) (rate(vllm_audit_requests_total{{{u}}}[$__rate_interval]))', "{{user}}")],
        "reqps", stack=True), 12, 8))
    p.append(lay.place(timeseries(
        "Tokens/s per user", "`vllm_audit_prompt_tokens_total` (in) and "
        "`vllm_audit_completion_tokens_total` (out).",
        [prom(f'sum by (user) (rate(vllm_audit_prompt_tokens_total{{{u}}}[$__rate_interval]))', "{{user}} in"),
         prom(f'sum by (user) (rate(vllm_audit_completion_tokens_total{{{u}}}[$__rate_interval]))',
              "{{user}} out")]), 12, 8))
    p.append(lay.place(timeseries(
        "Cost per hour per user", "Token rate priced with `price_prompt_per_1k` and "
        "`price_completion_per_1k`.",
        [prom(f'(sum by (user) (rate(vllm_audit_prompt_tokens_total{{{u}}}[$__rate_interval])) / 1000 * '
              f'$price_prompt_per_1k + sum by (user) (rate(vllm_audit_completion_tokens_total{{{u}}}'
              f'[$__rate_interval])) / 1000 * $price_completion_per_1k) * 3600', "{{user}}")],
        "currencyUSD", stack=True), 12, 8))
    p.append(lay.place(timeseries(
        "GPU cost per hour per user", "`vllm_audit_cost_total` rate × 3600: engine share priced at "
        "the exporter's `--gpu-hour-price`.",
        [prom(f'sum by (user) (rate(vllm_audit_cost_total{{{u}}}[$__rate_interval])) * 3600', "{{user}}")],
        "currencyUSD", stack=True), 12, 8))
    p.append(lay.place(timeseries(
        "Engine time per user", "`vllm_audit_engine_seconds_total` rate: seconds of engine time "
        "per second (stacked, at most the engine's busy fraction).",
        [prom(f'sum by (user) (rate(vllm_audit_engine_seconds_total{{{u}}}[$__rate_interval]))', "{{user}}")],
        "s", stack=True), 12, 8))
    p.append(lay.place(timeseries(
        "Mean latency per user", "`vllm_audit_user_request_duration_seconds_total` / "
        "`vllm_audit_user_timed_requests_total` (requests with a known latency only).",
        [prom(f'sum by (user) (rate(vllm_audit_user_request_duration_seconds_total{{{u}}}[$__rate_interval])) '
              f'/ sum by (user) (rate(vllm_audit_user_timed_requests_total{{{u}}}[$__rate_interval]))', "{{user}}")],
        "s"), 12, 8))
    p.append(lay.place(timeseries(
        "Empty responses and oversized inputs per user", "`vllm_audit_empty_responses_total`, "
        "`vllm_audit_oversized_inputs_total`.",
        [prom(f'sum by (user) (increase(vllm_audit_empty_responses_total{{{u}}}[$__rate_interval]))',
              "{{user}} empty"),
         prom(f'sum by (user, status) (increase(vllm_audit_oversized_inputs_total{{{u}}}[$__rate_interval]))',
              "{{user}} oversized {{status}}")]), 24, 8))

    p.append(lay.row("Identity provenance"))
    src = f'vllm_audit_identity_source_requests_total{{{SEL}}}'
    p.append(lay.place(stat(
        "Unverified identity (range)", "Share of requests whose `user` is not verified: "
        "`identity_source` other than `jwt` (Open WebUI's signed token) or `header_secret` "
        "(headers behind the shared secret), including requests with no user at all.",
        [prom(f'sum(increase(vllm_audit_identity_source_requests_total{{{SEL}, source!~"jwt|header_secret"}}'
              f'[$__range])) / sum(increase({src}[$__range]))', instant=True)],
        "percentunit", thresholds=[(None, "green"), (0.01, "orange"), (0.5, "red")]), 6, 8))
    p.append(lay.place(bargauge(
        "Requests by identity source", "`vllm_audit_identity_source_requests_total` in the time range: "
        "`jwt`, `header_secret`, `header`, `user_field`, `api_key`, `none` (README, Identity).",
        [prom(f'sum by (source) (increase({src}[$__range]))', "{{source}}", instant=True)]), 6, 8))
    p.append(lay.place(timeseries(
        "Identity source share", "Share of requests per `identity_source` "
        "(`source:vllm_audit_identity_source_requests:ratio_rate5m` over the model filter).",
        [prom(f'sum by (source) (rate({src}[$__rate_interval])) / ignoring (source) group_left '
              f'sum(rate({src}[$__rate_interval]))', "{{source}}")], "percentunit", stack=True), 6, 8))
    p.append(lay.place(timeseries(
        "Refused Open WebUI tokens", "`vllm_audit_identity_invalid_total` by reason (missing, expired, "
        "signature, ...): these requests have `user: null` and the flag `identity_invalid`.",
        [prom(f'sum by (reason) (increase(vllm_audit_identity_invalid_total{{{SEL}}}[$__rate_interval]))',
              "{{reason}}")], stack=True), 6, 8))
    return dashboard(UID_USERS, "vLLM audit / Users",
                     "Requests, tokens and cost per user (the `user` label is bounded by the exporter's "
                     "--max-users; overflow shows as __other__).",
                     p, [instance_var(), model_var(), user_var(),
                         custom_var("topn", "Top N", ["5", "10", "20", "50"], default="10"),
                         textbox_var("price_prompt_per_1k", "Price / 1k prompt tokens", "0.001",
                                     "Price of 1000 prompt tokens, in your currency"),
                         textbox_var("price_completion_per_1k", "Price / 1k completion tokens", "0.002",
                                     "Price of 1000 completion tokens, in your currency")])


# Non-empty `flags` array in the compact record JSON. A prompt containing the
# same text is JSON-escaped (\") inside the line and cannot match.
FLAGGED = '|~ `"flags":\\["`'


def audit_log() -> dict:
    lay = Layout()
    base = f'{{{STREAM}}}'
    p = [lay.row("Records")]
    p.append(lay.place(timeseries(
        "Records by status", "Audit records in Loki (`count_over_time`), by `status`.",
        [loki(f'sum by (status) (count_over_time({base} | json | status=~"$status" [$__interval]))',
              "{{status}}")], stack=True, ds=LOKI), 12, 7))
    p.append(lay.place(timeseries(
        "Flagged records", "Records whose `flags` list is not empty.",
        [loki(f'sum by (model) (count_over_time({base} {FLAGGED} [$__interval]))', "{{model}}")],
        stack=True, ds=LOKI), 12, 7))
    p.append(lay.place(timeseries(
        "Flags/s by flag", "`vllm_audit_flags_total` (Prometheus).",
        [prom(f'sum by (flag) (rate(vllm_audit_flags_total{{{SEL}}}[$__rate_interval]))', "{{flag}}")],
        "reqps", stack=True), 24, 7))
    p.append(lay.place(table(
        "Flagged requests", "Records with at least one flag (detectors and data-quality flags).",
        [loki(f'{base} {FLAGGED} |= "$search" | json | status=~"$status"')],
        ds=LOKI,
        transformations=[
            {"id": "extractFields", "options": {"source": "Line", "format": "json", "replace": False,
                                                "keepTime": False}},
            {"id": "organize", "options": {
                "includeByName": {"ts": True, "request_id": True, "model": True, "user": True,
                                  "identity_source": True, "status": True, "flags": True,
                                  "http_status": True, "error": True},
                "indexByName": {"ts": 0, "request_id": 1, "model": 2, "user": 3, "identity_source": 4,
                                "status": 5, "flags": 6, "http_status": 7, "error": 8}}}]), 24, 9))
    p.append(lay.place(logs(
        "Audit records", "One line per request: the audit record JSON (docs/design.md, Record). "
        "Filter with the variables above; `search` is a case-sensitive substring.",
        [loki(f'{base} |= "$search" | json | status=~"$status"')]), 24, 16))
    return dashboard(UID_AUDIT, "vLLM audit / Audit log",
                     "Audit records from Loki, with user/model/status filters and text search.",
                     p, [instance_var(), model_var(), user_var(),
                         custom_var("status", "Status",
                                    ["completed", "aborted", "rejected", "incomplete", "error"], multi=True),
                         textbox_var("search", "Search", "", "Substring of the record line")])


DASHBOARDS = {"overview.json": overview, "users.json": users, "audit-log.json": audit_log}


# --------------------------------------------------------------------------- checks

def render_all() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def iter_queries(dash: dict):
    """Yield (panel title, datasource type, expression) for panels and variables."""
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["datasource"]["type"], target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            if var["datasource"]["type"] == "prometheus":
                yield f"variable {var['name']}", "prometheus-variable", query["query"]
            else:
                yield f"variable {var['name']}", "loki-variable", query["stream"]


def substitute(expr: str) -> str:
    """Replace Grafana variables by sample values (longest names first)."""
    for name in sorted(SAMPLE_VARS, key=len, reverse=True):
        expr = expr.replace(name, SAMPLE_VARS[name])
    return expr


def promql_of_variable(query: str) -> str:
    """``label_values(sel, label)`` -> ``sel`` (the part that is PromQL)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query, re.S)
    if not m:
        raise ValueError(f"unsupported variable query {query!r}")
    return m.group(1)


def exporter_metrics(design: Path = REPO_ROOT / "docs" / "design.md") -> set[str]:
    """Metric names from docs/design.md's "Metrics (public contract)" section."""
    text = design.read_text(encoding="utf-8")
    start = text.index("## Metrics")
    end = text.find("\n## ", start + 1)
    return set(re.findall(r"`(vllm_audit_[a-z_]+)", text[start:end if end > 0 else None]))


def recording_rules(rules_dir: Path = REPO_ROOT / "prometheus" / "rules") -> set[str]:
    import yaml
    names = set()
    for path in rules_dir.glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []):
            names.update(r["record"] for r in group.get("rules", []) if "record" in r)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (raises ValueError if it does not parse)."""
    import promql_parser
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def known_metric(name: str, allowed: set[str]) -> bool:
    if name in allowed:
        return True
    return any(name.endswith(s) and name[: -len(s)] in allowed for s in HISTOGRAM_SUFFIXES + ("_created",))


def check_metrics(dashboards: dict[str, dict]) -> list[str]:
    allowed = exporter_metrics() | set(VLLM_METRICS) | recording_rules() | set(EXTRA_METRICS)
    problems = []
    for file, dash in dashboards.items():
        for title, kind, expr in iter_queries(dash):
            if not kind.startswith("prometheus"):
                continue
            promql = promql_of_variable(expr) if kind == "prometheus-variable" else expr
            try:
                names = metric_names(substitute(promql))
            except ValueError as exc:
                problems.append(f"{file}: {title}: PromQL does not parse ({exc}): {expr}")
                continue
            for name in sorted(names):
                if not known_metric(name, allowed):
                    problems.append(f"{file}: {title}: unknown metric {name!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the vllm-audit Grafana dashboards.")
    parser.add_argument("--check", action="store_true",
                        help="do not write; fail if the committed JSON is stale or a query is invalid")
    args = parser.parse_args(argv)
    rendered = render_all()
    problems = check_metrics({name: json.loads(text) for name, text in rendered.items()})
    if args.check:
        for name, text in rendered.items():
            path = OUT_DIR / name
            if not path.exists():
                problems.append(f"{path.relative_to(REPO_ROOT)} is missing; run grafana/generate.py")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{path.relative_to(REPO_ROOT)} is stale; run grafana/generate.py")
    else:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (OUT_DIR / name).write_text(text, encoding="utf-8")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
