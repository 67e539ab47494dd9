"""Envelope tests: prefixes, ANSI, both header layouts, JSON formatter, access lines."""

from __future__ import annotations

import pytest

from exporter.events import LogTime
from exporter.parse.header import (
    access_fields,
    body_start,
    clean,
    json_header,
    parse_asctime,
    parse_iso_utc,
    text_header,
)

WHEN = LogTime(None, 10, 21, 12, 0, 0, 0, None)


def header_of(line: str, prefix: str = ""):
    line = clean(line)
    pos, proc = body_start(line, prefix)
    found = text_header(line, pos, proc)
    return None if found is None else (found[0], line[found[1] :])


@pytest.mark.parametrize(
    ("line", "file", "proc"),
    [
        ("INFO 10-21 12:00:00 logger.py:37] msg", "logger.py", None),
        ("INFO 10-21 12:00:00 [logger.py:43] msg", "logger.py", None),
        ("(APIServer pid=4242) INFO 10-21 12:00:00 [logger.py:40] msg", "logger.py", "APIServer"),
        ("(ApiServer_0 pid=7) INFO 10-21 12:00:00 [logger.py:40] msg", "logger.py", "ApiServer_0"),
        ("(VllmWorker rank=0 pid=7) INFO 10-21 12:00:00 [worker.py:1] msg", "worker.py", "VllmWorker rank=0"),
        ("\x1b[1;36m(APIServer pid=1)\x1b[0;0m INFO 10-21 12:00:00 [logger.py:40] msg", "logger.py", "APIServer"),
        ("\x1b[0;36m(APIServer pid=1)\x1b[0;0m \x1b[32mINFO\x1b[0m \x1b[90m10-21 12:00:00\x1b[0m \x1b[90m[logger.py:40]\x1b[0m msg", "logger.py", "APIServer"),
        ("DEBUG 10-21 12:00:00 [entrypoints/.../utils/request_logger.py:56] msg", "request_logger.py", None),
        ("WARNING 10-21 12:00:00 [v1/engine/async_llm.py:587] msg", "async_llm.py", None),
        ("INFO 10-21 12:00:00 [logger.py:40] msg\r", "logger.py", None),
    ],
)
def test_text_headers(line, file, proc):
    header, message = header_of(line)
    assert (header.file, header.process, header.when, message) == (file, proc, WHEN, "msg")


@pytest.mark.parametrize(
    "line",
    [
        "[node-a] INFO 10-21 12:00:00 [logger.py:40] msg",  # 0.6.6-0.30 layout
        "(APIServer pid=1) [node-a] INFO 10-21 12:00:00 [logger.py:40] msg",  # 0.10.1-0.30 decorate_logs
        "[node-a] (APIServer pid=1) INFO 10-21 12:00:00 [logger.py:40] msg",  # 0.31+
    ],
)
def test_configured_logging_prefix(line):
    assert header_of(line, "[node-a] ")[1] == "msg"
    assert header_of(line) is None  # an unknown prefix is not skipped: see logline docstring


@pytest.mark.parametrize(
    "line",
    [
        "",
        "INFO 13-21 12:00:00 [logger.py:40]msg",
        "INFO 10-21 12:00 [logger.py:40] msg",
        "info 10-21 12:00:00 [logger.py:40] msg",
        "Traceback (most recent call last):",
        "ValueError: INFO 10-21 12:00:00 [logger.py:40] Received request x",
        "(APIServer pid=x) INFO 10-21 12:00:00 [logger.py:40] msg",
    ],
)
def test_non_headers(line):
    assert header_of(line) is None


def test_impossible_date_keeps_header_without_time():
    header, _ = header_of("INFO 13-40 25:61:00 [logger.py:40] msg")
    assert header.when is None


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        ('INFO:     127.0.0.1:53412 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
         {"client": "127.0.0.1:53412", "method": "POST", "path": "/v1/chat/completions", "status": 200}),
        ('(APIServer pid=250) INFO:     172.16.33.39:42656 - "GET /metrics HTTP/1.1" 200 OK',
         {"client": "172.16.33.39:42656", "method": "GET", "path": "/metrics", "status": 200}),
        ('WARNING:  [::1]:1 - "POST /v1/completions?x=1 HTTP/2" 400 Bad Request',
         {"client": "[::1]:1", "method": "POST", "path": "/v1/completions?x=1", "status": 400}),
    ],
)
def test_access_lines(line, fields):
    pos, _ = body_start(clean(line))
    assert access_fields(line, pos) == fields


def test_json_header_maps_logger_name_to_file():
    header = json_header({"asctime": "2026-11-22 10:00:00,123", "levelname": "INFO",
                          "name": "vllm.entrypoints.serve.utils.request_logger", "message": "m",
                          "vllm_process_name": "APIServer"})
    assert header.file == "request_logger.py"
    assert header.when == LogTime(2026, 11, 22, 10, 0, 0, 123000, None)
    assert header.process == "APIServer"
    assert json_header({"levelname": "INFO", "name": "uvicorn.error"}).file == ""
    assert json_header({"message": "m"}) is None


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2026-11-22T10:00:00.123Z", LogTime(2026, 11, 22, 10, 0, 0, 123000, 0)),
        ("2026-11-22T10:00:00Z", LogTime(2026, 11, 22, 10, 0, 0, 0, 0)),
        ("2026-11-22T10:00:00.123456+02:00", LogTime(2026, 11, 22, 10, 0, 0, 123456, 7200)),
        ("2026-11-22T10:00:00-05:30", LogTime(2026, 11, 22, 10, 0, 0, 0, -19800)),
        ("2026-13-22T10:00:00Z", None),
        ("yesterday", None),
        (None, None),
        ("2026-11-22T10:00:00+0200", None),
    ],
)
def test_iso_times(text, when):
    assert parse_iso_utc(text) == when


def test_asctime():
    assert parse_asctime("2026-01-02 03:04:05,006") == LogTime(2026, 1, 2, 3, 4, 5, 6000, None)
    assert parse_asctime("02-01 03:04:05") is None
    assert parse_asctime(5) is None
