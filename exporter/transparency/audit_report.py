"""The report of ``verify --public-key``: problems (the first one is the first
broken record or checkpoint), warnings and the figures an auditor files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone


def _utc(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Problem:
    kind: str
    where: str
    detail: str
    seq: int | None = None

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.where}{seq}: {self.kind}: {self.detail}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: int = 0
    tree_size: int = 0
    checkpoints: int = 0
    signed_size: int | None = None
    signed_root: str | None = None
    first_time: str | None = None
    last_time: str | None = None
    epochs: list[dict] = field(default_factory=list)
    witnessed_size: int | None = None
    witnesses: dict[str, int] = field(default_factory=dict)  # witness name -> checkpoints cosigned
    timestamps: int = 0
    gaps: list[dict] = field(default_factory=list)
    retained_days: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, where: str, detail: str, seq: int | None = None) -> None:
        self.problems.append(Problem(kind, where, detail, seq))

    def to_json(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["first_problem"] = str(self.problems[0]) if self.problems else None
        return out
