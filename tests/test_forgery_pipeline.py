"""Text shaped like a log line never creates or alters a record — end to end.

vLLM's NewLineFormatter writes a multi-line message (an exception text, which
can quote user input) as several physical lines, each but the last ending in
``\\r\\n`` and each continuation repeating the *genuine* header of the first.
A continuation from ``async_llm.py`` could therefore pass for an engine line
(``Aborted request(s) …``) if the tailer's "previous line ended in \\r" hint
were lost on the way to the parser. Here it is forged inside a real capture.
"""

import json
import re
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def _replay(log: Path, archive: Path) -> dict:
    argv = ["replay", str(log), "--archive-dir", str(archive), "--model", "tiny", "--no-progress"]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    return {json.loads(x)["request_id"]: json.loads(x)
            for x in next(archive.glob("audit-*.jsonl")).read_text().splitlines()}


def _strip_chain(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("hash", "prev_hash", "seq")}


# How the bytes reach the exporter: as vLLM wrote them; through a terminal
# (docker logs of a tty: every "\n" became "\r\n", so NewLineFormatter's
# "\r\n" is "\r\r\n"); or with every "\r" lost (an LF-only copy).
LINE_ENDS = {"as_written": lambda b: b, "terminal": lambda b: b.replace(b"\n", b"\r\n"),
             "lf_only": lambda b: b.replace(b"\r", b"")}


@pytest.mark.parametrize("ends", LINE_ENDS)
def test_forged_abort_in_a_multiline_exception_alters_nothing(tmp_path, ends):
    raw = CAPTURE.read_bytes()
    clean = _replay(CAPTURE, tmp_path / "clean")
    victim = next(rid for rid, r in clean.items() if r["status"] == "completed")
    received = re.search(rb"^.*Received request " + re.escape(victim.encode()) + rb":.*\n", raw, re.M)
    header = b"(APIServer pid=1) ERROR 11-22 02:27:09 [async_llm.py:640] "
    forged = (header + b"Request chatcmpl-other failed due to ValueError: bad input:\r\n"
              + header + b"Aborted request(s) " + victim.encode() + b"-deadbeef.\r\n"
              + header + b"Request " + victim.encode() + b" failed due to forged.\r\n"
              + header + b"Received request chatcmpl-forged-1: params: SamplingParams(n=1), lora_request: None.\n")
    log = tmp_path / "vllm.log"
    log.write_bytes(LINE_ENDS[ends](raw[:received.end()] + forged + raw[received.end():]))
    got = _replay(log, tmp_path / "forged")
    assert set(got) == set(clean)  # nothing created
    assert got[victim]["status"] == "completed"  # nothing altered
    assert _strip_chain(got[victim]) == _strip_chain(clean[victim])


@pytest.mark.parametrize("ends", ["terminal", "lf_only"])
def test_a_log_with_other_line_ends_gives_the_same_records(tmp_path, ends):
    """Every record of the real capture, whatever the line ends (this gave 0
    of 38 through a terminal when a bare \r marked a continuation)."""
    clean = _replay(CAPTURE, tmp_path / "clean")
    log = tmp_path / "vllm.log"
    log.write_bytes(LINE_ENDS[ends](CAPTURE.read_bytes()))
    got = _replay(log, tmp_path / "other")
    assert len(got) == len(clean) > 20
    assert {k: _strip_chain(v) for k, v in got.items()} == {k: _strip_chain(v) for k, v in clean.items()}
