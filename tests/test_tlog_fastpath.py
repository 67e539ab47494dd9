"""The transparency log's fast paths equal their definitions (issue 15, cost):
Frontier.extend equals one-by-one appends; the leaf from an archive line (C
and pure Python) accepts only what the definition accepts, including on
tampered lines, and verify still catches and names a tampered line."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from exporter.chain import Chain
from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings
from exporter.transparency import leaf_line, merkle
from exporter.transparency.audit import audit, load_verifier
from exporter.transparency.keys import keygen
from exporter.transparency.leaf import (
    CONTENT_FIELDS,
    erased_value,
    leaf_bytes,
    record_leaf,
)

FIXTURES = Path(__file__).parent / "fixtures"
IMPLS = ["python"] + (["c"] if leaf_line._load() is not None else [])


@pytest.fixture(params=IMPLS)
def impl(request):
    leaf_line.set_enabled(request.param == "c")
    yield request.param
    leaf_line.set_enabled(True)


def test_frontier_extend_equals_append():
    rng = random.Random(15)
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(700)]
    for _ in range(40):
        one = merkle.Frontier()
        for h in leaves[:rng.randrange(len(leaves))]:
            one.append(h)
        n = one.size
        many = merkle.Frontier(n, one.nodes)
        cut = rng.randrange(n, len(leaves) + 1)
        many.extend(leaves[n:cut])
        many.extend(iter(leaves[cut:]))  # any iterable
        for h in leaves[n:]:
            one.append(h)
        assert (many.size, many.nodes, many.root()) == (one.size, one.nodes, one.root())
        assert many.root() == merkle.root(leaves)
    empty = merkle.Frontier()
    empty.extend([])
    assert empty.root() == merkle.EMPTY_ROOT


def _replay(d: Path, archive: Path, *extra: str) -> None:
    files = [d / "vllm.log"] + ([d / "middleware.jsonl"] if (d / "middleware.jsonl").exists() else [])
    argv = ["replay", *map(str, files), "--archive-dir", str(archive), "--no-progress", *extra]
    replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)


_CACHE: list[bytes] = []


def _lines() -> list[bytes]:
    """Archive lines of real captures (plain, middleware, engine records),
    re-sealed under an HMAC key in one chain."""
    if _CACHE:
        return _CACHE
    out = []
    chain = Chain(b"k")
    for name in ("vllm-0.32.0/debug", "vllm-0.32.0/middleware", "vllm-0.32.0/engine", "vllm-0.28.0/info"):
        archive = Path(tempfile.mkdtemp(prefix="fastpath-")) / "archive"
        try:
            _replay(FIXTURES / name, archive)
            out += b"".join(f.read_bytes() for f in sorted(archive.glob("audit-*.jsonl"))).splitlines()
        finally:
            shutil.rmtree(archive.parent, ignore_errors=True)
    prev, sealed = "genesis", []
    for seq, raw in enumerate(out, 1):
        rec = json.loads(raw)
        for k in ("seq", "prev_hash", "hash"):
            del rec[k]
        s = chain.seal(rec, seq, prev)
        prev = s["hash"]
        sealed.append(json.dumps(s, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    _CACHE[:] = sealed
    return sealed


def definition_accepts(raw: bytes, salt: bytes, leaf: bytes, seq: int) -> bool:
    try:
        rec = json.loads(raw)
        return isinstance(rec, dict) and rec.get("seq") == seq and record_leaf(rec, salt) == leaf
    except (ValueError, TypeError, AttributeError, KeyError):
        return False


def _mutations(raw: bytes, rng: random.Random):
    rec = json.loads(raw)
    yield raw  # untouched: the fast path must accept it
    yield raw.rstrip(b"\n")
    yield raw.replace(b'","hash":"', b'","hash":"0', 1)  # chain value: not in the leaf
    for _ in range(12):  # one byte changed anywhere
        i = rng.randrange(len(raw) - 1)
        yield raw[:i] + bytes([rng.choice(b'abz0 "\\{}[],:\x00\xff')]) + raw[i + 1:]
    for _ in range(4):  # one byte cut or doubled
        i = rng.randrange(len(raw) - 1)
        yield raw[:i] + raw[i + 1:]
        yield raw[:i] + raw[i:i + 1] + raw[i:]
    yield raw.replace(b'":', b'": ', 1)  # whitespace: same record, other bytes
    yield raw.replace(b'{"ts":', b'{ "ts":', 1)
    yield raw.replace(b'"model":"', b'"model":"\\u0074', 1) if b'"model":"t' in raw else raw
    for k in CONTENT_FIELDS:  # content edited, moved, duplicated
        if rec.get(k) is not None:
            yield json.dumps(dict(rec, **{k: "edited"}), ensure_ascii=False, separators=(",", ":")).encode()
            v = json.dumps(rec[k], ensure_ascii=False, separators=(",", ":")).encode()
            yield raw.replace(b',"' + k.encode() + b'":' + v, b',"' + k.encode() + b'":' + v + b',"' + k.encode()
                              + b'":' + v, 1)
            yield raw.replace(b',"params":', b',"params":{"x":' + v + b'},"params0":', 1)
    moved = dict(rec)
    moved["prompt"] = moved.pop("prompt", None)
    yield json.dumps(moved, ensure_ascii=False, separators=(",", ":")).encode()
    yield json.dumps(dict(rec, seq=rec["seq"] + 1), ensure_ascii=False, separators=(",", ":")).encode()
    yield raw.replace(b',"engine":', b',"extra":1,"engine":', 1)
    yield raw.replace(b',"prev_hash":', b',"prev_hash":"x","hash":"y","prev_hash":', 1)


def test_line_fast_path_accepts_only_what_the_definition_accepts(impl):
    rng = random.Random(1515)
    lines = _lines()
    assert len(lines) > 20
    accepted = checked = 0
    for raw in lines:
        rec = json.loads(raw)
        salt = rng.randbytes(16)
        leaf = record_leaf(rec, salt)
        assert leaf_line.verify_line(raw, salt, leaf) == rec["seq"], "an untouched line is on the fast path"
        assert leaf_line.writer_leaf(rec, raw, salt) in (None, leaf)
        for m in _mutations(raw, rng):
            fast = leaf_line.verify_line(m, salt, leaf)
            checked += 1
            if fast is not None:
                accepted += 1
                assert fast == rec["seq"] and definition_accepts(m, salt, leaf, rec["seq"]), m[:200]
        other = bytes(16)  # another salt: irrelevant only to a record without content
        assert (leaf_line.verify_line(raw, other, leaf) is not None) == definition_accepts(raw, other, leaf, rec["seq"])
        assert leaf_line.verify_line(raw, salt, bytes(32)) is None  # another leaf
    assert checked > 1000 and accepted < checked


def test_erased_record_stays_on_the_fast_path(impl):
    for raw in _lines()[:30]:
        rec = json.loads(raw)
        salt = hashlib.sha256(raw).digest()[:16]
        leaf = record_leaf(rec, salt)
        erased = {k: (erased_value(salt, k, v) if k in CONTENT_FIELDS and v is not None else v)
                  for k, v in rec.items()}
        line = json.dumps(erased, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        assert leaf_bytes(erased, salt) == leaf_bytes(rec, salt)
        assert leaf_line.verify_line(line, salt, leaf) == rec["seq"]


def test_writer_leaf_equals_definition_for_odd_records(impl):
    """Records off the fast path's exact case go to the definition, never to a wrong leaf."""
    base = json.loads(_lines()[0])
    for k in ("seq", "prev_hash", "hash"):
        del base[k]
    odd = [dict(base, prompt={"nested": {"prompt": "x"}}), dict(base, params={"error": "e", "n": [1, {"a": [2]}]}),
           dict(base, user=None, prompt=None, output=None), dict(base, extra=1),
           {k: base[k] for k in reversed(list(base))}, dict(base, prompt='a,"output":"b'),
           dict(base, choices=[{"output": "o", "index": 0}], identity={"user": "u"}), dict(base, model=float("nan"))]
    chain = Chain(None)
    for i, rec in enumerate(odd, 1):
        sealed = chain.seal(rec, i, "genesis")
        raw = json.dumps(sealed, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        salt = bytes([i]) * 16
        got = leaf_line.writer_leaf(sealed, raw, salt)
        assert got in (None, record_leaf(sealed, salt)), i
        v = leaf_line.verify_line(raw, salt, record_leaf(sealed, salt))
        assert v in (None, i)


@pytest.mark.parametrize("where", ["prompt", "params", "seq"])
def test_verify_names_a_tampered_line(tmp_path, impl, where):
    key, pub = keygen(tmp_path / "keys", "fastpath-log")
    root = tmp_path / "archive"
    _replay(FIXTURES / "vllm-0.32.0" / "middleware", root, "--signing-key-file", str(key),
            "--log-origin", "fastpath.example/audit")
    assert audit(root, load_verifier(str(pub), "--public-key")).ok
    day = min(root.glob("audit-*.jsonl"))
    lines = day.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[16])
    if where == "prompt":
        lines[16] = lines[16].replace(json.dumps(rec["prompt"], ensure_ascii=False).encode(), b'"forged"', 1)
    elif where == "params":
        lines[16] = lines[16].replace(b'"n":1', b'"n":2', 1)
    else:
        lines[16] = lines[16].replace(b'"seq":17,', b'"seq":18,', 1)
    day.write_bytes(b"".join(lines))
    report = audit(root, load_verifier(str(pub), "--public-key"))
    assert not report.ok
    p = report.problems[0]
    assert f"{day.name} line 17" in str(p)
    assert p.kind == ("edited" if where != "seq" else "deleted")


def test_a_stale_or_missing_build_is_not_used(monkeypatch):
    try:
        from exporter.transparency import _leaf
    except ImportError:
        pytest.skip("the C accelerator is not built")
    monkeypatch.delenv(leaf_line.ENV, raising=False)
    assert leaf_line._load() is not None, "exporter.transparency._leaf was built from an older _leaf.c: rebuild it"
    monkeypatch.setattr(_leaf, "SOURCE_SHA256", "0" * 64)
    assert leaf_line._load() is None
    monkeypatch.undo()
    monkeypatch.setenv(leaf_line.ENV, "1")
    assert leaf_line._load() is None
