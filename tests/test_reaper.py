"""An interrupted run stops what it started (tests/reaper.py).

A real pytest run, in a subprocess, starts a sleeper in its own session
(as the live tests start vLLM) and blocks; it is sent SIGTERM (a CI job's
timeout) and must exit and take the sleeper, and the sleeper's own child,
with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent

INNER = '''
import subprocess, sys, time
from pathlib import Path

def test_blocks():
    # a group leader with a child of its own, like vLLM and its engine core
    p = subprocess.Popen(["sh", "-c", "sleep 300 & echo $! > {out}.grandchild; wait"],
                         start_new_session=True)
    Path("{out}").write_text(str(p.pid))
    time.sleep(300)
'''


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"  # exited, not yet reaped by init
    except FileNotFoundError:
        return True


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # another process's progress: polled


def test_sigterm_stops_the_run_and_its_servers(tmp_path):
    out = tmp_path / "pid"
    (tmp_path / "test_inner.py").write_text(INNER.format(out=out))
    (tmp_path / "conftest.py").write_text("import reaper\n\n\ndef pytest_configure(config):\n"
                                          "    reaper.install()\n")
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        grandchild = Path(f"{out}.grandchild")
        _wait(lambda: out.exists() and grandchild.exists() and grandchild.read_text().strip(), 60,
              "the inner test never started its server")
        leader, worker = int(out.read_text()), int(grandchild.read_text())
        assert not _gone(leader) and not _gone(worker)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, output  # interrupted, reported as such
    assert "KeyboardInterrupt" in output, output
    _wait(lambda: _gone(leader) and _gone(worker), 30, f"left running: {leader}, {worker}")


def test_reap_stops_other_sessions_only():
    """Children in our own process group are plain subprocesses (they end
    with us and may be mid-work); only the servers' own sessions are stopped."""
    import reaper
    plain = subprocess.Popen(["sleep", "300"])
    server = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert server.pid in reaper.child_groups(os.getpid())
        assert reaper.reap(grace=5) >= {server.pid}
        _wait(lambda: _gone(server.pid), 10, "the server's session is still running")
        assert plain.poll() is None
    finally:
        for p in (plain, server):
            if p.poll() is None:
                p.kill()
            p.wait()
