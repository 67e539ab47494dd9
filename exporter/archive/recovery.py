"""Start-up without a usable checkpoint over a non-empty archive.

Normally the checkpoint says where every input was read up to, so a restart
resumes exactly. If both ``checkpoint.json`` and its ``.prev`` are unreadable
(or were deleted) while the archive already holds records, resuming "at the
end" could lose requests and re-reading "from the start" would archive them
twice. Instead:

* the metric store and the user-label admissions are rebuilt by observing
  every archived record in order (so counters equal the archive again);
* the inputs are read from their start, and a re-derived record whose
  (``request_id``, ``ts``) is already archived is skipped and counted
  (``vllm_audit_evictions_total{reason="already_archived"}``).

``ts`` is part of the key because clients may reuse an ``X-Request-Id``. The
set of keys lives in memory for the life of the process (one entry per
archived record): this path is for recovering from a damaged state
directory, not for routine starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from exporter.archive.layout import iter_lines, list_days


def rebuild_from_archive(root: Path, observe) -> set[tuple[str, str]]:
    """Observe every archived record; return their (request_id, ts) keys."""
    keys: set[tuple[str, str]] = set()
    for day in list_days(Path(root)):
        path = day.jsonl or day.gz
        if path is None:
            continue
        for raw in iter_lines(path):
            if not raw.endswith(b"\n"):
                continue  # a torn last line is cut by the archive's own recovery
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict):  # a damaged line: verify reports it; it must not stop the start
                continue
            keys.add((rec.get("request_id"), rec.get("ts")))
            observe(rec)
    return keys


def warn(root: Path, count: int, stream=None, reason: str | None = None) -> None:
    why = f" ({reason})" if reason else ""
    print(f"vllm-audit-exporter: no usable checkpoint{why} but the archive in {root} holds "
          f"{count} records: rebuilding metrics from the archive and re-reading the inputs from "
          "their start, skipping requests already archived", file=stream or sys.stderr)
