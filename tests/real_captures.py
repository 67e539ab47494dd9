"""The real vLLM captures under tests/fixtures/vllm-<version>/ and how to replay them.

Recorded by tools/record_fixtures.py from the real CPU builds (one directory
per version, one sub-directory per logging set-up; see each README.md). The
set-up lists here are what each version *must* have: a missing directory
fails the tests, it is not skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

FIXTURES = Path(__file__).parent / "fixtures"
COMMON_SETUPS = ["info", "debug", "maxloglen", "nodeltas", "forceusage"]
# vLLM's JSON formatter exists from 0.32 on.
LOG_ONLY_SETUPS = {
    "0.28.0": COMMON_SETUPS,
    "0.31.0": COMMON_SETUPS,
    "0.32.0": ["info", "debug", "json", "jsondebug", "maxloglen", "nodeltas", "forceusage"],
}
VERSIONS = list(LOG_ONLY_SETUPS)
DEBUG_SETUPS = {"debug", "jsondebug", "maxloglen", "forceusage", "middleware"}  # request logger at DEBUG
JSON_SETUPS = {"json", "jsondebug"}  # JSON formatter: millisecond timestamps
MAX_LOG_LEN = {"maxloglen": 20}  # tools/record_fixtures.py SETUPS


def has_json_body(version: str) -> bool:
    """A DEBUG ``Request X JSON body: {...}`` line exists (0.31+)."""
    return version != "0.28.0"


def body_is_whole(version: str) -> bool:
    """The logged JSON body is the client's whole body (0.31 cuts its last character)."""
    return has_json_body(version) and version != "0.31.0"


def setup_dir(version: str, setup: str) -> Path:
    return FIXTURES / f"vllm-{version}" / setup


def responses(version: str, setup: str) -> list[dict]:
    with (setup_dir(version, setup) / "responses.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def replay(tmp_path: Path, files, extra=()) -> list[dict]:
    """Replay ``files`` with ``extra`` flags; every archived record, in order."""
    archive = tmp_path / "archive"
    argv = ["replay", *map(str, files), "--archive-dir", str(archive), "--no-progress", *extra]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    records = []
    for f in sorted(archive.glob("audit-*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines()]
    return records


def log_id(resp: dict) -> str:
    """The id vLLM logs for a response (completions log ``cmpl-X-0``)."""
    rid = resp["response_id"]
    return rid + "-0" if rid.startswith("cmpl-") else rid


def texts(resp: dict) -> list[str]:
    if "stream_text" in resp:
        return [resp["stream_text"]]
    return [ch["message"]["content"] if "message" in ch else ch["text"]
            for ch in sorted(resp["response"]["choices"], key=lambda c: c["index"])]


def finish(resp: dict) -> str | None:
    if "stream_text" in resp:
        return resp.get("finish_reason")
    return resp["response"]["choices"][0]["finish_reason"]


def usage(resp: dict) -> dict:
    return resp.get("usage") or (resp.get("response") or {}).get("usage") or {}
