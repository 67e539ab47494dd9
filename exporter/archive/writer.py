"""Local audit archive: one JSONL file per UTC day, hash-chained, fsynced in
batches, cut back to the last checkpoint on recovery.

Exactly-once contract with the pipeline (docs/design.md): the pipeline calls
:meth:`ArchiveWriter.flush`, then stores :meth:`ArchiveWriter.state` in its
atomic checkpoint. Everything written after the checkpointed state was never
committed, so :meth:`ArchiveWriter.open` removes it and the pipeline re-derives
the same records from the checkpointed log offsets.

With a ``tree`` (:class:`exporter.transparency.tree.TreeFile`, what the
runtime always passes) every sealed record also gets its Merkle leaf; the
flush writes the tree right after the archive, the state carries the tree's
size and frontier, and :meth:`open` brings the tree back to exactly the
recovered records, by the same rule.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from exporter.chain import GENESIS, Chain
from exporter.archive import manifest as mf
from exporter.archive.layout import data_name, day_of, iter_lines, list_days, manifest_name, parse_name
from exporter.durable import fsync_dir, make_dir

_CHUNK = 1 << 16


class ArchiveError(RuntimeError):
    """The archive on disk contradicts the checkpoint; refusing to guess."""


def _last_line(path: Path, size: int) -> tuple[bytes | None, int]:
    """``(last complete line without \\n, byte offset just after it)``.

    Scans backwards so a multi-GB day file costs a few reads. Returns
    ``(None, 0)`` when the first ``size`` bytes hold no complete line.
    """
    with open(path, "rb") as fh:
        end = None  # offset just after the last b"\n"
        pos = size
        tail = b""
        while pos > 0:
            start = max(0, pos - _CHUNK)
            fh.seek(start)
            tail = fh.read(pos - start) + tail
            pos = start
            if end is None:
                idx = tail.rfind(b"\n")
                if idx < 0:
                    continue
                end = pos + idx + 1
                tail = tail[:idx]
            prev = tail.rfind(b"\n")
            if prev >= 0:
                return tail[prev + 1:], end
        if end is None:
            return None, 0
        return tail, end


def _parse_head(line: bytes, where: str) -> tuple[int, str]:
    try:
        rec = json.loads(line)
        seq, head = rec["seq"], rec["hash"]
    except (ValueError, KeyError, TypeError):
        raise ArchiveError(f"last record of {where} is not a sealed archive record") from None
    if not isinstance(seq, int) or not isinstance(head, str):
        raise ArchiveError(f"last record of {where} has an invalid seq/hash")
    return seq, head


class ArchiveWriter:
    def __init__(self, root: Path, *, chain: Chain, clock: Callable[[], float] = time.time,
                 fsync_every: int = 256, file_mode: int = 0o640, tree=None) -> None:
        self._root = Path(root)
        self.tree = tree
        self._chain = chain
        self._clock = clock
        self._fsync_every = max(1, fsync_every)
        self._mode = file_mode
        if not self._root.is_dir():
            make_dir(self._root)
        self._seq = 0                 # last sealed (maybe still buffered)
        self._head = GENESIS
        self._committed_seq = 0       # last fsynced
        self._committed_head = GENESIS
        self._file: str | None = None
        self._size = 0
        self._fd: int | None = None
        self._buf: list[bytes] = []  # encoded lines, "\n" included
        self._recs: list[dict] = []   # their sealed records, not yet handed to the tree
        # The last flush failed (disk full, read-only...): its error, and since when.
        # Cleared by the next flush that succeeds.
        self.write_error: str | None = None
        self.failing_since: float | None = None
        self.write_failures = 0  # flushes that failed, ever (a counter for metrics)

    # -- recovery -----------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, chain: Chain, state: dict | None, *,
             clock: Callable[[], float] = time.time, fsync_every: int = 256,
             file_mode: int = 0o640, tree=None) -> "ArchiveWriter":
        """A writer that continues the archive at ``root``.

        With ``state`` (from the checkpoint): cut ``state['file']`` back to
        ``state['size']``, delete files of later days (uncommitted) and check
        that the remaining last record is the checkpointed chain head.
        Without ``state`` (checkpoint lost): keep every complete line, drop a
        torn last line, continue after the newest record on disk.
        """
        w = cls(root, chain=chain, clock=clock, fsync_every=fsync_every, file_mode=file_mode, tree=tree)
        if state is not None:
            w._recover_to_state(state)
        else:
            w._recover_from_files()
        if tree is not None:
            from exporter.transparency.tree import TreeError
            try:
                tree.recover(w._committed_seq, (state or {}).get("tree"), w._records_from)
            except TreeError as exc:
                raise ArchiveError(str(exc)) from None
        return w

    def _records_from(self, start: int):
        """Archived records with ``seq >= start``, in order (tree recovery).

        A day retention deleted yields ``{"seq": s, "unavailable": True}``
        for each of its seqs (from its manifest): an archive from before the
        tree gets placeholder leaves there, so leaf ``i`` stays seq ``i + 1``."""
        for day in list_days(self._root):
            if day.data is None:
                try:
                    m = mf.read_manifest(day.manifest) if day.manifest is not None else {}
                except (OSError, ValueError):
                    m = {}
                first, last = m.get("first_seq"), m.get("last_seq")
                if m.get(mf.RETENTION_FIELD) and isinstance(first, int) and isinstance(last, int):
                    for s in range(max(first, start), last + 1):
                        yield {"seq": s, "unavailable": True}
                continue
            if day.manifest is not None and day.day != (parse_name(self._file)[0] if self._file else None):
                try:
                    last = mf.read_manifest(day.manifest).get("last_seq")
                except (OSError, ValueError):
                    last = None
                if isinstance(last, int) and last < start:
                    continue
            for raw in iter_lines(day.data):
                if not raw.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("seq"), int) and rec["seq"] >= start:
                    yield rec

    def _recover_to_state(self, state: dict) -> None:
        name, size = state.get("file"), int(state.get("size") or 0)
        seq, head = int(state.get("seq") or 0), state.get("head_hash") or GENESIS
        if name is not None and (parse_name(name) is None or not name.endswith(".jsonl")):
            raise ArchiveError(f"checkpoint names an invalid archive file: {name!r}")
        keep_day = parse_name(name)[0] if name else None
        for day in list_days(self._root):
            if keep_day is not None and day.day < keep_day:
                continue
            for path in (day.jsonl, day.gz, day.manifest):
                # Same day: only its manifest goes (the day is open again).
                if path is not None and (day.day != keep_day or path == day.manifest):
                    path.unlink()
        fsync_dir(self._root)
        if name is None:
            return
        path = self._root / name
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise ArchiveError(f"{name} is missing but the checkpoint committed {size} bytes of it") from None
        if actual < size:
            raise ArchiveError(f"{name} has {actual} bytes but the checkpoint committed {size}: "
                               "committed records were lost")
        if actual > size:
            os.truncate(path, size)
        if size > 0:
            # The cut must land just after the checkpointed head record.
            line, end = _last_line(path, size)
            if line is None or end != size or _parse_head(line, name) != (seq, head):
                raise ArchiveError(f"{name} does not end with the checkpointed record seq={seq} "
                                   f"at byte {size}")
        self._file, self._size = name, size
        self._seq = self._committed_seq = seq
        self._head = self._committed_head = head
        self._open_fd()

    def _recover_from_files(self) -> None:
        days = list_days(self._root)
        newest = next((d for d in reversed(days) if d.jsonl is not None), None)
        if newest is not None:
            path = newest.jsonl
            line, end = _last_line(path, path.stat().st_size)
            if end != path.stat().st_size:
                os.truncate(path, end)  # torn last line: never committed
            if newest.manifest is not None:
                newest.manifest.unlink()
            fsync_dir(self._root)
            self._file, self._size = path.name, end
            if line is not None:
                self._seq, self._head = _parse_head(line, path.name)
        if self._seq == 0:
            # The open file is empty: the head is the end of an earlier day.
            for day in reversed(days):
                if newest is not None and day.day >= newest.day:
                    continue
                if day.manifest is not None:
                    m = mf.read_manifest(day.manifest)
                    if isinstance(m.get("last_seq"), int):
                        self._seq, self._head = m["last_seq"], m["last_hash"]
                        break
        self._committed_seq, self._committed_head = self._seq, self._head
        if self._file is not None:
            self._open_fd()

    # -- writing ------------------------------------------------------------------

    def append(self, record: dict) -> dict:
        """Seal ``record`` as the next link and buffer it; returns the sealed dict.

        Flushes by itself every ``fsync_every`` records to bound memory; the
        pipeline normally flushes (and then checkpoints) on its own cadence.
        That flush never raises: a record once sealed stays buffered, the
        error is kept in :attr:`write_error` and :attr:`full` tells the
        pipeline to stop taking records until a flush succeeds again (its
        commit retries). While failing, no further implicit flush is tried.
        """
        sealed, line = self._chain.seal_line(record, self._seq + 1, self._head)
        self._seq, self._head = sealed["seq"], sealed["hash"]
        self._buf.append(line)
        if self.tree is not None:
            # Leaves are computed at flush, for the batch, from these lines.
            self._recs.append(sealed)
        if len(self._buf) >= self._fsync_every and self.write_error is None:
            try:
                self.flush()
            except OSError:
                pass  # kept in write_error; the pipeline pauses and retries
        return sealed

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def full(self) -> bool:
        """The buffer is at its bound and the disk refuses it: take no more
        records (read no more input) until :meth:`flush` succeeds."""
        return self.write_error is not None and len(self._buf) >= self._fsync_every

    def flush(self) -> None:
        """Write and fsync the buffered lines, switching day files first."""
        if not self._buf and not (self.tree is not None and (self.tree.pending or self._recs)):
            return
        if self._recs:
            # The tree's entries for the records not handed over yet (their
            # lines are the last len(self._recs) of the buffer). Once handed
            # over they stay pending in the tree until its flush succeeds.
            recs, self._recs = self._recs, []
            self.tree.extend(recs, self._buf[len(self._buf) - len(recs):])
        try:
            if self._buf:
                self._write_buffer()
            if self.tree is not None:
                # After the archive, before the pipeline's checkpoint: a
                # committed record always has its leaf.
                self.tree.flush()
        except OSError as exc:
            self.write_failures += 1
            if self.write_error is None:
                self.failing_since = self._clock()
            name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
            self.write_error = f"{name + ': ' if name else ''}{exc.strerror or exc}"
            raise
        self.write_error = self.failing_since = None

    def _write_buffer(self) -> None:
        today = day_of(self._clock())
        current = parse_name(self._file)[0] if self._file else None
        # Only ever move forward: a clock stepping back keeps the open file
        # rather than reopening a sealed day.
        if current is None or today > current:
            self._switch(today)
        elif self._fd is None:  # a day switch that failed after sealing the old day
            self._open_fd()
            self._size = os.fstat(self._fd).st_size
        data = b"".join(self._buf)
        try:
            # Not durable.write_fully: the disk-full fault tests swap this
            # module's os.write to fail (tests/faults/test_fault_disk.py).
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            # Leave no partial batch behind (ENOSPC...): the next try rewrites it whole.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(data)
        self._buf.clear()
        self._committed_seq, self._committed_head = self._seq, self._head

    def state(self) -> dict:
        """What the pipeline checkpoints: file, size, seq, head_hash after the last flush."""
        state = {"file": self._file, "size": self._size,
                 "seq": self._committed_seq, "head_hash": self._committed_head}
        if self.tree is not None:
            state["tree"] = self.tree.state()
        return state

    def close(self) -> None:
        """Flush and close; the day stays open (its manifest comes at day change)."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.tree is not None:
            self.tree.close()

    def abandon(self) -> None:
        """Close without writing what is buffered (it was never committed):
        the pipeline is being rebuilt from its last checkpoint, which
        re-derives those records."""
        self._buf.clear()
        self._recs.clear()
        if self.tree is not None:
            self.tree.abandon()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files --------------------------------------------------------------------

    def _open_fd(self) -> None:
        path = self._root / self._file
        existed = path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self._mode)
        os.fchmod(self._fd, self._mode)  # umask-proof
        if not existed:
            fsync_dir(self._root)

    def _switch(self, day: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            old = self._root / self._file
            if self._size == 0:
                old.unlink(missing_ok=True)  # nothing to seal
            else:
                self._seal_day(old)
        self._file, self._size = data_name(day), 0
        self._open_fd()
        self._size = os.fstat(self._fd).st_size

    def _seal_day(self, path: Path) -> None:
        summary = mf.summarize(path, path.name, self._chain.kind)
        if self.tree is not None:
            # The tree as the day closes (its records are all committed here:
            # the day switches before the next day's first write).
            size, root = self.tree.committed_root()
            summary["tree_size"], summary["tree_root"] = size, base64.b64encode(root).decode()
        day = parse_name(path.name)[0]
        mf.write_manifest(self._root / manifest_name(day), mf.seal(summary, self._chain.key), self._mode)
