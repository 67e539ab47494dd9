"""Split one physical vLLM log line into its header and its message.

Text formatter layouts accepted (``vllm/logger.py`` ``_FORMAT`` per release)::

    [PROC ][PREFIX][PROC ]LEVEL MM-DD HH:MM:SS [fileinfo:lineno] message   (0.8+)
    [PROC ][PREFIX]LEVEL MM-DD HH:MM:SS filename:lineno] message           (<=0.7.3)

- ``PROC`` is the process prefix ``(APIServer pid=N) `` (any name, e.g.
  ``ApiServer_0``, ``EngineCore_DP0``, ``VllmWorker rank=0``). 0.10.1-0.30 put
  it in front of every physical line written to stdout (before
  ``VLLM_LOGGING_PREFIX``); 0.31+ makes it part of the format (after the
  prefix). Both positions are accepted.
- ``PREFIX`` is ``VLLM_LOGGING_PREFIX``. An *arbitrary* prefix is deliberately
  not tolerated: searching for a header anywhere in the line would let any raw
  stderr text (an uncaught traceback, a ``print``) that quotes a log line
  forge a record. The operator passes the exact prefix instead
  (``logging_prefix``); without it only lines starting with ``PROC`` or the
  level parse.
- ANSI colour codes (``\\x1b[...m``, added around the process prefix in
  0.10.1-0.14 and around level/time/file in 0.12+ colour mode) are removed
  first, but only when the line contains an ESC at all.
- ``fileinfo`` is a bare filename, or at DEBUG level (0.10.2+) a shortened
  path such as ``entrypoints/.../utils/request_logger.py``; :attr:`Header.file`
  is always the basename.
- The JSON formatter (0.32+, ``--logging-config.formatter json``) writes one
  object per line; :func:`json_header` maps its ``name`` (the logger name,
  ``vllm.v1.engine.async_llm``) to the same basename (``async_llm.py``) so the
  caller applies one rule to both formats. ``asctime`` carries a year and
  milliseconds (``2026-11-22 10:00:00,123``).
- uvicorn access lines (``INFO:     client - "METHOD path HTTP/x" status ...``)
  are recognised by :func:`access_fields`, with or without ``PROC``.

Nothing here raises; a line that does not fit returns ``None``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from exporter.events import LogTime

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ACCESS = re.compile(
    r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL|TRACE):\s{1,9})?"
    r"(\S{1,300}) - \"([A-Z]{1,16}) (\S{1,8192}) HTTP/[0-9.]{1,5}\" (\d{3})\b"
)
_ASCTIME = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:[,.](\d{1,6}))?")


class Header(NamedTuple):
    """What precedes the message. ``file`` is a basename (``async_llm.py``)."""

    level: str
    when: LogTime | None
    file: str
    process: str | None


def clean(text: str) -> str:
    """Drop a stray trailing ``\\r`` (NewLineFormatter continuation) and ANSI codes."""
    if text.endswith("\r"):
        text = text.rstrip("\r")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return text


def _strip_proc(text: str, pos: int) -> tuple[int, str | None]:
    """Skip ``(Name pid=N) `` at ``pos``; plain string ops, this runs on every line."""
    if not text.startswith("(", pos):
        return pos, None
    k = text.find(") ", pos, pos + 100)
    if k < 0:
        return pos, None
    p = text.rfind(" pid=", pos, k)
    if p <= pos + 1 or not text[p + 5 : k].isdigit():
        return pos, None
    return k + 2, text[pos + 1 : p]


def body_start(text: str, logging_prefix: str = "") -> tuple[int, str | None]:
    """Position after the optional process prefix(es) and logging prefix."""
    pos, proc = _strip_proc(text, 0)
    if logging_prefix and text.startswith(logging_prefix, pos):
        pos += len(logging_prefix)
        pos, proc2 = _strip_proc(text, pos)
        proc = proc2 or proc
    return pos, proc


def text_header(text: str, pos: int, proc: str | None) -> tuple[Header, int] | None:
    """Parse ``[PROC ]LEVEL MM-DD HH:MM:SS [file:line] `` at ``pos``; return (header, message start)."""
    m = _HEADER.match(text, pos)
    if m is None:
        return None
    name, level, stamp, fileinfo = m.groups()
    base = _file_base(fileinfo)
    if base is None:
        return None
    return Header(level, _header_time(stamp), base, name or proc), m.end()


# One anchored match per line (faster than string operations in Python). The
# process name is lazy but bounded, so a hostile line costs at most 80 steps.
_HEADER = re.compile(
    r"(?:\(([^()]{1,80}?) pid=\d{1,10}\) )?"
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(\d\d-\d\d \d\d:\d\d:\d\d) "
    r"\[?([^\]\s]{1,300})\] "
)
_FILE_SHAPE = re.compile(r"([^:]{1,300}):\d{1,7}")


@lru_cache(maxsize=1024)  # consecutive lines share their second: parse it once
def _header_time(stamp: str) -> LogTime | None:
    month, day, hour, minute, second = int(stamp[0:2]), int(stamp[3:5]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[12:14])
    if 1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62:
        return LogTime(None, month, day, hour, minute, min(second, 59), 0, None)
    return None  # a header, but an impossible time: keep the line, drop the time


@lru_cache(maxsize=1024)
def _file_base(fileinfo: str) -> str | None:
    m = _FILE_SHAPE.fullmatch(fileinfo)
    return None if m is None else m.group(1).rsplit("/", 1)[-1]


def access_fields(text: str, pos: int) -> dict | None:
    """uvicorn access line at ``pos`` → {client, method, path, status} or None."""
    m = _ACCESS.match(text, pos)
    if m is None:
        return None
    client, method, path, status = m.groups()
    return {"client": client, "method": method, "path": path, "status": int(status)}


def json_header(obj: dict) -> Header | None:
    """Header of a JSON-formatter object (``asctime``/``levelname``/``name``)."""
    name = obj.get("name")
    level = obj.get("levelname")
    if not isinstance(name, str) or not isinstance(level, str):
        return None
    base = name.rsplit(".", 1)[-1] + ".py" if name.startswith("vllm.") else ""
    proc = obj.get("vllm_process_name") or obj.get("processName")
    return Header(level, parse_asctime(obj.get("asctime")), base, proc if isinstance(proc, str) else None)


def parse_asctime(value: object) -> LogTime | None:
    """``2026-11-22 10:00:00,123`` (logging's default asctime) → LogTime, zone unknown."""
    if not isinstance(value, str):
        return None
    m = _ASCTIME.fullmatch(value.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return _checked(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, None)


def parse_iso_utc(value: object) -> LogTime | None:
    """RFC 3339 (``2026-11-22T10:00:00.123Z`` or ``+hh:mm``) → LogTime with its offset."""
    if not isinstance(value, str) or len(value) < 19 or len(value) > 40:
        return None
    m = _ASCTIME.match(value.replace("T", " ", 1))
    if m is None:
        return None
    rest = value[m.end() :]
    if rest in ("Z", "z", ""):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and (rest[1:3] + rest[4:]).isdigit():
        offset = (int(rest[1:3]) * 3600 + int(rest[4:]) * 60) * (-1 if rest[0] == "-" else 1)
    else:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    return _checked(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or "0").ljust(6, "0")), offset)


def _checked(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int, off: int | None) -> LogTime | None:
    if 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 62:
        return LogTime(y, mo, d, h, mi, min(s, 59), us, off)
    return None
