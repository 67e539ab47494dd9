"""What verify finds and says: the exit codes, the problem kinds (stable
strings, documented in docs/compliance.md), one :class:`Problem` (the first
broken link, named by file, line and seq) and the :class:`Report` of a walk."""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_UNANCHORED = 0, 1, 2, 3

# Problem kinds (stable strings, documented in docs/compliance.md).
EDITED, DELETED, INSERTED, REORDERED, BROKEN_LINK = "edited", "deleted", "inserted", "reordered", "broken_link"
TRUNCATED, TORN, MISSING_FILE, MISSING_MANIFEST = "truncated", "torn_line", "missing_file", "missing_manifest"
MANIFEST_MISMATCH, UNREADABLE = "manifest_mismatch", "unreadable"
DELETED_FILE, CHECKPOINT = "deleted_file", "checkpoint"


class VerifyUsageError(Exception):
    """The archive cannot be verified as asked (exit code 2)."""


@dataclass
class Problem:
    kind: str
    file: str
    line: int | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = self.file + (f" line {self.line}" if self.line else "")
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{where}{seq}: {self.kind}: {self.detail}"


@dataclass
class Report:
    problem: Problem | None = None
    files: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    chain: str | None = None
    retained_days: list[str] = field(default_factory=list)
    # Why the end of the archive could not be checked (exit 3); empty when
    # a trusted checkpoint anchored it.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None
