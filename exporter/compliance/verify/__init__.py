"""``vllm-audit-exporter verify DIR``: check the archive's chain and manifests.

Walks the day files oldest first, recomputes every record's hash, checks seq
continuity and ``prev_hash`` links within and across files (also across days
whose data file retention deleted, through their manifest), and compares
closed days to their manifests. Stops at the FIRST broken link and names it.

The end of the newest file is checked against the exporter's checkpoint
(``STATE_DIR/checkpoint.json``, see :func:`read_anchor`): cutting whole
records off the end leaves nothing inside the archive to show it. A day
whose data file is gone is accepted only when its manifest holds the record
that a retention run wrote before deleting it (keyed like the manifest).

Exit codes: 0 intact, 1 broken (tampered, truncated, missing, a deletion no
retention run recorded, a checkpoint that fails its HMAC), 2 cannot verify
(no archive, unreadable key or directory, keyed archive without a key), 3
the chain is intact but its end cannot be checked (no checkpoint, or one
that cannot be trusted): records cut from the end are not ruled out.

The parts: :mod:`.walk` (the chain), :mod:`.manifests` (a day against its
manifest), :mod:`.anchor` (the checkpoint), :mod:`.problems` (what is found)
and :mod:`.main` (the command).
"""

from .anchor import Anchor, read_anchor
from .main import verify_main
from .problems import (
    BROKEN_LINK, CHECKPOINT, DELETED, DELETED_FILE, EDITED, EXIT_BROKEN, EXIT_OK, EXIT_UNANCHORED, EXIT_USAGE,
    INSERTED, MANIFEST_MISMATCH, MISSING_FILE, MISSING_MANIFEST, REORDERED, TORN, TRUNCATED, UNREADABLE,
    Problem, Report, VerifyUsageError,
)
from .walk import verify_archive

__all__ = ["Anchor", "BROKEN_LINK", "CHECKPOINT", "DELETED", "DELETED_FILE", "EDITED", "EXIT_BROKEN",
           "EXIT_OK", "EXIT_UNANCHORED", "EXIT_USAGE", "INSERTED", "MANIFEST_MISMATCH", "MISSING_FILE",
           "MISSING_MANIFEST", "REORDERED", "TORN", "TRUNCATED", "UNREADABLE", "Problem", "Report",
           "VerifyUsageError", "read_anchor", "verify_archive", "verify_main"]
