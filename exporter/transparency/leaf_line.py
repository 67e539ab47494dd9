"""The Merkle leaf of a record computed from its archive line's bytes.

:func:`exporter.transparency.leaf.leaf_bytes` is the definition: the record
re-encoded with every non-null content field replaced by its salted
commitment. That costs a JSON encoding of the record per record on the
writer's side, and a decoding plus an encoding on the verifier's. This
module gets the *same bytes* from the archive line (the writer's one
encoding of the record: compact, keys in record order): the line is matched
against the grammar of the writer's shape, each content value's byte span
is hashed where it lies, and the leaf bytes are the line with those spans
replaced by their commitments (a null stays, an ``{"erased": c}`` value
becomes ``c``) and the chain fields (``,"prev_hash":...,"hash":...``, the
line's last two keys) cut off.

The grammar: JSON's own lexical structure (strings with their escapes,
atoms, brackets), the top-level keys exactly :data:`KEYS` in order, ``seq``
a plain integer, the chain values printable ASCII. JSON's grammar is
unambiguous, so a match is the line's real top-level structure and each
captured span is exactly the value ``json.loads`` reads for that key.
``_leaf.c`` checks it in full (and hashes, one call per line); the pure
Python reference, :func:`line_re`, nests values at most :data:`DEPTH`
deep and leaves atoms and escapes to the hash check below.

The writer (:func:`writer_leaf`, C only) uses it when the line matches:
its line is the canonical encoding of the sealed record, so the bytes are
the definition's. Otherwise (and in pure Python, where cutting the line
costs more than the C JSON encoder saves) it uses the definition.

The verifier (:func:`verify_line`) uses it only to *accept*; a line it does
not accept goes to the definition, which decides and names the problem.
Why an acceptance is sound: if ``leaf_hash(B) == stored leaf`` for ``B``
built from ``raw`` then, SHA-256 being collision resistant, ``B`` *is* the
writer's leaf bytes; each span cut out of ``raw`` sat in a top-level content
slot and hashes to that slot's commitment (which binds salt, field name and
value bytes), so it is byte for byte the writer's encoding of the value (or
carries the same erased commitment); every other byte of ``raw`` before the
chain tail is ``B``'s verbatim, i.e. canonical. So ``raw`` decodes to the
writer's record (chain values aside), whose leaf by the definition is the
stored one. (tests/test_tlog_fastpath.py checks "fast accepts => the
definition accepts" on tampered lines; tests/test_leaf_pinned.py pins both
paths to main's leaves for every real capture.)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from exporter import accel, record
from exporter.record import RECORD_FIELDS
from exporter.transparency.leaf import _CONTENT_PREFIX, CONTENT_FIELDS, LEAF_PREFIX

KEYS: tuple[str, ...] = RECORD_FIELDS + ("seq", "prev_hash", "hash")

# Per content field, in line order: (key marker, the next field's marker, name || 0x00).
_SLOTS = tuple((b',"' + k.encode() + b'":', b',"' + KEYS[i + 1].encode() + b'":', k.encode() + b"\x00")
               for i, k in enumerate(RECORD_FIELDS) if k in CONTENT_FIELDS)
_ERASED = re.compile(rb'\{"erased":("sha256:[^"\\]*(?:\\.[^"\\]*)*")\}', re.DOTALL)
_NULL = b"null"
_sha256 = hashlib.sha256

# The grammar of a line in the writer's shape. JSON's lexical structure
# exactly (strings with their escapes, atoms that hold no delimiter,
# brackets), values nested at most DEPTH levels: a match is therefore the
# line's real top-level structure, so each captured span is the value
# ``json.loads`` reads for that key. Atoms and escapes are not checked here
# (the leaf hash is: see the module docstring).
DEPTH = 2
_S = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_A = rb'[-+.0-9A-Za-z]+'


def _value(depth: int) -> bytes:
    if depth == 0:
        return rb'(?:' + _S + rb'|' + _A + rb')'
    v = _value(depth - 1)
    return (rb'(?:' + _S + rb'|' + _A + rb'|\[(?:' + v + rb'(?:,' + v + rb')*)?\]'
            rb'|\{(?:' + _S + rb':' + v + rb'(?:,' + _S + rb':' + v + rb')*)?\})')


def _line_pattern() -> bytes:
    value = _value(DEPTH)
    parts = []
    for i, k in enumerate(RECORD_FIELDS):
        v = b"(" + value + b")" if k in CONTENT_FIELDS else value
        parts.append((b"{" if i == 0 else b",") + b'"' + k.encode() + b'":' + v)
    parts.append(rb',"seq":(0|[1-9][0-9]*)')
    parts.append(rb'(),"prev_hash":"[\x20\x21\x23-\x5b\x5d-\x7e]*","hash":"[\x20\x21\x23-\x5b\x5d-\x7e]*"\}\n?')
    return b"".join(parts)


_LINE_RE: list = []


def line_re() -> re.Pattern:
    """The grammar compiled (on first use: it takes a good second, and with
    the C module it is never needed)."""
    if not _LINE_RE:
        _LINE_RE.append(re.compile(_line_pattern(), re.DOTALL))
    return _LINE_RE[0]



def _build(raw: bytes, spans, cut: int, salt: bytes) -> bytes:
    """``LEAF_PREFIX`` + ``raw[:cut]`` with each content span ``(a, b)``
    (in order; the i-th is field ``_SLOTS[i]``) replaced by its piece, + ``}``."""
    out = [LEAF_PREFIX]
    pos = 0
    pre = None
    for (a, b), (_, _, name) in zip(spans, _SLOTS):
        if b - a == 4 and raw[a:b] == _NULL:  # a null holds nothing: kept as is
            continue
        out.append(raw[pos:a])
        pos = b
        span = raw[a:b]
        if span[:1] == b"{":
            e = _ERASED.fullmatch(span)
            if e is not None:  # an erased field: its commitment as is
                out.append(e.group(1))
                continue
        if pre is None:
            pre = _CONTENT_PREFIX + salt
        out.append(b'"sha256:' + _sha256(pre + name + span).hexdigest().encode() + b'"')
    out.append(raw[pos:cut])
    out.append(b"}")
    return b"".join(out)


def line_leaf_bytes(raw: bytes, salt: bytes) -> bytes | None:
    """Leaf bytes of archive line ``raw`` (with or without its ``\\n``) when
    it is in :func:`line_re`'s grammar, else None."""
    m = line_re().fullmatch(raw)
    if m is None:
        return None
    regs = m.regs
    return _build(raw, regs[1:len(_SLOTS) + 1], regs[-1][0], salt)


def py_verify_line(raw: bytes, salt: bytes, leaf: bytes) -> int | None:
    """The line's ``seq`` when ``raw`` certainly has Merkle leaf ``leaf``
    (see the module's docstring), else None: "not shown here", ask the
    definition (which also names the problem)."""
    m = line_re().fullmatch(raw)
    if m is None:
        return None
    regs = m.regs
    b = _build(raw, regs[1:len(_SLOTS) + 1], regs[-1][0], salt)
    if _sha256(b"\x00" + b).digest() != leaf:
        return None
    a, e = regs[len(_SLOTS) + 1]
    return int(raw[a:e])


# -- the C accelerator (_leaf.c: the same grammar checked in full, and the
# hashing, in one call) ---------------------------------------------------------
ENV = accel.ENV  # "1" forces the pure-Python path (exporter.accel)


def _parts() -> list[Path]:
    """_leaf.c and its _leaf_*.h parts in name order, as setup.py hashes them."""
    return sorted(Path(__file__).parent.glob("_leaf*.[ch]"), key=lambda p: p.name)


def _load():
    _leaf = accel.load("exporter.transparency._leaf", _parts())
    if _leaf is None:
        return None
    _leaf.configure(tuple(k.encode() for k in KEYS), tuple(k in CONTENT_FIELDS for k in KEYS),
                    LEAF_PREFIX, _CONTENT_PREFIX)
    return _leaf


def c_line_leaf(raw: bytes, salt: bytes, want_bytes: bool = False):
    """``(seq, leaf hash)`` (``want_bytes``: leaf bytes) by the C module, or None."""
    return _C.leaf(raw, salt, want_bytes)


def py_writer_leaf(record: dict, line: bytes, salt: bytes) -> None:
    """Always None: without the C module the writer uses the definition (in
    pure Python, cutting the line costs more than the C JSON encoder saves)."""


def _c_writer_leaf(record: dict, line: bytes, salt: bytes) -> bytes | None:
    r = _C.leaf(line, salt)
    return None if r is None else r[1]


def _c_writer_entries(lines: list[bytes], salts: bytes, size: int, nodes: list[bytes]):
    """A flush batch's tree entries by one C call: ``(entries, nodes)``,
    ``entries`` being salt_i + :func:`writer_leaf` of each line end to end
    and ``nodes`` the :class:`~exporter.transparency.merkle.Frontier`
    ``(size, nodes)`` after those leaves; None (then the per-record path
    decides every entry) when a line is not in the writer's shape.
    tests/test_tree_batch.py holds it equal to that path."""
    return _C.extend(lines, salts, size, nodes)


def _c_verify_line(raw: bytes, salt: bytes, leaf: bytes) -> int | None:
    r = _C.leaf(raw, salt)
    return r[0] if r is not None and r[1] == leaf else None


def set_enabled(enabled: bool) -> None:
    """Use the C module (when built and current) or the pure-Python path."""
    global _C, writer_leaf, writer_entries, verify_line, IMPLEMENTATION
    _C = _load() if enabled else None
    writer_leaf = py_writer_leaf if _C is None else _c_writer_leaf
    writer_entries = None if _C is None else _c_writer_entries
    verify_line = py_verify_line if _C is None else _c_verify_line
    IMPLEMENTATION = "python" if _C is None else "c"
    record.set_c_canonical(None if _C is None else _C.canonical, None if _C is None else _C.seal)


_C = None
writer_leaf = py_writer_leaf
writer_entries = None  # pure Python: TreeFile.extend's per-record loop is the path
verify_line = py_verify_line
IMPLEMENTATION = "python"
set_enabled(True)
