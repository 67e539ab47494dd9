"""The checkpoint journal: the commits since a base checkpoint, as deltas
of the in-flight store (format 3, :mod:`exporter.checkpoint`).

* **File.** ``<checkpoint>.j<gen>`` beside the checkpoint, named by the
  generation of the base (``checkpoint.json``) that points at it. It is
  created empty (and its directory fsynced) before that base is written,
  then only appended to: one line per commit.
* **Record.** ``{"j":<gen>,"seq":<n>,"digest":"<kind>:<hex>","commit":<body>}``
  on one line, ``seq`` counting 1, 2, … in the file. ``<body>`` is compact
  JSON ``{"set":{slot:entry,…},"del":[slot,…],"state":<rest>}``: the
  in-flight entries added or changed since the previous commit (in arrival
  order), the slots gone, and the rest of the checkpoint state with
  ``null`` where the in-flight store goes (its place in the key order). The
  digest covers ``"<gen>:<seq>:"`` and the body, keyed as the checkpoint is,
  so a record cannot be edited, reordered or moved to another journal.
* **Recent ids.** The correlator's ``recent`` list (up to 20 000 recorded
  ids with their times, oldest first) changes between commits only at its
  ends: ids leave at the front, recorded ones join at the back. Encoding it
  whole was most of a record's bytes and CPU, so when the list is the
  previous commit's minus its first ``d`` entries plus some new ones, the
  body carries ``"recent":[d,[new…]]`` (after ``del``) and ``null`` in its
  place in ``state``; replay rebuilds the list from the previous commit's.
  Anything else (an id removed from the middle, a time changed) writes the
  list whole, as before. "The previous commit's" is compared by value: the
  entries are ids and times (str, float or null), where equal values encode
  to the same JSON.
* **Durability.** A commit is durable once its record is written and
  fsynced; only then is it acknowledged. So the state to recover is the
  base with every complete record applied. A last record that is torn (no
  newline, or a bad digest at the very end) was never acknowledged and is
  ignored. Anything wrong before the last line (a bad record, a gap in
  ``seq``) cannot come from a crash: the journal is corrupt
  (:class:`JournalError`, naming the file).
* **Replay** gives back the state exactly as a full snapshot of the same
  commit would: entries keep their key order (JSON round trip), the rest of
  the state its own.
"""

from __future__ import annotations

import hmac
import json
import re

from .chain import keyed_digest

JOURNAL_SUFFIX = ".j"  # <checkpoint>.j<gen>
JOURNALED = ("correlator", "inflight")  # where the journaled store sits in the state
RECENT = "recent"  # beside it: the recently recorded ids, journaled as a delta when it is one
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_RECORD = re.compile(rb'^\{"j":(\d+),"seq":(\d+),"digest":"((?:sha256|hmac-sha256):[0-9a-f]{64})","commit":')


class JournalError(Exception):
    """A journal that cannot be replayed; the message names the file."""

    def __init__(self, reason: str, name: str, detail: str):
        super().__init__(f"{reason} ({name}): {detail}")
        self.reason = reason
        self.name = name


def journal_name(checkpoint: str, gen: int) -> str:
    return f"{checkpoint}{JOURNAL_SUFFIX}{gen}"


def store_of(state: dict):
    """The journaled in-flight store in ``state``, or None."""
    outer = state.get(JOURNALED[0]) if isinstance(state, dict) else None
    return outer.get(JOURNALED[1]) if isinstance(outer, dict) else None


def _rest(state: dict, recent: bool = False) -> dict:
    """``state`` with null for the in-flight store (and with ``recent``, for
    the recent ids) (a shallow copy)."""
    rest = dict(state)
    inner = dict(rest[JOURNALED[0]], **{JOURNALED[1]: None})
    if recent:
        inner[RECENT] = None
    rest[JOURNALED[0]] = inner
    return rest


def recent_of(state: dict):
    """The correlator's recent ids in ``state`` (a list), or None."""
    inner = state.get(JOURNALED[0]) if isinstance(state, dict) else None
    value = inner.get(RECENT) if isinstance(inner, dict) else None
    return value if isinstance(value, list) else None


def recent_delta(prev: list | None, now: list | None) -> tuple[int, list] | None:
    """``(d, new)`` with ``now == prev[d:] + new``, or None (module rules)."""
    if not prev or now is None:
        return None
    if not now:
        return len(prev), []
    try:
        d = prev.index(now[0])  # ids are unique in the list: where the kept part starts
    except ValueError:
        return None
    keep = len(prev) - d
    if keep > len(now) or now[:keep] != prev[d:]:
        return None
    return d, now[keep:]


def encode_record(gen: int, seq: int, state: dict, store, dirty, key: bytes | None,
                  prev_recent: list | None = None) -> bytes:
    """One journal line: the dirty slots of ``store`` and the rest of ``state``;
    ``prev_recent``: the recent ids of the previous commit (module rules)."""
    changed = sorted((s for s in dirty if s in store), key=lambda s: store[s]["order"])
    gone = sorted(s for s in dirty if s not in store)
    delta = recent_delta(prev_recent, recent_of(state))
    if delta is None:
        commit = {"set": {s: store[s] for s in changed}, "del": gone, "state": _rest(state)}
    else:
        commit = {"set": {s: store[s] for s in changed}, "del": gone, RECENT: delta,
                  "state": _rest(state, recent=True)}
    body = _ENCODER(commit).encode()
    digest = keyed_digest(key, b"%d:%d:" % (gen, seq) + body)
    return b'{"j":%d,"seq":%d,"digest":"%s","commit":' % (gen, seq, digest.encode()) + body + b"}\n"


def _decode_line(line: bytes, gen: int, seq: int, key: bytes | None) -> dict | None:
    m = _RECORD.match(line)
    if m is None or not line.endswith(b"}\n") or int(m.group(1)) != gen or int(m.group(2)) != seq:
        return None
    body = line[m.end():-2]
    if not hmac.compare_digest(m.group(3).decode(), keyed_digest(key, b"%d:%d:" % (gen, seq) + body)):
        return None
    try:
        rec = json.loads(body)
    except ValueError:
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("set"), dict) and isinstance(rec.get("del"), list) \
        and isinstance(rec.get("state"), dict) and isinstance(rec["state"].get(JOURNALED[0]), dict)
    if ok and RECENT in rec:
        delta = rec[RECENT]
        ok = isinstance(delta, list) and len(delta) == 2 and type(delta[0]) is int and delta[0] >= 0 \
            and isinstance(delta[1], list)
    return rec if ok else None


def replay(base: dict, data: bytes, gen: int, key: bytes | None, name: str) -> tuple[dict, int, int]:
    """``base`` with every durable record of journal ``data`` applied:
    ``(state, records, good_bytes)``; a torn last record is left out
    (module rules). Raises :class:`JournalError` for anything else."""
    state = base
    inner = base.get(JOURNALED[0]) if isinstance(base.get(JOURNALED[0]), dict) else None
    if inner is None or not isinstance(inner.get(JOURNALED[1]), dict):
        raise JournalError("journal_corrupt", name, "the base checkpoint has no in-flight store")
    store = dict(inner[JOURNALED[1]])
    recent = recent_of(base)
    pos = seq = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end + 1]
        rec = _decode_line(line, gen, seq + 1, key)
        if rec is not None and RECENT in rec:
            d, new = rec[RECENT]
            if recent is None or d > len(recent):
                rec = None  # a delta against ids this journal does not have
        if rec is None:
            if end < 0 or end + 1 == len(data):
                break  # the torn last record: never acknowledged
            raise JournalError("journal_corrupt", name, f"record {seq + 1} at byte {pos} is not intact")
        for s in rec["del"]:
            store.pop(s, None)
        store.update(rec["set"])
        state = rec["state"]
        if RECENT in rec:
            d, new = rec[RECENT]
            recent = recent[d:] + new
        else:
            recent = recent_of(state)
        seq += 1
        pos = end + 1
    if seq:
        state[JOURNALED[0]][JOURNALED[1]] = store
        if RECENT in state[JOURNALED[0]] and recent is not None:
            state[JOURNALED[0]][RECENT] = recent
    else:
        state = dict(base, **{JOURNALED[0]: dict(inner, **{JOURNALED[1]: store})})
    return state, seq, pos
