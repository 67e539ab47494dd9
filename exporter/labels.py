"""Bounded, deterministic label values (``user``, ``model``, ...).

Every label value that comes from a request (the user identity, the model a
client asked for, a finish reason) is attacker- or client-controlled, so each
label dimension is bounded: the first ``limit`` distinct values keep their
name, later ones fold to ``__other__``. Folding keeps sums exact
(``sum by (model) (vllm_audit_requests_total)`` is the true total) while the
series count stays at most ``limit + 2`` per dimension.

Admission is first-come and therefore depends on history; ``state()`` /
``restore()`` carry the admitted values (in admission order) across restarts
so the same record always gets the same label. The Loki pusher shares the
same :class:`UserLabels` object, so Loki stream labels match metric labels.

Sanitising (``clean``):

- ``None`` and ``""`` become ``unknown`` (an empty label value is the same as
  no label in Prometheus, which would silently merge series);
- lone surrogates (possible after ``json.loads`` of hostile input) are
  replaced, because one of them in a label value makes the whole exposition
  fail to encode as UTF-8;
- values are cut to :data:`MAX_LABEL_LENGTH` (128) characters. Any string is
  a legal Prometheus label value, but long ones waste memory in Prometheus
  and Loki; two values sharing a 128-character prefix share a series.

The reserved values ``unknown`` and ``__other__`` never take a slot.
"""

from __future__ import annotations

import threading

UNKNOWN = "unknown"
OTHER = "__other__"
MAX_LABEL_LENGTH = 128
_RESERVED = frozenset((UNKNOWN, OTHER))


def clean(value: object) -> str:
    """Sanitise one label value (see the module docstring)."""
    if value is None:
        return UNKNOWN
    text = value if isinstance(value, str) else str(value)
    if not text:
        return UNKNOWN
    text = text[:MAX_LABEL_LENGTH]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class BoundedLabels:
    """Map raw values to at most ``limit`` distinct label values plus
    ``unknown`` and ``__other__``.

    >>> b = BoundedLabels(limit=1)
    >>> b.label("alice"), b.label("bob"), b.label(None), b.label("alice")
    ('alice', '__other__', 'unknown', 'alice')
    >>> b.state()
    ['alice']
    """

    def __init__(self, limit: int, enabled: bool = True):
        if limit < 0:
            raise ValueError(f"label limit must be >= 0, got {limit}")
        self.limit = limit
        self.enabled = enabled
        self._admitted: dict[str, None] = {}  # insertion-ordered set
        # raw value -> label, for the hot path. Only admitted or reserved
        # results are cached; the cache is bounded because many raw values can
        # clean to one label (truncation), and an attacker could vary them.
        self._cache: dict[object, str] = {None: UNKNOWN, "": UNKNOWN}
        self._cache_max = 4 * limit + 16
        # Admission is the only write; a lock keeps two threads (pipeline and
        # Loki pusher) from both taking the last slot. Lookups need no lock.
        self._lock = threading.Lock()

    def label(self, value: object) -> str | None:
        """The label value for ``value``; ``None`` when the label is disabled."""
        if not self.enabled:
            return None
        try:
            return self._cache[value]
        except KeyError:
            return self._slow(value)
        except TypeError:  # unhashable raw value (a list from bad JSON)
            return self._slow(repr(value))

    def _slow(self, value: object) -> str:
        text = clean(value)
        if text in _RESERVED:
            result = text
        elif text in self._admitted:
            result = text
        else:
            with self._lock:
                if text not in self._admitted and len(self._admitted) < self.limit:
                    self._admitted[text] = None
                result = text if text in self._admitted else OTHER
        if result != OTHER and len(self._cache) < self._cache_max:
            self._cache[value] = result
        return result

    def state(self) -> list[str]:
        """Admitted values in admission order (JSON-serialisable)."""
        return list(self._admitted)

    def restore(self, state: list[str]) -> None:
        """Replace the admitted set. Keeps the first ``limit`` entries if the
        limit shrank since the state was saved (their counters stay; new
        records for the rest fold to ``__other__``)."""
        if not isinstance(state, list) or not all(isinstance(v, str) for v in state):
            raise ValueError(f"label state must be a list of str, got {state!r:.80}")
        with self._lock:
            self._admitted = dict.fromkeys(v for v in state if v not in _RESERVED)
            if len(self._admitted) > self.limit:
                self._admitted = dict.fromkeys(list(self._admitted)[: self.limit])
            self._cache = {None: UNKNOWN, "": UNKNOWN}


class UserLabels(BoundedLabels):
    """The ``user`` label: ``--max-users`` (default 500), or no label at all
    with ``--no-user-label`` (``label()`` then returns ``None``).

    >>> u = UserLabels(max_users=2)
    >>> [u.label(x) for x in ("alice", "bob", "carol", None)]
    ['alice', 'bob', '__other__', 'unknown']
    >>> UserLabels(enabled=False).label("alice") is None
    True
    """

    def __init__(self, max_users: int = 500, enabled: bool = True):
        super().__init__(limit=max_users, enabled=enabled)
