"""The Merkle tree over every archived record (issue 15, step 1): one leaf per
record, in seq order, exactly once with the archive across crashes; leaves
survive erasure; proofs from the tree file equal the in-memory ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exporter.archive.layout import list_days, tree_path
from exporter.cli import make_parser
from exporter.runtime import build
from exporter.settings import build as build_settings
from exporter.transparency import merkle
from exporter.transparency.leaf import CONTENT_FIELDS, erased_value, record_leaf
from exporter.transparency.tree import ENTRY, TreeReader

FIX = Path(__file__).parent / "fixtures" / "vllm-0.32.0"
CAPTURE = FIX / "debug" / "vllm.log"
TWO_SOURCES = (FIX / "middleware" / "vllm.log", FIX / "middleware" / "middleware.jsonl")


def _runtime(logs, archive: Path):
    args = make_parser().parse_args(["replay", *map(str, logs), "--archive-dir", str(archive),
                                     "--model", "tiny", "--no-progress"])
    rt = build(build_settings("replay", args, {}), live=False)
    rt.pipeline.batch_lines = 7
    return rt


def _finish(rt):
    while not rt.pipeline.done():
        rt.pipeline.step()
    rt.pipeline.finish()


def records(archive: Path) -> list[dict]:
    out = []
    for day in list_days(archive):
        out += [json.loads(x) for x in day.data.read_bytes().splitlines()]
    return out


def assert_tree_matches_archive(archive: Path) -> list[dict]:
    recs = records(archive)
    reader = TreeReader(tree_path(archive))
    assert reader.size() == len(recs) > 0
    entries = reader.entries(0, len(recs))
    for i, (rec, entry) in enumerate(zip(recs, entries)):
        assert rec["seq"] == i + 1
        assert record_leaf(rec, entry[:16]) == entry[16:], f"leaf of seq {rec['seq']}"
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]["archive"]
    assert state["tree"]["size"] == len(recs)
    f = merkle.Frontier()
    for e in entries:
        f.append(e[16:])
    assert [merkle.root([e[16:] for e in entries])] == [f.root()]
    assert f.nodes == [__import__("base64").b64decode(x) for x in state["tree"]["frontier"]]
    return recs


def test_one_leaf_per_record_in_seq_order(tmp_path):
    _finish(_runtime(TWO_SOURCES, tmp_path / "a"))
    recs = assert_tree_matches_archive(tmp_path / "a")
    assert oct(os.stat(tree_path(tmp_path / "a")).st_mode & 0o777) == "0o640"
    # A second pass over the same input adds nothing, to the archive or the tree.
    _finish(_runtime(TWO_SOURCES, tmp_path / "a"))
    assert len(assert_tree_matches_archive(tmp_path / "a")) == len(recs)


@pytest.mark.parametrize("crash_after", [2, 9, 30])
@pytest.mark.parametrize("how", ["no_flush", "flushed_not_checkpointed", "checkpointed"])
def test_crash_anywhere_leaves_tree_and_archive_agreeing(tmp_path, crash_after, how):
    archive = tmp_path / "a"
    rt = _runtime((CAPTURE,), archive)
    for _ in range(crash_after):
        if rt.pipeline.done():
            break
        rt.pipeline.step()
    if how == "flushed_not_checkpointed":
        rt.archive.flush()  # archive and tree entries no checkpoint covers
    elif how == "checkpointed":
        rt.pipeline.commit()
    del rt  # kill -9
    _finish(_runtime((CAPTURE,), archive))
    assert_tree_matches_archive(archive)


def test_tree_behind_the_archive_without_checkpoint_is_recomputed(tmp_path):
    """A crash between the archive's fsync and the tree's, then the
    checkpoint lost: the missing leaves come back from the archive."""
    archive = tmp_path / "a"
    _finish(_runtime((CAPTURE,), archive))
    n = len(records(archive))
    path = tree_path(archive)
    os.truncate(path, (n - 3) * ENTRY + 20)  # three entries gone, a torn one
    for name in ("checkpoint.json", "checkpoint.json.prev"):
        (archive / ".state" / name).unlink(missing_ok=True)
    _finish(_runtime((CAPTURE,), archive))
    assert len(assert_tree_matches_archive(archive)) == n


def test_entries_past_the_checkpoint_are_cut(tmp_path):
    archive = tmp_path / "a"
    _finish(_runtime((CAPTURE,), archive))
    n = len(records(archive))
    with open(tree_path(archive), "ab") as fh:
        fh.write(os.urandom(2 * ENTRY + 5))  # written, never committed
    _finish(_runtime((CAPTURE,), archive))
    assert len(assert_tree_matches_archive(archive)) == n


def test_erasing_content_keeps_the_leaf(tmp_path):
    archive = tmp_path / "a"
    _finish(_runtime(TWO_SOURCES, archive))
    recs = records(archive)
    reader = TreeReader(tree_path(archive))
    rec = next(r for r in recs if r.get("prompt"))
    salt, leaf = reader.entries(rec["seq"] - 1, rec["seq"])[0][:16], reader.leaves(rec["seq"] - 1, rec["seq"])[0]
    erased = {k: (erased_value(salt, k, v) if k in CONTENT_FIELDS and v is not None else v)
              for k, v in rec.items()}
    assert rec["prompt"] not in json.dumps(erased, ensure_ascii=False)
    assert record_leaf(erased, salt) == leaf
    edited = dict(rec, prompt=rec["prompt"] + "x")
    assert record_leaf(edited, salt) != leaf
    # The HMAC chain fields are outside the leaf (an erasure re-chains them).
    assert record_leaf(dict(rec, hash="sha256:" + "0" * 64), salt) == leaf
    assert record_leaf(dict(rec, seq=rec["seq"] + 1), salt) != leaf


@pytest.mark.parametrize("block", [1, 2, 4, 256])
def test_file_proofs_equal_in_memory_proofs(tmp_path, block):
    path = tmp_path / "tree.bin"
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(37)]
    path.write_bytes(b"".join(os.urandom(16) + h for h in leaves))
    reader = TreeReader(path)
    reader.BLOCK = block
    mem = merkle.list_range_root(leaves)
    for size in range(1, 38):
        assert reader.root(size) == merkle.root(leaves[:size])
        for i in range(size):
            proof = reader.inclusion_proof(i, size)
            assert proof == merkle.inclusion_proof(i, size, mem)
            merkle.verify_inclusion(i, size, leaves[i], proof, merkle.root(leaves[:size]))
        for old in range(size + 1):
            assert reader.consistency_proof(old, size) == merkle.consistency_proof(old, size, mem)
    with pytest.raises(ValueError):
        reader.consistency_proof(3, 38)


def test_an_archive_from_before_the_tree_with_a_deleted_day_gets_its_tree(tmp_path):
    """Upgrade: records archived without a tree, the oldest day already
    deleted by retention: the tree is rebuilt with placeholder leaves for the
    deleted seqs, so every later leaf keeps its index."""
    from exporter.archive import ArchiveWriter
    from exporter.chain import Chain
    from exporter.compliance.retention import apply_retention
    from exporter.record import new_record
    from exporter.transparency.leaf import unavailable_leaf
    root = tmp_path / "a"
    t = [1795341600.0]
    w = ArchiveWriter(root, chain=Chain(None), clock=lambda: t[0])
    for day in range(3):
        for i in range(4):
            r = new_record()
            r.update(ts="2026-11-22T10:00:00.000Z", request_id=f"r{day}-{i}", prompt="p", status="completed")
            w.append(r)
        w.flush()
        t[0] += 86400
    w.close()
    apply_retention(root, now=t[0] + 86400 * 30, delete_after_days=20)
    assert not (root / "audit-2026-11-22.jsonl").exists() and not (root / "audit-2026-11-23.jsonl").exists()
    from exporter.transparency.tree import TreeFile
    w2 = ArchiveWriter.open(root, Chain(None), None, clock=lambda: t[0], tree=TreeFile(tree_path(root)))
    w2.close()
    reader = TreeReader(tree_path(root))
    assert reader.size() == 12
    assert reader.leaves(0, 8) == [unavailable_leaf(s) for s in range(1, 9)]  # two days deleted
    recs = [json.loads(x) for d in list_days(root) if d.data for x in d.data.read_bytes().splitlines()]
    assert [r["seq"] for r in recs] == list(range(9, 13))
    for rec in recs:
        entry = reader.entries(rec["seq"] - 1, rec["seq"])[0]
        assert record_leaf(rec, entry[:16]) == entry[16:]
