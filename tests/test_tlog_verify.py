"""Evidence that holds against the host's own admin (issue 15, "Done when"),
on real archives made by replaying a recorded vLLM 0.32 capture with a
signing key: the untouched archive verifies with only the public key; every
kind of tampering — including a re-chained, re-signed copy made with the
host's current HMAC and signing keys after a witness cosigned an earlier
checkpoint — and a stopped exporter make `verify` fail and name what broke;
`prove` output verifies alone and fails after any changed byte."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from exporter.archive.layout import checkpoints_path, day_of, list_checkpoint_files
from exporter.cli import main
from exporter.transparency.log import TransparencyLog
from exporter.transparency.note import ALG_COSIGNATURE_V1, Signer, cosign, parse_checkpoint, parse_signer, sign_note, split_note
from exporter.transparency.store import read_entries

FIX = Path(__file__).parent / "fixtures" / "vllm-0.32.0"
CAPTURE = FIX / "debug" / "vllm.log"
ORIGIN = "example.org/audit"


def replay(archive: Path, keyfile: Path, hmac: Path, log: Path = CAPTURE) -> None:
    assert main(["replay", str(log), "--archive-dir", str(archive), "--model", "tiny", "--no-progress",
                 "--signing-key-file", str(keyfile), "--log-origin", ORIGIN, "--hmac-key-file", str(hmac)]) == 0


def verify(archive: Path, pub: Path, *extra, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["verify", str(archive), "--public-key", str(pub), "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


def checkpoint_notes(archive: Path) -> list[str]:
    return [e["note"] for _, p in list_checkpoint_files(archive) for _, e, _ in read_entries(p)
            if e and e.get("kind") == "checkpoint"]


@pytest.fixture
def host(tmp_path, capsys):
    """A host: HMAC key, signing key, an archive replayed from the capture,
    and a witness that cosigned the newest checkpoint."""
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys), "--name", "audit-host"]) == 0
    hmac = tmp_path / "hmac.key"
    hmac.write_bytes(b"host hmac key \n")
    archive = tmp_path / "archive"
    replay(archive, keys / "signing.key", hmac)
    witness = Signer.generate("witness.example", ALG_COSIGNATURE_V1)
    (tmp_path / "witness.pub").write_text(witness.verifier.text() + "\n")
    log = TransparencyLog(archive, keys / "signing.key", ORIGIN, 10.0, time.time)
    text = split_note(checkpoint_notes(archive)[-1])[0]
    log.add_cosignatures(text, [cosign(text, witness, int(time.time())).line()])
    capsys.readouterr()
    return {"dir": tmp_path, "archive": archive, "pub": keys / "signing.pub", "key": keys / "signing.key",
            "hmac": hmac, "witness": tmp_path / "witness.pub"}


def data_file(archive: Path) -> Path:
    return next(archive.glob("audit-*.jsonl"))


def edit_lines(archive: Path, fn) -> None:
    path = data_file(archive)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(lines)))


def test_untouched_archive_verifies_with_only_the_public_key(host, capsys):
    code, report = verify(host["archive"], host["pub"], capsys=capsys)
    assert code == 0 and report["ok"], report
    assert report["records"] == report["tree_size"] == report["signed_size"] == 22
    code, report = verify(host["archive"], host["pub"], "--witness-key", str(host["witness"]), capsys=capsys)
    assert code == 0 and report["witnessed_size"] == 22 and report["witnesses"] == {"witness.example": 1}
    capsys.readouterr()
    assert main(["verify", str(host["archive"]), "--public-key", str(host["pub"])]) == 0
    assert capsys.readouterr().out.startswith("OK: 22 record(s)")


def _edit_prompt(lines):
    rec = json.loads(lines[4])
    rec["prompt"] = "something else"
    lines[4] = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    return lines


@pytest.mark.parametrize("tamper, kind, seq", [
    (_edit_prompt, "edited", 5),
    (lambda lines: lines[:6] + lines[7:], "deleted", 7),
    (lambda lines: lines[:-3], "deleted", 20),
    (lambda lines: lines[:10] + [lines[2]] + lines[10:], "inserted", 11),
    (lambda lines: lines[:3] + [lines[4], lines[3]] + lines[5:], "deleted", 4),  # reordered
])
def test_each_tampering_fails_and_names_the_record(host, capsys, tamper, kind, seq):
    edit_lines(host["archive"], tamper)
    code, report = verify(host["archive"], host["pub"], capsys=capsys)
    assert code == 1 and not report["ok"]
    first = report["problems"][0]
    assert (first["kind"], first["seq"]) == (kind, seq), report["problems"]
    assert "audit-" in report["first_problem"]


def test_cutting_the_tree_with_the_newest_records_is_caught_by_the_signature(host, capsys):
    from exporter.transparency.tree import ENTRY
    edit_lines(host["archive"], lambda lines: lines[:-2])
    tree = host["archive"] / "tlog" / "tree.bin"
    tree.write_bytes(tree.read_bytes()[:-2 * ENTRY])
    code, report = verify(host["archive"], host["pub"], capsys=capsys)
    assert code == 1
    assert report["problems"][0]["kind"] == "deleted" and "newest records deleted" in report["first_problem"]


def _forged_copy(host, tmp_path, how: str = "remove") -> Path:
    """What root on the host can make with the host's current keys: the
    capture with one conversation removed (or one prompt changed), replayed
    into a fresh archive with the same HMAC key, the same (current) signing
    key and origin."""
    tmp_path.mkdir()
    lines = CAPTURE.read_bytes().splitlines(keepends=True)
    victim = json.loads(data_file(host["archive"]).read_bytes().splitlines()[3])["request_id"]
    forged_log = tmp_path / "forged.log"
    if how == "remove":
        forged_log.write_bytes(b"".join(x for x in lines if victim.encode() not in x))
    else:
        forged_log.write_bytes(b"".join(x.replace("你好".encode(), "再见".encode()) for x in lines))
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    shutil.copy(host["key"], stolen / "signing.key")
    forged = tmp_path / "forged"
    replay(forged, stolen / "signing.key", host["hmac"], forged_log)
    return forged


def test_a_rechained_resigned_copy_fails_once_a_witness_cosigned(host, tmp_path, capsys):
    forged = _forged_copy(host, tmp_path / "attacker")
    archive = host["archive"]
    # The HMAC chain of the forgery is perfect: the key holder re-chained it.
    capsys.readouterr()
    assert main(["verify", str(forged), "--hmac-key-file", str(host["hmac"])]) == 0
    # And it verifies against the public key alone: the signing key is the host's.
    assert verify(forged, host["pub"], capsys=capsys)[0] == 0
    # Variant 1: the forgery replaces the whole archive (old checkpoints and
    # cosignatures gone): no checkpoint carries the witness's cosignature.
    shutil.rmtree(archive)
    shutil.copytree(forged, archive)
    code, report = verify(archive, host["pub"], "--witness-key", str(host["witness"]), capsys=capsys)
    assert code == 1 and report["problems"][0]["kind"] == "quorum", report["problems"]


def test_a_rechained_copy_keeping_the_cosigned_checkpoint_fails(host, tmp_path, capsys):
    originals = {p.name: p.read_bytes() for _, p in list_checkpoint_files(host["archive"])}
    forged = _forged_copy(host, tmp_path / "attacker", "edit")
    # Variant 2: the forgery keeps the cosigned checkpoint (so the quorum is
    # met) before its own checkpoints: that checkpoint's root is not the tree's.
    for name, data in originals.items():
        path = forged / "tlog" / name
        path.write_bytes(data + path.read_bytes())
    code, report = verify(forged, host["pub"], "--witness-key", str(host["witness"]), capsys=capsys)
    assert code == 1
    first = report["problems"][0]
    assert first["kind"] == "tree_mismatch" and first["seq"] == 1, report["problems"]
    assert "rewritten after signing" in report["first_problem"]


def test_a_stolen_old_epoch_key_cannot_sign_later_and_closed_days_stay_sealed(host, capsys):
    archive = host["archive"]
    old_key = parse_signer(host["key"].read_text())  # an attacker's copy of day 1's key
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]["archive"]
    clock = [time.time() + 86400]
    log = TransparencyLog(archive, host["key"], ORIGIN, 10.0, lambda: clock[0])
    log.sign(state)  # the next day: a new epoch
    clock[0] += 10
    log.sign(state)
    assert verify(archive, host["pub"], capsys=capsys)[0] == 0
    # The old key signs a checkpoint in the new day (CVE-2023-31439: it must
    # be checked against the key of *its* epoch).
    newest = list_checkpoint_files(archive)[-1][1]
    text = split_note(checkpoint_notes(archive)[-1])[0]
    bad = sign_note(text, old_key)
    with open(newest, "a") as fh:
        fh.write(json.dumps({"kind": "checkpoint", "note": bad}) + "\n")
    code, report = verify(archive, host["pub"], capsys=capsys)
    assert code == 1 and report["problems"][0]["kind"] == "bad_signature"
    assert "another epoch's key" in report["first_problem"]
    # Appending to a closed day's file (even with the old key) breaks its seal.
    lines = newest.read_text().splitlines(keepends=True)
    newest.write_text("".join(lines[:-1]))
    first_day = checkpoints_path(archive, day_of(time.time()))
    with open(first_day, "a") as fh:
        fh.write(json.dumps({"kind": "checkpoint", "note": bad}) + "\n")
    code, report = verify(archive, host["pub"], capsys=capsys)
    assert code == 1 and report["problems"][0]["kind"] == "seal"


def test_stopping_the_exporter_longer_than_max_gap_fails(host, capsys):
    last = parse_checkpoint(split_note(checkpoint_notes(host["archive"])[-1])[0])
    t0 = int(last.extensions[0].split(" ")[1])
    deadline = time.monotonic() + 30
    while int(time.time()) < t0 + 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the exporter is stopped
    replay(host["archive"], host["key"], host["hmac"])  # started again
    assert verify(host["archive"], host["pub"], capsys=capsys)[0] == 0  # no --max-gap: no gap check
    code, report = verify(host["archive"], host["pub"], "--max-gap", "2", capsys=capsys)
    assert code == 1 and report["problems"][0]["kind"] == "gap"
    gap = report["gaps"][0]
    assert gap["seconds"] >= 3 and gap["from"] < gap["to"]
    assert "was not signing" in report["first_problem"]
    # Still stopped at verify time: said (a warning: copies are verified later too).
    from exporter.transparency.audit import audit, load_verifier
    later = audit(host["archive"], load_verifier(str(host["pub"]), "k"), max_gap=60, now=time.time() + 3600)
    assert any("it is not signing" in w for w in later.warnings)


def test_prove_output_verifies_alone_and_fails_after_any_byte_change(host, capsys):
    rec = json.loads(data_file(host["archive"]).read_bytes().splitlines()[6])
    capsys.readouterr()
    assert main(["prove", "--archive-dir", str(host["archive"]), rec["request_id"]]) == 0
    proof = capsys.readouterr().out.encode()
    # Alone: the archive is gone, only the proof and the public keys remain.
    shutil.rmtree(host["archive"])
    path = host["dir"] / "proof.json"
    path.write_bytes(proof)
    doc = json.loads(proof)
    assert doc["record"] == {k: v for k, v in rec.items() if k not in ("hash", "prev_hash")}
    assert doc["leaf_index"] == rec["seq"] - 1
    args = ["verify", "--proof", str(path), "--public-key", str(host["pub"]),
            "--witness-key", str(host["witness"])]
    assert main(args) == 0
    assert "cosigned by witness.example" in capsys.readouterr().out
    for i in range(len(proof)):
        path.write_bytes(proof[:i] + bytes([proof[i] ^ 0x01]) + proof[i + 1:])
        assert main(args) == 1, f"byte {i} ({proof[i:i + 1]!r}) changed and the proof still verified"
    capsys.readouterr()


def test_export_embeds_proofs_that_verify_without_the_archive(host, capsys):
    out = host["dir"] / "export" / "audit.csv"
    out.parent.mkdir()
    assert main(["export", "--archive-dir", str(host["archive"]), "--from", "2026-01-01", "--to", "2027-01-01",
                 "-o", str(out)]) == 0
    shutil.rmtree(host["archive"])
    proof = out.with_name("audit.csv.proof.json")
    capsys.readouterr()
    assert main(["verify", "--proof", str(proof), "--public-key", str(host["pub"]), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["records"] == 22 and "warning" not in result
    data = out.read_bytes()
    out.write_bytes(data.replace(b"alice", b"mallory", 1))  # the export edited
    assert main(["verify", "--proof", str(proof), "--public-key", str(host["pub"])]) == 1
    assert "not the exported file" in capsys.readouterr().out


def test_days_epochs_and_retention_through_the_real_pipeline(tmp_path, capsys):
    """Two UTC days through the real runtime (a fake clock): the second day
    starts a key epoch and seals the first day's checkpoints; the first day's
    manifest records the tree; retention gzips, then deletes the first day,
    and the log still verifies (its leaves stay in the tree)."""
    from exporter.compliance.retention import apply_retention
    from exporter.runtime import build
    from exporter.settings import load
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys), "--name", "audit-host"]) == 0
    archive = tmp_path / "archive"
    clock = [1795341600.0]  # 2026-11-22T10:00:00Z

    def one_pass(logs):
        settings = load("replay", [*map(str, logs), "--archive-dir", str(archive), "--model", "tiny",
                                   "--no-progress", "--signing-key-file", str(keys / "signing.key"),
                                   "--log-origin", ORIGIN], {})
        rt = build(settings, live=False, clock=lambda: clock[0])
        while not rt.pipeline.done():
            rt.pipeline.step()
        rt.pipeline.finish()

    one_pass([CAPTURE])
    clock[0] += 86400
    one_pass([FIX / "middleware" / "vllm.log", FIX / "middleware" / "middleware.jsonl"])
    manifest = json.loads((archive / "audit-2026-11-22.manifest.json").read_text())
    assert manifest["tree_size"] == manifest["last_seq"] == 22
    code, report = verify(archive, keys / "signing.pub", capsys=capsys)
    assert code == 0, report["problems"]
    assert len(report["epochs"]) == 2 and report["epochs"][1]["from"] == "2026-11-23"
    assert report["records"] == report["tree_size"] > 22
    actions = apply_retention(archive, now=clock[0] + 3 * 86400, compress_after_days=1)
    assert any(a.action == "compressed" for a in actions), actions
    assert verify(archive, keys / "signing.pub", capsys=capsys)[0] == 0
    apply_retention(archive, now=clock[0] + 9 * 86400, compress_after_days=1, delete_after_days=5)
    assert not list(archive.glob("audit-2026-11-22.jsonl*"))
    code, report = verify(archive, keys / "signing.pub", capsys=capsys)
    assert code == 0 and report["retained_days"] == ["2026-11-22"], report["problems"]
