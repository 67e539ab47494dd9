"""The archive on disk: ``writer`` (the hash-chained daily JSONL files, fsync
batches, cut-back on recovery), ``layout`` (file names), ``manifest`` (per-day
seals), ``recovery`` (start without a checkpoint). Compliance reads it."""

from exporter.archive.writer import ArchiveError, ArchiveWriter

__all__ = ["ArchiveError", "ArchiveWriter"]
