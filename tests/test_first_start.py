"""Deploy findings on the exporter side (issue 12, deploy-audit rows 4, 11, 13).

- First start (no checkpoint) reads what vLLM already wrote from the start of
  the files: nothing vLLM served before the exporter's first start is lost.
  ``--from-end`` (``VLLM_AUDIT_FROM_END``) chooses the end instead.
- An empty ``VLLM_AUDIT_*`` variable means the default, in settings.py and in
  the middleware (compose passes ``${VAR:-}`` as ``""``).
- ``/health`` of a fresh idle stack: a log file that has never existed yet
  (``middleware.jsonl`` before the first audited request) is waiting, not a
  problem; a file that was read and then vanished is one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.middleware import USER_HEADERS, MiddlewareConfig
from exporter.runtime import build
from exporter.settings import SettingsError
from exporter.settings import build as build_settings
from tests.live.stack import archive_records


CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "middleware"


def runtime(tmp_path, *extra, env=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "vllm.log"
    if not log.exists():
        log.write_bytes((CAPTURE / "vllm.log").read_bytes())
    argv = ["run", "--log", str(log), "--archive-dir", str(tmp_path / "archive"), "--model", "tiny",
            "--merge-grace", "0", "--web.listen-address", "127.0.0.1:0", *extra]
    return build(build_settings("run", make_parser().parse_args(argv), env or {}), live=True)


def drain(rt):
    for _ in range(10000):
        if not rt.pipeline.step():
            break


def test_first_start_reads_existing_log_from_its_start(tmp_path):
    rt = runtime(tmp_path)
    assert rt.settings.from_start is True
    drain(rt)
    rt.pipeline.finish()
    records = archive_records(tmp_path / "archive")
    assert records and rt.pipeline.records_emitted == len(records), \
        "records vLLM logged before the exporter's first start must be audited"


def test_from_end_skips_what_is_already_there(tmp_path):
    rt = runtime(tmp_path, "--from-end")
    assert rt.settings.from_start is False
    drain(rt)
    rt.pipeline.finish()
    assert rt.pipeline.records_emitted == 0 and archive_records(tmp_path / "archive") == []
    rt2 = runtime(tmp_path / "env", env={"VLLM_AUDIT_FROM_END": "true"})
    assert rt2.settings.from_start is False


def test_from_start_and_from_end_conflict():
    with pytest.raises(SettingsError, match="--from-start and --from-end"):
        build_settings("run", make_parser().parse_args(
            ["run", "--log", "x", "--from-start", "--from-end"]), {})


@pytest.mark.parametrize("var", ["VLLM_AUDIT_MAX_USERS", "VLLM_AUDIT_OVERSIZED_INPUT_TOKENS",
                                 "VLLM_AUDIT_LOKI_PROMPT_POLICY", "VLLM_AUDIT_SCRAPE_INTERVAL",
                                 "VLLM_AUDIT_FROM_END", "VLLM_AUDIT_SERVER_TIMEZONE",
                                 "VLLM_AUDIT_ARCHIVE_DIR"])
def test_empty_env_var_means_the_default(var):
    argv = make_parser().parse_args(["run", "--log", "x"])
    default = build_settings("run", argv, {})
    assert build_settings("run", argv, {var: ""}) == default
    assert build_settings("run", argv, {var: "  "}) == default


def test_middleware_empty_user_headers_means_the_open_webui_default():
    assert MiddlewareConfig.from_env({"VLLM_AUDIT_USER_HEADERS": ""}).user_headers == USER_HEADERS
    assert MiddlewareConfig.from_env({}).user_headers == USER_HEADERS
    assert MiddlewareConfig.from_env({"VLLM_AUDIT_USER_HEADERS": "x-user"}).user_headers == ("x-user",)
    empty = MiddlewareConfig.from_env({"VLLM_AUDIT_TRUSTED_HEADERS": "", "VLLM_AUDIT_MIDDLEWARE_MAX_BYTES": ""})
    assert empty == MiddlewareConfig.from_env({})


def test_fresh_idle_stack_is_healthy_before_middleware_jsonl_exists(tmp_path):
    middleware = tmp_path / "middleware.jsonl"
    rt = runtime(tmp_path, "--log", str(middleware))
    drain(rt)
    healthy, report = rt.health.report()
    assert healthy, report["problems"]
    src = next(s for s in report["sources"].values() if s["path"] == str(middleware))
    assert src["waiting"] is True and src["up"] is False
