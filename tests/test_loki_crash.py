"""SIGKILL mid-stream: a real pusher process is killed after Loki stored a
batch but before it could read the 204 and persist its position. A restarted
pusher resends that batch; Loki's dedup leaves every record exactly once."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.loki import LokiPusher, LokiSettings
from exporter.record import format_ts

try:
    from tests.loki_server import LokiServer, archive_line, write_archive
except ImportError:
    from loki_server import LokiServer, archive_line, write_archive

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from exporter.loki import LokiPusher, LokiSettings
p = LokiPusher(LokiSettings(url=sys.argv[2], batch_bytes=1024), Path(sys.argv[1]),
               CollectorRegistry(), label_user=lambda u: u)
while p.backlog():
    p.run_once()
"""


def test_sigkill_between_store_and_ack_then_restart(tmp_path):
    now = 1_795_000_000.0
    write_archive(tmp_path, "2026-11-18", [archive_line(i, format_ts(now - 30 + i)) for i in range(20)])
    child = []

    def kill_on_third(request_no):
        if request_no == 3:
            os.kill(child[0].pid, signal.SIGKILL)

    with LokiServer(clock=lambda: now) as srv:
        srv.on_stored = kill_on_third
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), srv.url], env=env)
        child.append(proc)
        assert proc.wait(60) == -signal.SIGKILL
        saved = json.loads((tmp_path / ".state" / "loki.json").read_text())
        stored_before = len(srv.lines())
        assert 0 < saved["offset"] and stored_before > 0
        srv.on_stored = None
        p = LokiPusher(LokiSettings(url=srv.url, batch_bytes=1024), tmp_path, CollectorRegistry(),
                       label_user=lambda u: u, clock=lambda: now)
        while p.backlog():
            p.run_once()
        ids = sorted(json.loads(l)["request_id"] for l in srv.lines())
        assert ids == sorted(f"chatcmpl-{i}" for i in range(20))
        assert srv.received > 20  # the killed batch really was sent twice
