"""Per-record proofs: ``prove`` and ``verify --proof`` (and the proofs an export embeds).

A proof (``vllm-audit-proof/v1``) is one JSON document an outsider checks
with the log's public key alone, without the archive::

    {"format": "vllm-audit-proof/v1",
     "record": {...the archived record without hash/prev_hash...}, "salt": "<base64>", "leaf_index": i,
     "tree_size": n, "inclusion": ["<base64 hash>", ...],
     "checkpoint": "<signed checkpoint note, witness cosignature lines appended>",
     "epoch_certificates": ["<signed note>", ...]}

``epoch_certificates`` are the checkpoints that moved the log from the key
in ``signing.pub`` to the key of the checkpoint's day, each signed by the
key before it; the checkpoint must be signed by the last of them and dated
no earlier than that key's day (a key stolen later cannot sign for an
earlier day). An export's ``FILE.proof.json`` (``vllm-audit-proofs/v1``)
holds the same for every exported record under one checkpoint, plus the
SHA-256 of the export file, which the verifier also regenerates from the
proven records. The file must be exactly as written (canonical JSON), so any
changed byte fails.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from pathlib import Path

from exporter.archive.layout import iter_lines, list_checkpoint_files, list_days, tree_path
from exporter.compliance.export_format import write_records
from exporter.transparency import merkle
from exporter.transparency.audit import load_verifier
from exporter.transparency.leaf import record_leaf
from exporter.transparency.log import EXT_EPOCH, EXT_TIME, extensions
from exporter.transparency.note import (NoteError, Verifier, parse_checkpoint, parse_verifier, split_note,
                                        verify_cosignature, verify_note)
from exporter.transparency.store import read_entries
from exporter.transparency.tree import TreeReader

CHAIN_ONLY = ("hash", "prev_hash")
ITEM_FIELDS = ("record", "salt", "leaf_index", "inclusion")
PROOF_FIELDS = ("format", *ITEM_FIELDS, "tree_size", "checkpoint", "epoch_certificates")
BUNDLE_FIELDS = ("format", "export", "tree_size", "checkpoint", "epoch_certificates", "records")
FORMAT = "vllm-audit-proof/v1"
BUNDLE = "vllm-audit-proofs/v1"
EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


class ProveError(ValueError):
    pass


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if _b64(raw) != text:
        raise merkle.ProofError("a hash or salt is not canonical base64")
    return raw


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def _log_state(root: Path):
    """Signed checkpoints in order, each with the epoch certificates up to
    it and the cosignature lines stored for it."""
    certs: list[str] = []
    out = []
    cosigs: dict[str, list[str]] = {}
    for _, path in list_checkpoint_files(root):
        for _, e, _ in read_entries(path):
            if not e:
                continue
            if e.get("kind") == "cosignatures":
                cosigs.setdefault(e.get("checkpoint"), []).extend(e.get("lines") or ())
            elif e.get("kind") == "checkpoint":
                text = split_note(e["note"])[0]
                cp = parse_checkpoint(text)
                if EXT_EPOCH in extensions(cp):
                    certs.append(e["note"])
                out.append((e["note"], text, cp, list(certs)))
    return out, cosigs


def _pick(root: Path, index: int):
    """The newest cosigned checkpoint covering leaf ``index``, else the newest."""
    signed, cosigs = _log_state(root)
    covering = [s for s in signed if s[2].size > index]
    if not covering:
        raise ProveError(f"no signed checkpoint covers record seq {index + 1} yet (signed every "
                         "--sign-interval seconds)")
    cosigned = [s for s in covering if cosigs.get(s[1])]
    note, text, cp, certs = (cosigned or covering)[-1]
    lines = list(dict.fromkeys(cosigs.get(text, [])))
    return note + "".join(lines), cp, certs


def find_records(root: Path, request_id: str) -> list[dict]:
    found = []
    for day in list_days(root):
        if day.data is None:
            continue
        for raw in iter_lines(day.data):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("request_id") == request_id:
                found.append(rec)
    return found


def proofs_for(root: Path, records: list[dict]) -> dict:
    """The shared checkpoint and one inclusion proof per record."""
    reader = TreeReader(tree_path(root))
    top = max(r["seq"] for r in records) - 1
    note, cp, certs = _pick(root, top)
    items = []
    for rec in records:
        i = rec["seq"] - 1
        items.append({"record": rec, "salt": _b64(reader.salt(i)), "leaf_index": i,
                      "inclusion": [_b64(h) for h in reader.inclusion_proof(i, cp.size)]})
    return {"tree_size": cp.size, "checkpoint": note, "epoch_certificates": certs, "items": items}


def prove(root: Path, request_id: str, seq: int | None = None) -> dict:
    recs = find_records(root, request_id)
    if seq is not None:
        recs = [r for r in recs if r.get("seq") == seq]
    if not recs:
        raise ProveError(f"no archived record with request_id {request_id!r}"
                         + (f" and seq {seq}" if seq is not None else ""))
    if len(recs) > 1:
        raise ProveError(f"{len(recs)} records have request_id {request_id!r} (a reused id): add --seq, "
                         f"one of {', '.join(str(r['seq']) for r in recs)}")
    p = proofs_for(root, recs)
    item = p["items"][0]
    # The HMAC chain fields are not in the leaf (an outsider cannot check
    # them, an erasure re-chains them): left out, so every byte is proven.
    record = {k: v for k, v in item["record"].items() if k not in CHAIN_ONLY}
    return {"format": FORMAT, "record": record, "salt": item["salt"], "leaf_index": item["leaf_index"],
            "tree_size": p["tree_size"], "inclusion": item["inclusion"], "checkpoint": p["checkpoint"],
            "epoch_certificates": p["epoch_certificates"]}


def bundle(root: Path, records: list[dict], export_file: Path, fmt: str, bom: bool) -> dict | None:
    """An export's proof file, or None when the archive has no signed checkpoint."""
    if not list_checkpoint_files(root) or not records:
        return None
    p = proofs_for(root, records)
    sha = hashlib.sha256(export_file.read_bytes()).hexdigest()
    return {"format": BUNDLE, "export": {"file": export_file.name, "sha256": sha, "format": fmt, "bom": bom},
            "tree_size": p["tree_size"], "checkpoint": p["checkpoint"],
            "epoch_certificates": p["epoch_certificates"], "records": p["items"]}


# ---- verification -----------------------------------------------------------

def _epoch_key(genesis: Verifier, certs: list[str]) -> tuple[Verifier, str | None]:
    key, day = genesis, None
    for i, note in enumerate(certs):
        try:
            verify_note(note, key)
            e_day, e_key = extensions(parse_checkpoint(split_note(note)[0]))[EXT_EPOCH][0].split(" ", 1)
            new = parse_verifier(e_key)
            verify_note(note, new)
        except (NoteError, KeyError, ValueError) as exc:
            raise merkle.ProofError(f"epoch certificate {i + 1} is not certified by the key before it: {exc}") from None
        if day is not None and e_day <= day:
            raise merkle.ProofError(f"epoch certificate {i + 1} does not move to a later day")
        key, day = new, e_day
    return key, day


def check(doc: dict, genesis: Verifier, witnesses: list[Verifier] = (), min_witnesses: int = 0) -> dict:
    """Raise ProofError unless ``doc`` (a proof or an export bundle) holds; a summary."""
    from datetime import datetime, timezone
    fields = PROOF_FIELDS if doc.get("format") == FORMAT else BUNDLE_FIELDS
    if set(doc) != set(fields):
        raise merkle.ProofError(f"a {doc.get('format')} has exactly the fields {', '.join(fields)}")
    if not isinstance(doc["epoch_certificates"], list):
        raise merkle.ProofError("epoch_certificates is not a list")
    key, epoch_day = _epoch_key(genesis, doc["epoch_certificates"])
    note = doc["checkpoint"]
    try:
        text = verify_note(note, key)
    except NoteError as exc:
        raise merkle.ProofError(f"checkpoint: {exc}") from None
    cp = parse_checkpoint(text)
    t = int(extensions(cp)[EXT_TIME][0])
    day = datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")
    if epoch_day is not None and day < epoch_day:
        raise merkle.ProofError(f"checkpoint dated {day}, before its key's epoch {epoch_day}")
    if cp.size != doc["tree_size"]:
        raise merkle.ProofError("tree_size is not the checkpoint's size")
    good = set()
    by_name = {w.name: w for w in witnesses}
    for sig in split_note(note)[1]:
        w = by_name.get(sig.name)
        if w is not None and sig.id == w.id:
            try:
                verify_cosignature(text, sig, w)
            except NoteError as exc:
                raise merkle.ProofError(str(exc)) from None
            good.add(w.name)
    if len(good) < min_witnesses:
        raise merkle.ProofError(f"checkpoint cosigned by {len(good)} of the given witnesses, "
                                f"--min-witnesses is {min_witnesses}")
    items = doc["records"] if doc.get("format") == BUNDLE else [doc]
    for it in items:
        if doc["format"] == BUNDLE and set(it) != set(ITEM_FIELDS):
            raise merkle.ProofError(f"a proven record has exactly the fields {', '.join(ITEM_FIELDS)}")
        rec, i = it["record"], it["leaf_index"]
        if doc.get("format") == FORMAT and any(k in rec for k in CHAIN_ONLY):
            raise merkle.ProofError("a proof's record holds no hash/prev_hash (they are not in the leaf)")
        if not isinstance(i, int) or rec.get("seq") != i + 1:
            raise merkle.ProofError(f"record seq {rec.get('seq')!r} is not leaf {i!r}")
        leaf = record_leaf(rec, _unb64(it["salt"]))
        proof = [_unb64(h) for h in it["inclusion"]]
        try:
            merkle.verify_inclusion(i, cp.size, leaf, proof, cp.root)
        except merkle.ProofError as exc:
            raise merkle.ProofError(f"record seq {i + 1}: {exc}") from None
    return {"records": len(items), "tree_size": cp.size, "origin": cp.origin, "signed_at": t,
            "key": key.text(), "witnesses": sorted(good),
            "request_ids": [it["record"].get("request_id") for it in items]}


def _export_matches(doc: dict, proof_path: Path) -> str | None:
    """None, or why the export file beside the proof does not match it."""
    exp = doc["export"]
    path = proof_path.parent / exp["file"]
    if not path.exists():
        return f"{path.name} (the export) is not beside the proof; its records were checked alone"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != exp["sha256"]:
        raise merkle.ProofError(f"{path.name} is not the exported file the proof was made for")
    buf = io.StringIO(newline="")
    write_records([it["record"] for it in doc["records"]], buf, exp["format"], exp["bom"])
    if buf.getvalue().encode("utf-8") != data:
        raise merkle.ProofError(f"{path.name} does not hold exactly the proven records")
    return None


def verify_proof_main(path: str, *, public_key: str, witness_keys=(), min_witnesses: int | None = None,
                      fmt: str = "text", out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        genesis = load_verifier(public_key, "--public-key", alg=1)
        witnesses = [load_verifier(w, "--witness-key", alg=4) for w in witness_keys or ()]
        if min_witnesses is None:
            min_witnesses = 1 if witnesses else 0
        raw = Path(path).read_bytes()
    except (ValueError, OSError) as exc:
        print(f"verify: {exc}", file=err)
        return EXIT_USAGE
    result: dict = {"ok": False, "proof": str(path)}
    try:
        try:
            text = raw.decode("utf-8")
            doc = json.loads(text)
        except ValueError:
            raise merkle.ProofError("not a JSON proof") from None
        if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, BUNDLE):
            raise merkle.ProofError("not a vllm-audit proof")
        if dumps(doc) != text:
            raise merkle.ProofError("the file is not byte for byte the proof as written")
        result.update(check(doc, genesis, witnesses, min_witnesses))
        if doc["format"] == BUNDLE:
            note = _export_matches(doc, Path(path))
            if note:
                result["warning"] = note
        result["ok"] = True
    except (merkle.ProofError, NoteError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        result["problem"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, merkle.ProofError) else str(exc)
    if fmt == "json":
        print(json.dumps(result, indent=1, ensure_ascii=False), file=out)
    elif result["ok"]:
        w = f", cosigned by {', '.join(result['witnesses'])}" if result["witnesses"] else ""
        ids = result["request_ids"]
        shown = ", ".join(map(str, ids[:3])) + (f", ... ({len(ids) - 3} more)" if len(ids) > 3 else "")
        print(f"OK: {result['records']} record(s) ({shown}) in the tree "
              f"of {result['tree_size']} signed by {result['key']}{w}", file=out)
        if result.get("warning"):
            print(f"WARNING: {result['warning']}", file=out)
    else:
        print(f"BROKEN: {result['problem']}", file=out)
    return EXIT_OK if result["ok"] else EXIT_BROKEN


def prove_main(archive_dir: str, request_id: str, seq: int | None = None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    root = Path(archive_dir)
    if not root.is_dir():
        print(f"prove: --archive-dir: {root}: no such directory", file=err)
        return EXIT_USAGE
    try:
        doc = prove(root, request_id, seq)
    except (ProveError, ValueError, NoteError) as exc:
        print(f"prove: {exc}", file=err)
        return EXIT_USAGE
    out.write(dumps(doc))
    return EXIT_OK
