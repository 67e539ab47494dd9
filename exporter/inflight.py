"""The correlator's in-flight store: requests by slot, oldest first, with
what changed since the last commit.

* **Order.** An :class:`collections.OrderedDict` in arrival order (entries
  are inserted once and never moved), so the oldest request is
  :meth:`InFlight.oldest` in O(1). A plain dict is not: after many
  deletions at its front, ``next(iter(d))`` skips every dead slot left
  there until the next resize, which made evicting the oldest request
  linear in the in-flight count.
* **Dirty slots.** ``dirty`` holds every slot added, changed or removed
  since the last successful checkpoint commit; the checkpoint journals just
  those (:mod:`exporter.journal`), so a commit costs what changed, not what
  is in flight. ``sync`` is the journal this store's last commit went to
  (set by :mod:`exporter.checkpoint`): None until the first commit, and
  again after a failed one, so the next commit writes a full base.
* It is still plain JSON data: ``json`` encodes it as the dict it is.
"""

from __future__ import annotations

from collections import OrderedDict

# Dirty slots beyond this many times the in-flight count (plus DIRTY_SLACK)
# mean nobody commits this store (a correlator used on its own): forget
# them, so the next commit is a full base and the set stays bounded.
DIRTY_FACTOR = 2
DIRTY_SLACK = 4096


class InFlight(OrderedDict):
    """In-flight entries by slot, in arrival order; see the module rules."""

    __slots__ = ("dirty", "sync")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dirty: set[str] = set()
        self.sync = None  # checkpoint.JournalSync of the last commit, or None

    def oldest(self) -> dict:
        """The entry that arrived first (O(1))."""
        return next(iter(self.values()))

    def mark(self, slots) -> None:
        """``slots`` changed (or went) since the last commit."""
        dirty = self.dirty
        dirty |= slots
        if len(dirty) > DIRTY_FACTOR * len(self) + DIRTY_SLACK:
            dirty.clear()
            self.sync = None  # the next commit is a full base

    def committed(self, sync) -> None:
        """A commit of this store is durable: nothing is dirty against it."""
        self.dirty.clear()
        self.sync = sync
