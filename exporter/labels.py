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

No label carries personal data by accident (issue #18): a value in which the
content detectors find an e-mail address, phone number, ID or card number,
IP address or secret is never shown raw. In the bounded dimensions
(``model``, ``finish_reason``, ...) it folds to ``__other__``. The ``user``
label has a mode (``--user-label-mode``):

- ``pseudonymous`` (default): such a value becomes ``u:<16 hex>``, a keyed
  HMAC-SHA256 of it, stable across restarts; other values (``alice``, the
  middleware's ``key:<hash>``) stay readable;
- ``hashed``: every value becomes ``u:<16 hex>`` (names are personal data
  too, where that matters);
- ``raw``: the value as sent, e-mail addresses included.

The key is derived from the archive's HMAC key when there is one (anyone
holding that key can recompute a user's pseudonym), else it is a random key
kept in ``STATE_DIR/user-label.key``. An unkeyed hash would not do: the
e-mail addresses of a company are easily enumerated and hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from functools import lru_cache
from pathlib import Path

UNKNOWN = "unknown"
OTHER = "__other__"
MAX_LABEL_LENGTH = 128
_RESERVED = frozenset((UNKNOWN, OTHER))
USER_LABEL_MODES = ("pseudonymous", "hashed", "raw")
PSEUDONYM_PREFIX = "u:"
# Values that already are pseudonyms (ours, and the middleware's API-key
# id): kept as they are, so mapping a label again never changes it.
_PSEUDONYM = re.compile(r"(?:u|key):[0-9a-f]{16}\Z")
USER_LABEL_KEY_FILE = "user-label.key"
_KEY_CONTEXT = b"vllm-audit-exporter user label v1"


def personal(text: str) -> bool:
    """True when the content detectors find personal data or a secret in ``text``."""
    if len(text) > 1024:  # label values are shorter; keep the cache small
        from exporter.compliance.detect import looks_personal
        return looks_personal(text)
    return _personal(text)


@lru_cache(maxsize=4096)
def _personal(text: str) -> bool:
    from exporter.compliance.detect import looks_personal
    return looks_personal(text)


def user_label_key(hmac_key: bytes | None, state_dir: Path) -> bytes:
    """The pseudonym key: derived from ``hmac_key``, else read from (or, on
    a first start, created in) ``state_dir/user-label.key`` (mode 0600)."""
    if hmac_key:
        return hmac.new(hmac_key, _KEY_CONTEXT, hashlib.sha256).digest()
    path = Path(state_dir) / USER_LABEL_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise ValueError(f"{path}: not a user-label key (64 hex digits); restore it, or delete "
                             "it to start new pseudonyms") from None
        return bytes.fromhex(text)
    key = os.urandom(32)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    from exporter.durable import fsync_dir
    fsync_dir(path.parent)
    return key


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
        # raw values that fold to __other__: an answer that never changes
        # (the admitted set only grows, up to the limit, until restore()
        # replaces it and empties both). Beyond the limit most raw values
        # (10k users, --max-users 500) land here; this memo starts again
        # empty when full rather than stopping, so it follows the traffic.
        self._other: dict[object, str] = {}
        self._other_max = max(4096, self._cache_max)
        # Admission is the only write; a lock keeps two threads (pipeline and
        # Loki pusher) from both taking the last slot. Lookups need no lock.
        self._lock = threading.Lock()

    def label(self, value: object) -> str | None:
        """The label value for ``value``; ``None`` when the label is disabled."""
        if not self.enabled:
            return None
        # get(), not [] in a try: past the limit most user values are new
        # (6 634 users in 11 396 records of the replay bench), and a raised
        # KeyError costs more than the probe. Cached labels are never None.
        try:
            found = self._cache.get(value)
        except TypeError:  # unhashable raw value (a list from bad JSON)
            return self._slow(repr(value))
        if found is not None:
            return found
        if value in self._other:
            return OTHER
        return self._slow(value)

    def public(self, text: str) -> str:
        """How a cleaned value is shown: personal data folds to ``__other__``."""
        return OTHER if personal(text) else text

    def relabel(self, stored: str) -> str:
        """The label, under this configuration, of a value stored by an
        earlier run (checkpoint restore): an old raw e-mail is not revived."""
        return stored if stored in _RESERVED else self.public(clean(stored))

    def _slow(self, value: object) -> str:
        text = clean(value)
        admitted = self._admitted
        if text in _RESERVED or text in admitted:
            # An admitted value is its own public form (it was admitted as
            # public(x) and public() maps its own results to themselves), so
            # the detectors need not run again.
            result = text
        elif len(admitted) >= self.limit:
            # Full: nothing is admitted any more (until restore()), so the
            # answer is __other__ unless the public form is already in;
            # _folded() decides that without the detectors where it can.
            result = self._folded(text)
        else:
            text = self.public(text)
            if text in _RESERVED or text in self._admitted:
                result = text
            else:
                with self._lock:
                    if text not in self._admitted and len(self._admitted) < self.limit:
                        self._admitted[text] = None
                    result = text if text in self._admitted else OTHER
        if result != OTHER:
            if len(self._cache) < self._cache_max:
                self._cache[value] = result
        else:
            other = self._other
            if len(other) >= self._other_max:
                other.clear()
            other[value] = OTHER
        return result

    def _folded(self, text: str) -> str:
        """The label of a cleaned, unreserved, unadmitted ``text`` once the
        dimension is full: public(text) if that is admitted, else __other__.
        Here public(text) is ``text`` or __other__, so it is __other__."""
        return OTHER

    def state(self) -> list[str]:
        """Admitted values in admission order (JSON-serialisable)."""
        return list(self._admitted)

    def restore(self, state: list[str]) -> None:
        """Replace the admitted set. Keeps the first ``limit`` entries if the
        limit shrank since the state was saved (their counters stay; new
        records for the rest fold to ``__other__``)."""
        if not isinstance(state, list) or not all(isinstance(v, str) for v in state):
            raise ValueError(f"label state must be a list of str, got {state!r:.80}")
        relabelled = (self.relabel(v) for v in state if v not in _RESERVED)
        with self._lock:
            self._admitted = dict.fromkeys(v for v in relabelled if v not in _RESERVED)
            if len(self._admitted) > self.limit:
                self._admitted = dict.fromkeys(list(self._admitted)[: self.limit])
            self._cache = {None: UNKNOWN, "": UNKNOWN}
            self._other = {}


class UserLabels(BoundedLabels):
    """The ``user`` label: ``--max-users`` (default 500), or no label at all
    with ``--no-user-label`` (``label()`` then returns ``None``); values are
    shown per ``mode`` (see the module docstring). Without ``key`` a random
    one is used: pseudonyms then last only as long as the process.

    >>> u = UserLabels(max_users=2, key=b"k")
    >>> [u.label(x) for x in ("alice", "bob@example.com", "carol", None)]
    ['alice', 'u:3c106b25062f781d', '__other__', 'unknown']
    >>> UserLabels(mode="raw").label("bob@example.com")
    'bob@example.com'
    >>> UserLabels(enabled=False).label("alice") is None
    True
    """

    def __init__(self, max_users: int = 500, enabled: bool = True, mode: str = "pseudonymous",
                 key: bytes | None = None):
        if mode not in USER_LABEL_MODES:
            raise ValueError(f"user label mode must be one of {', '.join(USER_LABEL_MODES)}, got {mode!r}")
        super().__init__(limit=max_users, enabled=enabled)
        self.mode = mode
        self._key = key if key is not None else os.urandom(32)
        # Whether the admitted set (that dict, at that size) holds a pseudonym: see _folded().
        self._shapes: tuple[dict | None, int, bool] = (None, -1, False)

    def pseudonym(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:16]

    def public(self, text: str) -> str:
        if self.mode == "raw" or _PSEUDONYM.match(text):
            return text
        if self.mode == "hashed" or personal(text):
            return self.pseudonym(text)
        return text

    def _folded(self, text: str) -> str:
        # public(text) is ``text`` (not admitted: __other__) or its
        # pseudonym, which can only be admitted if some admitted value has a
        # pseudonym's shape. Checked in the order of cost: the mode, whether
        # the admitted set holds any pseudonym (kept per set, which does not
        # change once full), the value's shape, the HMAC; the detectors run
        # only when the pseudonym is in fact admitted.
        if self.mode == "raw":
            return OTHER
        admitted = self._admitted
        seen, size, any_pseudonym = self._shapes
        if seen is not admitted or size != len(admitted):
            any_pseudonym = any(_PSEUDONYM.match(v) for v in admitted)
            self._shapes = (admitted, len(admitted), any_pseudonym)  # one swap: no lock needed
        if not any_pseudonym or _PSEUDONYM.match(text):
            return OTHER
        pseudonym = self.pseudonym(text)
        if pseudonym in admitted and (self.mode == "hashed" or personal(text)):
            return pseudonym
        return OTHER


class ServedModels:
    """The model names vLLM serves: the ``model`` label's bound.

    A client may send any ``model`` (vLLM rejects an unknown one, the
    middleware still records it), so, once the served names are known, a
    name vLLM does not serve folds to ``__other__`` in metric and Loki
    labels; the record keeps the name the client sent. The names are those
    of every source's last start-up line (:mod:`exporter.learned`) plus
    ``--model``; with neither, nothing is folded here (the dimension's
    first-come bound still applies).

    >>> s = ServedModels("tiny")
    >>> s.fold("tiny"), s.fold("junk"), s.fold(None)
    ('tiny', '__other__', None)
    >>> s.learn("vllm", ["a", "b"]); s.fold("b"), s.fold("tiny")
    ('b', 'tiny')
    """

    def __init__(self, flag: str | None = None):
        self.flag = flag
        self._by_source: dict[str, tuple[str, ...]] = {}
        self._names: frozenset[str] | None = frozenset((flag,)) if flag else None

    def learn(self, source: str, names) -> None:
        """``names``: the served names a source's start-up line gave (None: unknown)."""
        if names:
            self._by_source[source] = tuple(n for n in names if isinstance(n, str))
        else:
            self._by_source.pop(source, None)
        found = {n for names in self._by_source.values() for n in names}
        if self.flag:
            found.add(self.flag)
        self._names = frozenset(found) if found else None  # one reference swap: readers need no lock

    @property
    def names(self) -> frozenset[str] | None:
        return self._names

    def fold(self, name):
        """``name`` if vLLM serves it (or nothing is known), else ``__other__``."""
        names = self._names
        try:
            if names is None or name is None or name == "" or name in names:
                return name
        except TypeError:  # unhashable (a list from a damaged archive line): not a served name
            pass
        return OTHER
