"""The durable Merkle tree over every archived record: ``ARCHIVE/tlog/tree.bin``.

One 48-byte entry per record, in append order across days and restarts:
the record's 16-byte content salt, then its 32-byte leaf hash
(:mod:`exporter.transparency.leaf`). Entry ``i`` is the record ``seq = i + 1``.
Proofs are computed from this file alone, never from the records.

Exactly once with the archive, by the archive's own rule
(:mod:`exporter.archive.writer`): :class:`TreeFile` buffers an entry per
sealed record, and the writer's flush writes and fsyncs the tree right after
the archive and *before* the pipeline writes its checkpoint; the checkpoint
holds the tree's size and frontier with the archive state. On start the
file is cut back to the checkpointed ``seq`` (entries past it were never
committed), and entries missing for committed records (a crash between the
archive's fsync and the tree's, on the path without a checkpoint) are
recomputed from the archive. The tree therefore always has exactly one
entry per archived record.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from exporter.durable import fsync_dir, make_dir, write_fully
from exporter.transparency import leaf_line, merkle
from exporter.transparency.leaf import SALT_BYTES, record_leaf, unavailable_leaf

ENTRY = SALT_BYTES + 32
_READ = ENTRY * 4096


class TreeError(RuntimeError):
    """The tree file cannot be brought in line with the archive."""


def _frontier_of(path: Path, count: int) -> merkle.Frontier:
    f = merkle.Frontier()
    with open(path, "rb") as fh:
        left = count
        while left:
            chunk = fh.read(min(left, 4096) * ENTRY)
            if len(chunk) < ENTRY:
                raise TreeError(f"{path}: shorter than {count} entries")
            f.extend([chunk[off + SALT_BYTES:off + ENTRY]
                      for off in range(0, len(chunk) - len(chunk) % ENTRY, ENTRY)])
            left -= len(chunk) // ENTRY
    return f


_SALT_BATCH = 256


class TreeFile:
    """The writer's side: appends entries, flushed with the archive."""

    def __init__(self, path: Path, mode: int = 0o640, random: Callable[[int], bytes] = os.urandom) -> None:
        self.path = Path(path)
        self._mode = mode
        self._fd: int | None = None
        self._durable = 0
        self._frontier = merkle.Frontier()
        self._committed: tuple[int, list[bytes]] = (0, [])
        self._pending: list[bytes] = []  # entries not yet written, in runs of one or more
        self._npending = 0                # how many entries they hold
        # Salts: 16 bytes of the kernel's CSPRNG per record, drawn for a
        # batch of records in one call (``random(16 * n)``, cut in 16-byte
        # pieces). The pieces of one draw are as independent and as
        # unpredictable as separate draws (a CSPRNG's output is
        # indistinguishable from uniform bytes, however it is cut), so this
        # is os.urandom per record without a system call per record. A
        # draw lives only in this process's memory until its salts are used
        # (at most a batch ahead, like the seed of a DRBG would).
        self._random = random
        self._salt_pool = b""
        self._salt_at = 0

    # -- recovery -------------------------------------------------------------
    def recover(self, seq: int, saved: dict | None, records: Callable[[int], Iterator[dict]]) -> None:
        """Make the file hold exactly ``seq`` entries (the committed records).

        ``saved``: the tree state the checkpoint holds (its frontier saves
        re-reading the file); ``records(start)``: the archived records from
        ``seq = start`` on, in order, to recompute missing entries.
        """
        if not self.path.parent.is_dir():
            make_dir(self.path.parent)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, self._mode)
        os.fchmod(self._fd, self._mode)
        if not existed:
            fsync_dir(self.path.parent)
        size = os.fstat(self._fd).st_size
        n = min(size // ENTRY, seq)
        if size != n * ENTRY:
            os.ftruncate(self._fd, n * ENTRY)  # torn or uncommitted entries
            os.fsync(self._fd)
        self._durable = n
        self._pending.clear()
        self._npending = 0
        frontier = None
        if saved and saved.get("size") == n:
            try:
                frontier = merkle.Frontier(n, [base64.b64decode(x) for x in saved.get("frontier") or ()])
            except (ValueError, TypeError):
                frontier = None
        self._frontier = frontier or _frontier_of(self.path, n)
        self._committed = (self._frontier.size, list(self._frontier.nodes))
        if n < seq:
            expected = n + 1
            for rec in records(expected):
                if rec.get("seq") != expected:
                    raise TreeError(f"cannot rebuild the tree: expected archived record seq {expected}, "
                                    f"found {rec.get('seq')!r}")
                self.append(rec)
                expected += 1
                if expected > seq:
                    break
            if expected <= seq:
                raise TreeError(f"cannot rebuild the tree: archived records {expected}..{seq} are not readable")
            self.flush()

    # -- writing --------------------------------------------------------------
    def _salt_block(self, n: int) -> bytes:
        """The next ``n`` salts, end to end."""
        pool, at = self._salt_pool, self._salt_at
        if len(pool) - at < n * SALT_BYTES:
            pool = pool[at:] + self._random(max(n, _SALT_BATCH) * SALT_BYTES)
            at = 0
        self._salt_pool, self._salt_at = pool, at + n * SALT_BYTES
        return pool[at:at + n * SALT_BYTES]

    def append(self, record: dict, line: bytes | None = None) -> None:
        """One sealed record (``line``: its archive line, if at hand)."""
        self.extend([record], None if line is None else [line])

    def extend(self, records: list[dict], lines: list[bytes] | None = None) -> None:
        """Entries for sealed ``records`` in order; ``lines``: their archive
        lines (bytes, as written), from which the leaf is computed without
        re-encoding the record (:mod:`exporter.transparency.leaf_line`).

        With the C module the whole batch (leaves, entries, frontier) is one
        call; where it declines, and in pure Python, the loop below (the
        reference) decides each entry."""
        if not records:
            return
        salts = self._salt_block(len(records))
        f = self._frontier
        batch = leaf_line.writer_entries
        if lines is not None and batch is not None:
            done = batch(lines, salts, f.size, f.nodes)
            if done is not None:
                self._pending.append(done[0])
                self._npending += len(records)
                f.size += len(records)
                f.nodes = done[1]
                return
        entries, leaves = [], []
        for i, record in enumerate(records):
            salt = salts[i * SALT_BYTES:(i + 1) * SALT_BYTES]
            leaf = leaf_line.writer_leaf(record, lines[i], salt) if lines is not None else None
            if leaf is None:
                if record.get("unavailable") is True and len(record) == 2:
                    salt, leaf = bytes(SALT_BYTES), unavailable_leaf(record["seq"])
                else:
                    leaf = record_leaf(record, salt)
            entries.append(salt + leaf)
            leaves.append(leaf)
        self._pending.extend(entries)
        self._npending += len(records)
        f.extend(leaves)

    @property
    def pending(self) -> int:
        return self._npending

    def flush(self) -> None:
        """Write and fsync the pending entries (all or none: a failed write is cut off)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        try:
            write_fully(self._fd, data)
        except OSError:
            try:
                os.ftruncate(self._fd, self._durable * ENTRY)
            except OSError:
                pass
            raise
        self._durable += self._npending
        self._pending.clear()
        self._npending = 0
        self._committed = (self._frontier.size, list(self._frontier.nodes))

    def state(self) -> dict:
        """Size and frontier after the last flush (what the checkpoint keeps)."""
        size, nodes = self._committed
        return {"size": size, "frontier": [base64.b64encode(h).decode() for h in nodes]}

    def committed_root(self) -> tuple[int, bytes]:
        size, nodes = self._committed
        return size, merkle.Frontier(size, nodes).root()

    def abandon(self) -> None:
        self._pending.clear()
        self._npending = 0
        self._frontier = merkle.Frontier(*self._committed)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def state_root(state: dict | None) -> tuple[int, bytes]:
    """``(size, root)`` of a checkpointed tree state (:meth:`TreeFile.state`)."""
    if not state:
        return 0, merkle.EMPTY_ROOT
    nodes = [base64.b64decode(x) for x in state.get("frontier") or ()]
    return int(state["size"]), merkle.Frontier(int(state["size"]), nodes).root()


class TreeReader:
    """Read-only proofs over the tree file, safe beside the writer (it only
    reads entries below sizes that were already flushed). Hashes of complete
    aligned blocks of :attr:`BLOCK` leaves are cached, so a proof costs
    O(size / BLOCK + BLOCK * log size) hashes, not O(size)."""

    BLOCK = 256

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._blocks: list[bytes] = []
        self._lock = threading.Lock()

    def size(self) -> int:
        try:
            return self.path.stat().st_size // ENTRY
        except FileNotFoundError:
            return 0

    def read(self, lo: int, hi: int, part: slice = slice(None)) -> list[bytes]:
        """Entries ``lo..hi-1`` in one read, each cut to ``part`` of it
        (``slice(SALT_BYTES, None)``: the leaf hashes)."""
        with open(self.path, "rb") as fh:
            fh.seek(lo * ENTRY)
            data = fh.read((hi - lo) * ENTRY)
        if len(data) != (hi - lo) * ENTRY:
            raise ValueError(f"tree file holds fewer than {hi} entries")
        start, stop, _ = part.indices(ENTRY)
        return [data[i + start:i + stop] for i in range(0, len(data), ENTRY)]

    def entries(self, lo: int, hi: int) -> list[bytes]:
        return self.read(lo, hi)

    def leaves(self, lo: int, hi: int) -> list[bytes]:
        return self.read(lo, hi, slice(SALT_BYTES, None))

    def salt(self, index: int) -> bytes:
        return self.entries(index, index + 1)[0][:SALT_BYTES]

    def _block(self, j: int) -> bytes:
        while len(self._blocks) <= j:
            k = len(self._blocks)
            self._blocks.append(merkle.root(self.leaves(k * self.BLOCK, (k + 1) * self.BLOCK)))
        return self._blocks[j]

    def range_root(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        b = self.BLOCK
        if n & (n - 1) == 0 and n >= b and lo % b == 0:
            return merkle.root([self._block(j) for j in range(lo // b, hi // b)])
        if n <= b:
            return merkle.root(self.leaves(lo, hi))
        k = 1 << ((n - 1).bit_length() - 1)
        return merkle.node_hash(self.range_root(lo, lo + k), self.range_root(lo + k, hi))

    def root(self, size: int) -> bytes:
        with self._lock:
            return self.range_root(0, size) if size else merkle.EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check(size)
        with self._lock:
            return merkle.inclusion_proof(index, size, self.range_root)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        self._check(size)
        with self._lock:
            return merkle.consistency_proof(old_size, size, self.range_root)

    def _check(self, size: int) -> None:
        if not 0 <= size <= self.size():
            raise ValueError(f"tree size {size} outside the stored tree of {self.size()} leaves")

    def reset(self) -> None:
        """Forget cached blocks (after the file was cut back)."""
        with self._lock:
            self._blocks.clear()
