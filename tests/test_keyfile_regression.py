"""Issue 15 item 7, end to end: a key file whose content ends in spaces, or
is binary, is the same key for `replay`, `run` and `verify` (the bug: replay
with "secret \\n" then verify reported BROKEN; a binary key crashed `run`
with a traceback). Fixed by exporter/secrets.py; these are the regression
tests through the real commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from exporter.cli import main

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def test_replay_then_verify_with_a_key_ending_in_spaces(tmp_path, capsys):
    key = tmp_path / "k"
    key.write_bytes(b"secret \n")
    archive = tmp_path / "a"
    assert main(["replay", str(CAPTURE), "--archive-dir", str(archive), "--model", "tiny", "--no-progress",
                 "--hmac-key-file", str(key)]) == 0
    capsys.readouterr()
    assert main(["verify", str(archive), "--hmac-key-file", str(key)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 file(s), 22 record(s)")
    other = tmp_path / "k2"
    other.write_bytes(b"secret\n")  # the spaces are part of the key
    assert main(["verify", str(archive), "--hmac-key-file", str(other)]) == 1


def test_run_with_a_binary_key_archives_and_verifies(tmp_path, capsys):
    key = tmp_path / "k"
    key.write_bytes(bytes(range(256)) + b"\xff\xfe \n")
    archive = tmp_path / "archive"
    log = tmp_path / "vllm.log"
    log.write_bytes(CAPTURE.read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start", "--archive-dir",
         str(archive), "--model", "tiny", "--web.listen-address", "127.0.0.1:0", "--request-timeout", "0.5",
         "--hmac-key-file", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 60
    records: list = []
    try:
        while time.monotonic() < deadline and len(records) < 22 and proc.poll() is None:
            records = [json.loads(x) for f in sorted(archive.glob("audit-*.jsonl"))
                       for x in f.read_text().splitlines()]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    stderr = proc.stderr.read().decode()
    assert code == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert len(records) == 22 and all(r["hash"].startswith("hmac-sha256:") for r in records)
    capsys.readouterr()
    assert main(["verify", str(archive), "--hmac-key-file", str(key)]) == 0
