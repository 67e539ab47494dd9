"""The Merkle leaf is pinned: for every real capture, every path that computes
a leaf (the definition, the fast path from the archive line in C and in pure
Python, the archive writer's tree) gives main's leaves byte for byte, and the
archive itself is byte-identical to main's (tests/fixtures/tlog/README.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from exporter.archive.writer import ArchiveWriter
from exporter.chain import Chain
from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings
from exporter.transparency import leaf_line
from exporter.transparency.leaf import record_leaf
from exporter.transparency.tree import ENTRY, TreeFile, TreeReader

FIXTURES = Path(__file__).parent / "fixtures"
PINNED = json.loads((FIXTURES / "tlog" / "leaves-pinned.json").read_text())
CAPTURES = sorted(PINNED)


def pinned_salt(seq: int) -> bytes:
    return hashlib.sha256(b"pinned-salt\x00" + str(seq).encode()).digest()[:16]


class SaltSource:
    """An injected randomness source: the pinned salts, seq 1, 2, ... in order."""

    def __init__(self) -> None:
        self.next = 1

    def __call__(self, n: int) -> bytes:
        assert n % 16 == 0
        out = b"".join(pinned_salt(self.next + i) for i in range(n // 16))
        self.next += n // 16
        return out


def test_every_capture_is_pinned():
    dirs = sorted(str(d.relative_to(FIXTURES)) for d in FIXTURES.glob("vllm-*/*") if (d / "vllm.log").exists())
    assert dirs == CAPTURES


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    out = {}
    for name in CAPTURES:
        d = FIXTURES / name
        files = [d / "vllm.log"] + ([d / "middleware.jsonl"] if (d / "middleware.jsonl").exists() else [])
        archive = tmp_path_factory.mktemp("pin") / "archive"
        argv = ["replay", *map(str, files), "--archive-dir", str(archive), "--no-progress"]
        replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
        out[name] = b"".join(f.read_bytes() for f in sorted(archive.glob("audit-*.jsonl")))
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_archive_and_leaves_pinned(replayed, name):
    data = replayed[name]
    pin = PINNED[name]
    assert hashlib.sha256(data).hexdigest() == pin["lines_sha256"], "archive bytes differ from main's"
    lines = data.splitlines(keepends=True)
    assert len(lines) == pin["records"] == len(pin["leaves"])
    impls = ["python"] + (["c"] if leaf_line._load() is not None else [])
    for raw, want in zip(lines, pin["leaves"]):
        rec = json.loads(raw)
        salt, leaf = pinned_salt(rec["seq"]), bytes.fromhex(want)
        assert record_leaf(rec, salt) == leaf  # the definition
        for impl in impls:
            leaf_line.set_enabled(impl == "c")
            try:
                got = leaf_line.writer_leaf(rec, raw, salt)
                assert got in (None, leaf), f"{impl} writer leaf of seq {rec['seq']}"
                # every real record is on the verifier's fast path (both grammars)
                assert leaf_line.verify_line(raw, salt, leaf) == rec["seq"]
                if impl == "c":  # the whole grammar: so is every record on the writer's
                    assert got == leaf
            finally:
                leaf_line.set_enabled(True)


@pytest.mark.parametrize("impl", ["c", "python"])
def test_writer_tree_pinned_with_injected_salts(tmp_path, impl, replayed):
    """The archive writer, given the pinned salts as its randomness source,
    writes main's archive bytes and main's leaves into the tree file."""
    if impl == "c" and leaf_line._load() is None:
        pytest.skip("the C accelerator is not built")
    leaf_line.set_enabled(impl == "c")
    try:
        for name in CAPTURES:
            lines = replayed[name].splitlines(keepends=True)
            root = tmp_path / name.replace("/", "-")
            tree = TreeFile(root / "tlog" / "tree.bin", random=SaltSource())
            w = ArchiveWriter.open(root, Chain(None), None, clock=lambda: 1795305600.0, fsync_every=5, tree=tree)
            for raw in lines:
                rec = json.loads(raw)
                for k in ("seq", "prev_hash", "hash"):
                    del rec[k]
                w.append(rec)
            w.close()
            assert b"".join(p.read_bytes() for p in sorted(root.glob("audit-*.jsonl"))) == replayed[name]
            entries = TreeReader(root / "tlog" / "tree.bin").entries(0, len(lines))
            assert [e[16:].hex() for e in entries] == PINNED[name]["leaves"]
            assert [e[:16] for e in entries] == [pinned_salt(i + 1) for i in range(len(lines))]
            assert (root / "tlog" / "tree.bin").stat().st_size == ENTRY * len(lines)
    finally:
        leaf_line.set_enabled(True)
