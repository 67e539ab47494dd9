"""Interrupted test runs leave nothing running.

The live tests start vLLM, Open WebUI, Prometheus and the stack's services
in their own sessions (``start_new_session=True``) so that one ``killpg``
stops a server with all its workers. Their fixtures stop them; but a run
that is interrupted (a CI job's timeout sends SIGTERM, an operator's ^C)
used to exit without those teardowns, and the servers, reparented to init,
kept their ports and both cores busy for the next run.

Two things close that: SIGTERM is turned into KeyboardInterrupt, which
pytest handles like ^C (it stops and reports what ran), and at exit every
process group led by a direct child of this process that is still alive is
sent SIGTERM, then SIGKILL. A normal run has stopped them all by then, so
this is a no-op. A SIGKILL of pytest itself cannot be caught: nothing can
clean up after that.
"""

from __future__ import annotations

import atexit
import os
import signal
import time

GRACE = 10.0  # seconds a group gets between SIGTERM and SIGKILL (vLLM's shutdown takes a few)


def child_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s direct children other than ``pid``'s own
    (children left in our group are plain subprocesses: they die with us)."""
    own = os.getpgid(pid)
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat.rpartition(")")[2].split()
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if ppid == pid and pgrp != own and state != "Z":
            groups.add(pgrp)
    return groups


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(grace: float = GRACE) -> set[int]:
    """Stop what this process started in other sessions; returns the groups signalled."""
    groups = child_groups(os.getpid())
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    left = set(groups)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:  # reap our own child (the group leader) so it stops counting as alive
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        left = {g for g in left if _alive(g)}
        if left:
            time.sleep(0.1)  # waiting on processes that are not ours to wait for: no event
    for group in left:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return groups


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    atexit.register(reap)
