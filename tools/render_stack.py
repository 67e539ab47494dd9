"""Render the committed Prometheus/Alertmanager configuration for another place.

The files under ``prometheus/`` are the source of truth: they are what
compose.yaml mounts and what the promtool unit tests check. Tests (and anyone
running the stack outside compose) need a variant: other target addresses,
a faster scrape interval, shorter ``for:`` durations, a reachable webhook.
This script derives that variant into a separate directory, never editing the
committed files:

    python tools/render_stack.py --out /tmp/stack \\
        --target vllm:8000=127.0.0.1:18000 \\
        --target exporter:9400=127.0.0.1:19400 \\
        --scrape-interval 1s --for 0s --for VllmDown=5s \\
        --webhook-url http://127.0.0.1:5001/hook

Rules:
- ``--target OLD=NEW`` replaces the address OLD wherever it is a static
  target (scrape jobs and Alertmanager) and wherever it is a static label
  value (the exporter job's ``vllm_instance``), so joins keep working.
- Scrape jobs and Alertmanagers left with no mapped target are dropped
  (``--keep-unmapped`` keeps them): a localhost test does not have Loki.
- ``--for DUR`` sets every alert's ``for:``; ``--for ALERT=DUR`` one alert's
  (later flags win). Expressions and everything else stay as committed.
- The output directory gets ``prometheus.yml``, ``rules/*.yml``,
  ``alertmanager.yml`` and ``templates/*.tmpl`` with the committed relative
  layout, so ``promtool check config OUT/prometheus.yml`` works.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "prometheus"


def _map_static_configs(static_configs: list, targets: dict[str, str]) -> list:
    """Map addresses and label values; keep only groups with a mapped target."""
    kept = []
    for group in static_configs or []:
        mapped = [targets[t] for t in group.get("targets", []) if t in targets]
        if not mapped:
            continue
        group = dict(group, targets=mapped)
        if group.get("labels"):
            group["labels"] = {k: targets.get(v, v) for k, v in group["labels"].items()}
        kept.append(group)
    return kept


def render_prometheus(config: dict, targets: dict[str, str], *, scrape_interval: str | None = None,
                      evaluation_interval: str | None = None, keep_unmapped: bool = False) -> dict:
    """Return a rendered copy of a parsed prometheus.yml."""
    config = copy.deepcopy(config)
    glob = config.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
        # a scrape timeout may not exceed the interval
        glob["scrape_timeout"] = scrape_interval
    if evaluation_interval:
        glob["evaluation_interval"] = evaluation_interval
    jobs = []
    for job in config.get("scrape_configs", []):
        mapped = _map_static_configs(job.get("static_configs", []), targets)
        if mapped:
            job["static_configs"] = mapped
        elif not keep_unmapped:
            continue
        if scrape_interval:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
        jobs.append(job)
    config["scrape_configs"] = jobs
    managers = []
    for manager in config.get("alerting", {}).get("alertmanagers", []):
        mapped = _map_static_configs(manager.get("static_configs", []), targets)
        if mapped:
            managers.append(dict(manager, static_configs=mapped))
        elif keep_unmapped:
            managers.append(manager)
    if managers:
        config["alerting"]["alertmanagers"] = managers
    else:
        config.pop("alerting", None)
    return config


def parse_for_overrides(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``["0s", "VllmDown=5s"]`` -> (default "0s", {"VllmDown": "5s"})."""
    default, per_alert = None, {}
    for value in values:
        if "=" in value:
            name, duration = value.split("=", 1)
            per_alert[name.strip()] = duration.strip()
        else:
            default = value.strip()
    return default, per_alert


def render_rules(rules: dict, *, for_default: str | None = None,
                 for_alerts: dict[str, str] | None = None) -> dict:
    """Return a copy of a parsed rule file with ``for:`` durations overridden."""
    rules = copy.deepcopy(rules)
    for_alerts = for_alerts or {}
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if name is None:
                continue
            duration = for_alerts.get(name, for_default)
            if duration is not None:
                rule["for"] = duration
    return rules


def render_alertmanager(config: dict, *, webhook_url: str | None = None) -> dict:
    """Return a copy of a parsed alertmanager.yml with every webhook URL replaced."""
    config = copy.deepcopy(config)
    if webhook_url:
        for receiver in config.get("receivers", []):
            for hook in receiver.get("webhook_configs", []) or []:
                hook["url"] = webhook_url
    return config


def _dump(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000), encoding="utf-8")


def render(out_dir: Path, *, targets: dict[str, str], scrape_interval: str | None = None,
           evaluation_interval: str | None = None, for_overrides: list[str] = (),
           webhook_url: str | None = None, keep_unmapped: bool = False,
           source_dir: Path = PROMETHEUS_DIR) -> dict[str, Path]:
    """Write the rendered stack configuration into ``out_dir``; return the main paths."""
    out_dir = Path(out_dir)
    (out_dir / "rules").mkdir(parents=True, exist_ok=True)
    (out_dir / "templates").mkdir(parents=True, exist_ok=True)

    prom = yaml.safe_load((source_dir / "prometheus.yml").read_text(encoding="utf-8"))
    prom = render_prometheus(prom, targets, scrape_interval=scrape_interval,
                             evaluation_interval=evaluation_interval, keep_unmapped=keep_unmapped)
    _dump(out_dir / "prometheus.yml", prom)

    for_default, for_alerts = parse_for_overrides(list(for_overrides))
    unknown = set(for_alerts)
    for rule_file in sorted((source_dir / "rules").glob("*.yml")):
        rules = yaml.safe_load(rule_file.read_text(encoding="utf-8"))
        unknown -= {r.get("alert") for g in rules.get("groups", []) for r in g.get("rules", [])}
        _dump(out_dir / "rules" / rule_file.name,
              render_rules(rules, for_default=for_default, for_alerts=for_alerts))
    if unknown:
        raise ValueError(f"--for names unknown alerts: {', '.join(sorted(unknown))}")

    am = yaml.safe_load((source_dir / "alertmanager.yml").read_text(encoding="utf-8"))
    _dump(out_dir / "alertmanager.yml", render_alertmanager(am, webhook_url=webhook_url))
    for template in sorted((source_dir / "templates").glob("*.tmpl")):
        shutil.copyfile(template, out_dir / "templates" / template.name)

    return {"prometheus": out_dir / "prometheus.yml", "alertmanager": out_dir / "alertmanager.yml",
            "rules": out_dir / "rules"}


def _target(value: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {value!r}")
    return old, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--target", action="append", type=_target, default=[],
                        metavar="OLD=NEW", help="replace a target address (repeatable)")
    parser.add_argument("--scrape-interval", help="global scrape interval, e.g. 1s")
    parser.add_argument("--evaluation-interval", help="global rule evaluation interval, e.g. 1s")
    parser.add_argument("--for", dest="for_overrides", action="append", default=[],
                        metavar="[ALERT=]DURATION", help="override alert `for:` (repeatable)")
    parser.add_argument("--webhook-url", help="URL for every Alertmanager webhook receiver")
    parser.add_argument("--keep-unmapped", action="store_true",
                        help="keep scrape jobs whose targets were not mapped")
    args = parser.parse_args(argv)
    try:
        paths = render(args.out, targets=dict(args.target), scrape_interval=args.scrape_interval,
                       evaluation_interval=args.evaluation_interval,
                       for_overrides=args.for_overrides, webhook_url=args.webhook_url,
                       keep_unmapped=args.keep_unmapped)
    except ValueError as exc:
        parser.error(str(exc))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
