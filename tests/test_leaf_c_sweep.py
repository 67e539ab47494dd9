"""The C leaf module (exporter/transparency/_leaf.c) swept deterministically
against its Python references, in the style of tests/test_assemble_c.py's
sweep: a full archive record, every field and one level into its dicts and
lists set in turn to each odd value (absent, None, surrogates, NUL, huge
ints, NaN, subclasses, non-str keys, tuples, bytes, nesting past every
bound, erased-looking dicts, ...), and every C entry point that record's
bytes reach:

* ``leaf`` (the writer's and the verifier's fast path) against the
  definition (exporter.transparency.leaf.leaf_bytes) of what a verifier
  reads back from the line, and against the pure-Python grammar
  (leaf_line.line_leaf_bytes, py_verify_line);
* ``extend`` (the tree's flush batch) against the per-record loop
  (the definition's leaves, merkle.Frontier);
* ``canonical`` and ``seal`` (the chain) against json's sort_keys encoder
  and Chain.digest.

The C answer is the Python one byte for byte, or the C declines (None), or
both raise the same exception type; above all the process survives. The C
entry points are also called directly with the arguments TreeFile and
Chain never pass (wrong types, subclasses, sizes past 64 bits, labels that
are not ASCII)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from cbuild import needs_c
from exporter import record
from exporter.chain import Chain
from exporter.parse import fast  # noqa: F401 - installs the C record encoder the archive writer uses
from exporter.record import RECORD_FIELDS
from exporter.transparency import leaf_line, merkle
from exporter.transparency.leaf import CONTENT_FIELDS, commitment, leaf_bytes, record_leaf
from leakcheck import assert_no_leaks
from oddvalues import ABSENT, BytesSub, DictSub, IntSub, StrSub, paths, with_path

pytestmark = needs_c(leaf_line._C is not None)  # built where a compiler exists: tests/test_cbuild.py

_LINE = record._LINE_ENCODER  # the pure-Python encoders: the references
_CANON = record._CANONICAL_ENCODER
SALT = bytes(range(16))


def _deep(n: int) -> list:
    x: list = []
    for _ in range(n):
        x = [x]
    return x


_ERASED = "sha256:" + "ab" * 32
ODD = [ABSENT, None, "", "\ud800", "\x00", "é𝄞", '"\\', 0, -1, 2**63, 2**100, -2**100, 1.5, -0.0,
       math.nan, math.inf, -math.inf, True, False, [], [None], {}, (1,), b"x", StrSub("s"), IntSub(3),
       DictSub(a=1), {1: 2}, {10: 1, 9: 2}, {True: 1, None: 2}, _deep(3), _deep(70),
       {"erased": _ERASED}, {"erased": "sha256:x\"y"}, {"erased": 1}, DictSub(erased=_ERASED)]

# A full record as the archive holds it (every contract field, in order,
# then the chain's), nested dicts and lists filled so the sweep reaches in.
BASE = {
    "ts": "2026-11-22T02:39:33.882Z", "request_id": "chatcmpl-e1a1394030b140db9169418c708c738a",
    "model": "tiny", "user": "alice", "endpoint": "chat", "stream": False,
    "prompt": '[{"role":"user","content":"你好，世界！\\n"}]', "output": "ok é", "prompt_tokens": 75,
    "completion_tokens": 16, "tokens_source": "usage", "finish_reason": "length", "status": "completed",
    "empty_response": False, "latency_seconds": 0.086426,
    "params": {"max_tokens": 16, "temperature": 0.7, "n": 1, "json_mode": False},
    "flags": ["truncated", "identity_invalid:expired"], "ttft_seconds": 0.012, "http_status": 200,
    "error": "boom", "client": "127.0.0.1:55090",
    "identity": {"headers": {"x-user": "bob"}, "user_field": "alice", "api_key_hash": None},
    "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}, "two"],
    "sources": ["vllm_log", "middleware"], "identity_source": "user_field", "instance": "i-1",
    "engine": {"queue_seconds": 0.001, "prefill_seconds": 0.01, "decode_seconds": 0.07,
               "inference_seconds": 0.08, "cached_tokens": 0, "preemptions": 0, "share_seconds": None,
               "devices": [0, 1]},
    "seq": 7, "prev_hash": "sha256:" + "0" * 64, "hash": "sha256:" + "1" * 64,
}
assert list(BASE) == list(RECORD_FIELDS) + ["seq", "prev_hash", "hash"]


def _records():
    """BASE, then every (path, odd value): path one level into BASE's values."""
    yield (), None, BASE
    for path in list(paths(BASE))[1:]:
        for odd in ODD:
            yield path, odd, with_path(BASE, path, odd)


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - compared by type
        return type(exc)


def _py_line(rec: dict):
    return _outcome(lambda r: (_LINE(r) + "\n").encode(), rec)


def _leaf_ref(line: bytes):
    """The definition's leaf bytes of what a verifier reads back from the
    line (json.loads: plain dicts, str keys), and its seq."""
    back = json.loads(line)
    return back.get("seq"), leaf_bytes(back, SALT)


def _check_leaf(rec: dict, line: bytes) -> bool:
    """C's leaf of ``line`` is the definition's (or C declines); the pure
    grammar agrees where it matches. True when C answered."""
    C = leaf_line._C
    got = C.leaf(line, SALT, True)
    py = leaf_line.line_leaf_bytes(line, SALT)
    if got is None:
        # C checks JSON's grammar in full and nests to MAX_DEPTH, the Python
        # regex only DEPTH deep without checking atoms: it may match more, but
        # on an encoder's line never where C declines -- except a seq too long
        # for a long long (C declines, the definition then decides).
        if py is not None:
            assert not (type(rec.get("seq")) is int and 0 <= rec["seq"] < 10**18), (line, py)
        return False
    seq, want = _leaf_ref(line)
    assert got == (seq, want), line
    assert C.leaf(line, SALT) == (seq, hashlib.sha256(b"\x00" + want).digest())
    if py is not None:
        assert py == want
    if all(type(rec.get(k)) is not DictSub for k in CONTENT_FIELDS):
        # the writer's definition on the record itself: the same leaf. (Not
        # for a dict subclass shaped {"erased": "sha256:..."} in a content
        # slot: leaf_view hashes it, being no exact dict, while the line reads
        # back as a plain dict, erased; the C leaf is the verifier's.)
        assert want == leaf_bytes(rec, SALT)
    leaf = record_leaf(json.loads(line), SALT)
    assert leaf_line._c_verify_line(line, SALT, leaf) == seq
    assert leaf_line._c_verify_line(line, SALT, bytes(32)) is None
    v = leaf_line.py_verify_line(line, SALT, leaf)
    assert v in (None, seq)
    return True


def _frontier_ref(lines, salts, size, nodes):
    sl = len(salts) // len(lines)
    f = merkle.Frontier(size, nodes)
    leaves, entries = [], b""
    for i, line in enumerate(lines):
        s = salts[i * sl:(i + 1) * sl]
        leaf = record_leaf(json.loads(line), s)
        leaves.append(leaf)
        entries += s + leaf
    f.extend(leaves)
    return entries, f.nodes


def _check_extend(line: bytes, base_line: bytes, answered: bool) -> None:
    """The batch of the odd line between two plain ones: decided wholly by C
    (the per-record reference's entries and frontier) or wholly declined."""
    start = [hashlib.sha256(b"%d" % i).digest() for i in range(5)]
    f = merkle.Frontier()
    f.extend(start)
    lines = [base_line, line, base_line]
    salts = bytes((7 * i) & 255 for i in range(16 * len(lines)))
    got = leaf_line._C.extend(list(lines), salts, f.size, list(f.nodes))
    if not answered:
        assert got is None
        return
    assert got == _frontier_ref(lines, salts, f.size, f.nodes)


def _check_chain(rec: dict) -> None:
    """canonical and seal against json's sort_keys encoder and Chain.digest:
    through exporter.record as the chain calls them (the C record encoder's
    line), and directly on the pure-Python encoder's line."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    want_canon = _outcome(lambda b: _CANON(b).encode(), body)
    want_line = _outcome(lambda b: _LINE(b).encode(), body)
    got = _outcome(record.canonical_and_line, body)
    if isinstance(got, type):  # raised: only where the Python encoders raise the same
        assert got in (want_canon, want_line), (got, body)
    elif got is not None:
        assert got == (want_canon, want_line), body
    for key in (None, b"k3y"):
        chain = Chain(key)
        got = _outcome(record.sealed_line, body, chain._label, key)
        if isinstance(got, type):
            assert got in (want_canon, want_line), (got, body)
            continue
        if got is None:
            continue
        digest = chain.digest(want_canon)
        assert got == (digest, (_LINE(dict(body, hash=digest)) + "\n").encode())
    if isinstance(want_line, bytes):
        # canonical() of any line is the canonical form of what json reads
        # from it (str keys: a {10: .., 9: ..} dict sorts as "10" < "9")
        c = leaf_line._C.canonical(want_line)
        if c is not None:
            assert c == _CANON(json.loads(want_line)).encode()
        s = leaf_line._C.seal(want_line, b"sha256:", None)
        assert (s is None) == (c is None)
        if s is not None:
            assert s[0] == Chain(None).digest(c) and s[1] == want_line[:-1] + b',"hash":"' + s[0].encode() + b'"}\n'


def test_every_field_holds_every_odd_value():
    base_line = record.line_bytes(BASE)
    assert leaf_line._C.leaf(base_line, SALT) is not None  # the base itself takes the C path
    answered = declined = 0
    for path, odd, rec in _records():
        line = _py_line(rec)
        # the archive writer's line (C encoder, or Python where it declines) is the Python encoder's
        assert _outcome(record.line_bytes, rec) == line, (path, odd)
        if not isinstance(line, bytes):
            continue  # nothing is archived: the leaf and the chain never see it
        ok = _check_leaf(rec, line)
        answered += ok
        declined += not ok
        _check_extend(line, base_line, ok)
        _check_chain(rec)
    assert answered > 1000 and declined > 100  # both paths taken, many times


def test_content_fields_take_every_odd_value_as_the_definition():
    """A content value is hashed where it lies (or kept: null, erased): the
    commitment in C's leaf bytes is the definition's for each odd value."""
    for k in CONTENT_FIELDS:
        for odd in ODD:
            if odd is ABSENT:
                continue
            rec = dict(BASE, **{k: odd})
            line = _py_line(rec)
            if not isinstance(line, bytes):
                continue
            got = leaf_line._C.leaf(line, SALT, True)
            back = json.loads(line)[k]
            if got is None:
                continue
            if back is None:
                piece = b'"' + k.encode() + b'":null'
            elif type(back) is dict and list(back) == ["erased"] and isinstance(back["erased"], str) \
                    and back["erased"].startswith("sha256:"):
                piece = b'"' + k.encode() + b'":' + json.dumps(back["erased"], ensure_ascii=False).encode()
            else:
                piece = b'"' + k.encode() + b'":"' + commitment(SALT, k, back).encode() + b'"'
            assert piece in got[1], (k, odd)


_NODE = hashlib.sha256(b"n").digest()
_EXTEND_ODD = [
    # (lines, salts, size, nodes): what TreeFile never passes
    ((), bytes(16), 0, []),
    ([], b"", 0, []),
    ([], bytes(16), 0, []),
    (None, bytes(16), 0, []),
    (["x"], bytes(16), 0, []),
    ([None], bytes(16), 0, []),
    ([bytearray(b"{}")], bytes(16), 0, []),
    ([b""], bytes(16), 0, []),
    ([b"{}"], bytes(15), 0, []),
    ([b"{}"], bytes(16 * 65), 0, []),
    ([b"{}"], bytes(16), 1, []),
    ([b"{}"], bytes(16), 1, [b"short"]),
    ([b"{}"], bytes(16), 1, [BytesSub(_NODE)]),
    ([b"{}"], bytes(16), 1, (_NODE,)),
    ([b"{}"], bytes(16), 1, [bytearray(_NODE)]),
    ([b"{}"], bytes(16), 0, None),
    ([b"{}"], bytes(16), 2**64 - 1, [_NODE] * 64),
    ([b"{}"], bytes(16), 2**63 - 1, [_NODE] * 63),
]
_SIZES = [-1, -2**64, 2**62 + 1, 2**63, 2**64, 2**64 + 1, 2**65 + 3, 2**100, -2**100, 1.5, math.nan, "1", None,
          True, IntSub(1), b"\x01"]


@pytest.mark.parametrize("args", _EXTEND_ODD, ids=range(len(_EXTEND_ODD)))
def test_extend_declines_what_tree_file_never_passes(args):
    assert leaf_line._C.extend(*args) is None


@pytest.mark.parametrize("wrap", [BytesSub, bytearray, memoryview, lambda b: b.decode(), lambda b: [b], lambda b: None],
                         ids=["bytes-subclass", "bytearray", "memoryview", "str", "list", "None"])
def test_extend_reads_a_line_only_as_exact_bytes(wrap):
    """A line that is not exact bytes but holds (or is made from) a line C
    would answer for: the batch is declined, whatever its place. (Without
    the exact-type check its memory would be read as a bytes object's.)"""
    line = record.line_bytes(BASE)
    for at in range(3):
        lines = [line] * 3
        lines[at] = wrap(line)
        assert leaf_line._C.extend(lines, bytes(48), 0, []) is None


def test_extend_size_is_the_frontier_size_or_declined():
    """``size`` as TreeFile's Frontier holds it (an int of 0..2**62), else
    declined or the reference's error: never read modulo 2**64 (2**64 + 1
    is not size 1) nor through a conversion the reference does not make."""
    line = record.line_bytes(BASE)
    for size in _SIZES:
        for nodes in ([], [_NODE], [_NODE, _NODE]):
            try:
                got = leaf_line._C.extend([line], bytes(16), size, list(nodes))
            except Exception as exc:  # noqa: BLE001 - only where the reference fails the same way
                with pytest.raises(type(exc)):
                    _frontier_ref([line], bytes(16), size, nodes)
                continue
            if got is not None:
                assert type(size) in (int, IntSub, bool) and 0 <= size <= 2**62, (size, nodes)
                assert got == _frontier_ref([line], bytes(16), int(size), nodes)


def test_extend_on_a_big_batch():
    """A flush batch of 3000 lines (carries through 2**11 and more) from
    frontiers of several sizes; one line out of shape declines it all."""
    base = record.line_bytes(BASE)
    lines = [record.line_bytes(dict(BASE, seq=i + 1, output="out %d" % i)) for i in range(3000)]
    salts = hashlib.shake_256(b"salts").digest(16 * len(lines))
    for size in (0, 1, 2**40 - 1):
        nodes = [hashlib.sha256(b"%d" % i).digest() for i in range(bin(size).count("1"))]
        assert leaf_line._C.extend(list(lines), salts, size, list(nodes)) == \
            _frontier_ref(lines, salts, size, nodes)
    assert leaf_line._C.extend(lines + [b"{}"], salts + bytes(16), 0, []) is None
    # 64 frontier nodes (size 2**64 - 1): past the 2**62 bound, declined
    assert leaf_line._C.extend([base], bytes(16), 2**64 - 1, [_NODE] * 64) is None


@pytest.mark.parametrize("raw", [None, "x", 1, [b"{}"], memoryview(b"{}"), bytearray(b"{}"), BytesSub(b"{}")])
def test_leaf_canonical_seal_take_any_argument(raw):
    """Any argument: the answer for a buffer (bytes-like), TypeError for the rest."""
    C = leaf_line._C
    line = record.line_bytes(BASE)
    for fn, args in ((C.leaf, (raw, SALT)), (C.leaf, (line, raw)), (C.canonical, (raw,)),
                     (C.seal, (raw, b"sha256:", None)), (C.seal, (b'{"a":1}', raw, None))):
        try:
            fn(*args)
        except TypeError:
            assert not isinstance(raw, (bytes, bytearray, memoryview))
    assert C.leaf(bytearray(line), memoryview(SALT)) == C.leaf(line, SALT)
    assert C.seal(b'{"a":1}', b"x", raw) is None or raw is None  # a key not bytes: declined


@pytest.mark.parametrize("label", [b"\xe9", b"sha256:\x80", "sha256:é".encode(), b"\xff" * 40])
def test_seal_declines_a_label_that_is_not_ascii(label):
    """The hash is built as an ASCII str: a label byte past 0x7f would make
    a str whose bytes are not its characters (isascii() True, é inside,
    encode() giving invalid UTF-8). Declined: the Python steps seal."""
    got = leaf_line._C.seal(b'{"a":1}', label, None)
    assert got is None


def test_seal_ascii_labels_and_keys_are_the_python_steps():
    for label in (b"", b"sha256:", b"hmac-sha256:", b"\x7f~ "):
        for key in (None, b"", b"k3y", b"x" * 200):
            h, line = leaf_line._C.seal(b'{"b":1,"a":2}', label, key)
            want = Chain(key).digest(b'{"a":2,"b":1}')
            assert h.isascii() and h == label.decode() + want.split(":", 1)[1]
            assert line == b'{"b":1,"a":2,"hash":"' + h.encode() + b'"}\n'


def test_configure_refuses_what_leaf_into_cannot_trust():
    """configure() checks everything before it drops the old tables: a
    refused configuration leaves the last one in force, never half of each.
    A content or seq key among the two chain keys would have the leaf cut
    the line before a span (a negative copy length); a failing __bool__ was
    stored as -1 with its exception left set."""
    C = leaf_line._C
    keys = tuple(k.encode() for k in leaf_line.KEYS)
    flags = tuple(k in CONTENT_FIELDS for k in leaf_line.KEYS)

    class Bad:
        def __bool__(self):
            raise ZeroDivisionError

    bad = [((b"a", b"b"), (False, False)), (keys, flags[:-1]), (keys[:-1] + ("hash",), flags),
           (keys, flags[:-2] + (True, False)), (keys, flags[:-1] + (True,)),
           (keys[:-3] + (b"prev_hash", b"seq", b"hash"), flags), (tuple(k for k in keys if k != b"seq"), flags[1:]),
           (keys, flags[:3] + (Bad(),) + flags[4:])]
    try:
        for ks, cs in bad:
            with pytest.raises((ValueError, TypeError, ZeroDivisionError)):
                C.configure(ks, cs, b"p", b"q")
            assert C.leaf(record.line_bytes(BASE), SALT, True)[1] == leaf_bytes(BASE, SALT)
    finally:
        assert leaf_line._load() is C  # configured again
    assert C.leaf(record.line_bytes(BASE), SALT, True)[1] == leaf_bytes(BASE, SALT)


def test_no_reference_or_memory_leaks():
    """Answers, declines and TypeErrors alike, over every entry point."""
    C = leaf_line._C
    line = record.line_bytes(BASE)
    odd_lines = [b"", b"{}", line[:-5], line.replace(b'"seq":7', b'"seq":-7')]

    def run():
        C.leaf(line, SALT)
        C.leaf(line, SALT, True)
        for raw in odd_lines:
            C.leaf(raw, SALT)
            C.canonical(raw)
            C.seal(raw, b"sha256:", None)
        C.canonical(line[:-1])
        C.seal(line[:-1], b"sha256:", b"k")
        C.seal(line[:-1], b"\xe9", None)
        C.extend([line, line], bytes(32), 3, [_NODE, _NODE])
        for args in _EXTEND_ODD:
            C.extend(*args)
        for size in _SIZES:
            try:
                C.extend([line], bytes(16), size, [])
            except TypeError:
                pass
        for bad in (None, "x"):
            try:
                C.leaf(bad, SALT)
            except TypeError:
                pass

    assert_no_leaks(run, (None, True, False, _NODE, line), repeats=50)
