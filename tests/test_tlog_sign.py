"""Signed checkpoints (issue 15, step 2): keygen, checkpoints of the committed
tree every --sign-interval and at shutdown (heartbeats included), per-day key
epochs certified by the previous key with the old private key erased, and a
real `run` on a recorded vLLM log."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.archive.layout import checkpoints_path, day_of, list_checkpoint_files
from exporter.cli import main
from exporter.transparency import keys
from exporter.transparency.log import EXT_EPOCH, EXT_SEAL, EXT_TIME, TransparencyLog, extensions
from exporter.transparency.note import parse_checkpoint, parse_signer, parse_verifier, split_note, verify_note
from exporter.transparency.store import file_sha256, read_entries
from exporter.transparency.tree import TreeReader
from exporter.archive.layout import tree_path

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def checkpoints(archive: Path) -> list[tuple[str, str]]:
    """(day, note) of every signed checkpoint, in order."""
    out = []
    for day, path in list_checkpoint_files(archive):
        out += [(day, e["note"]) for _, e, _ in read_entries(path) if e and e.get("kind") == "checkpoint"]
    return out


@pytest.fixture
def keydir(tmp_path):
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--name", "test-log"]) == 0
    return tmp_path / "keys"


def test_keygen_writes_a_secret_key_and_a_one_line_verifier(keydir, capsys):
    key, pub = keydir / "signing.key", keydir / "signing.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = parse_signer(key.read_text())
    assert key.read_text().startswith("PRIVATE+KEY+test-log+")
    assert pub.read_text().count("\n") == 1
    assert parse_verifier(pub.read_text()) == signer.verifier
    assert main(["keygen", "--out", str(keydir)]) == 2  # never overwrites a key
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keygen", "--out", str(keydir / "w"), "--witness"]) == 0
    assert parse_verifier((keydir / "w" / "signing.pub").read_text()).alg == 0x04



def test_keygen_keep_existing_never_replaces_a_key_and_refuses_a_lone_public_key(tmp_path, capsys):
    """compose.yaml's signing-key init step runs it at every start."""
    out = tmp_path / "keys"
    assert main(["keygen", "--out", str(out), "--name", "test-log", "--keep-existing"]) == 0
    key, pub = (out / "signing.key").read_bytes(), (out / "signing.pub").read_text()
    capsys.readouterr()
    assert main(["keygen", "--out", str(out), "--name", "other", "--keep-existing"]) == 0
    assert (out / "signing.key").read_bytes() == key and (out / "signing.pub").read_text() == pub
    printed = capsys.readouterr().out
    assert "exists, kept" in printed and pub.strip() in printed.splitlines()  # in the log again
    (out / "signing.key").unlink()  # a key lost (or a first keygen cut short): no silent new key
    assert main(["keygen", "--out", str(out), "--keep-existing"]) == 2
    assert "exists without signing.key" in capsys.readouterr().err
    assert not (out / "signing.key").exists() and (out / "signing.pub").read_text() == pub


def replay(archive, key, *extra):
    return main(["replay", str(CAPTURE), "--archive-dir", str(archive), "--model", "tiny", "--no-progress",
                 "--signing-key-file", str(key), "--log-origin", "example.org/audit", *extra])


def test_replay_signs_the_committed_tree(tmp_path, keydir, capsys):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    pub = parse_verifier((keydir / "signing.pub").read_text())
    cps = checkpoints(archive)
    assert len(cps) >= 2  # at start, at the end
    reader = TreeReader(tree_path(archive))
    for day, note in cps:
        cp = parse_checkpoint(verify_note(note, pub))
        assert cp.origin == "example.org/audit"
        assert cp.root == reader.root(cp.size)
        assert int(extensions(cp)[EXT_TIME][0]) <= time.time()
    assert parse_checkpoint(split_note(cps[-1][1])[0]).size == reader.size() == 22
    # A second replay of the same log: same tree, signed again by the same key.
    assert replay(archive, keydir / "signing.key") == 0
    assert parse_checkpoint(split_note(checkpoints(archive)[-1][1])[0]).size == 22


@pytest.mark.parametrize("argv, named", [
    (["--log-origin", "other.org/audit"], "--log-origin"),
    (["--sign-interval", "0"], "--sign-interval"),
])
def test_bad_signing_configuration_exits_2(tmp_path, keydir, capsys, argv, named):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    capsys.readouterr()
    assert replay(archive, keydir / "signing.key", *argv) == 2
    assert named in capsys.readouterr().err


def test_a_key_that_did_not_sign_this_log_is_refused(tmp_path, keydir, capsys):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    assert main(["keygen", "--out", str(tmp_path / "other"), "--name", "test-log"]) == 0
    capsys.readouterr()
    assert replay(archive, tmp_path / "other" / "signing.key") == 2
    assert "not the key of this log's current epoch" in capsys.readouterr().err
    (tmp_path / "bad.key").write_bytes(b"\xff\xfe not a key \n")
    assert replay(archive, tmp_path / "bad.key") == 2
    assert "--signing-key-file" in capsys.readouterr().err


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_heartbeats_and_daily_epochs_erase_the_old_key(tmp_path, keydir):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]["archive"]
    genesis = parse_verifier((keydir / "signing.pub").read_text())
    clock = Clock(time.time())
    log = TransparencyLog(archive, keydir / "signing.key", "example.org/audit", 10.0, clock)
    seen = []
    log.add_listener(seen.append)
    assert log.tick(state) is not None  # first tick signs at once
    assert log.tick(state) is None  # not yet due
    clock.t += 10
    assert log.tick(state) is not None  # a heartbeat: nothing new, still signed
    assert len(seen) == 2
    old_key_text = (keydir / "signing.key").read_text()
    old_day = day_of(clock.t)
    old_file_sha = file_sha256(checkpoints_path(archive, old_day))
    clock.t += 86400  # the next UTC day: a new epoch
    note = log.tick(state)
    text, sigs = split_note(note)
    cp = parse_checkpoint(text)
    ext = extensions(cp)
    new_day, new_pub = ext[EXT_EPOCH][0].split(" ")
    new = parse_verifier(new_pub)
    assert new_day == day_of(clock.t) and new != genesis
    assert ext[EXT_SEAL] == [f"{old_day} {old_file_sha}"]  # the old day's file, sealed by the old key
    verify_note(note, genesis)  # certified by the previous epoch's key ...
    verify_note(note, new)  # ... and signed by the new one
    assert (keydir / "signing.key").read_text() != old_key_text  # old private key erased
    assert parse_signer((keydir / "signing.key").read_text()).verifier == new
    assert not keys.next_path(keydir / "signing.key").exists()
    clock.t += 10
    later = log.tick(state)
    verify_note(later, new)
    with pytest.raises(Exception):
        verify_note(later, genesis)  # the old key signs nothing after its epoch
    assert checkpoints_path(archive, new_day).exists()
    # A restart continues with the new key; the old one is refused.
    TransparencyLog(archive, keydir / "signing.key", "example.org/audit", 10.0, clock)


def test_interrupted_rotation_is_finished_or_dropped(tmp_path, keydir):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    key = keydir / "signing.key"
    clock = Clock(time.time())
    # Crash after the new key was written, before its certificate: dropped.
    keys.begin_rotation(key, "test-log")
    log = TransparencyLog(archive, key, "example.org/audit", 10.0, clock)
    assert not keys.next_path(key).exists()
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]["archive"]
    clock.t += 86400
    # Crash after the certificate was durable, before the key file was replaced: finished.
    real_finish = keys.finish_rotation
    keys.finish_rotation = lambda path: (_ for _ in ()).throw(SystemExit("crash"))
    try:
        with pytest.raises(SystemExit):
            log.tick(state)
    finally:
        keys.finish_rotation = real_finish
    assert keys.next_path(key).exists()
    new_pub = extensions(parse_checkpoint(split_note(checkpoints(archive)[-1][1])[0]))[EXT_EPOCH][0].split(" ")[1]
    TransparencyLog(archive, key, "example.org/audit", 10.0, clock)
    assert not keys.next_path(key).exists()
    assert parse_signer(key.read_text()).verifier.text() == new_pub


def test_run_signs_heartbeats_and_a_shutdown_checkpoint(tmp_path, keydir):
    archive = tmp_path / "archive"
    log = tmp_path / "vllm.log"
    log.write_bytes(CAPTURE.read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--log", str(log), "--from-start", "--archive-dir",
         str(archive), "--model", "tiny", "--web.listen-address", "127.0.0.1:0", "--request-timeout", "0.5",
         "--sign-interval", "0.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO), VLLM_AUDIT_SIGNING_KEY_FILE=str(keydir / "signing.key")))
    deadline = time.monotonic() + 60
    sizes: list[int] = []
    try:
        # Wait for every record to be signed, then for two heartbeats after it.
        while time.monotonic() < deadline and (sizes.count(22) < 3):
            sizes = [parse_checkpoint(split_note(n)[0]).size for _, n in checkpoints(archive)]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
    assert sizes.count(22) >= 3, sizes
    assert sizes == sorted(sizes)
    pub = parse_verifier((keydir / "signing.pub").read_text())
    final = checkpoints(archive)
    assert len(final) > len(sizes)  # the shutdown checkpoint
    times = [int(extensions(parse_checkpoint(verify_note(n, pub)))[EXT_TIME][0]) for _, n in final]
    assert times == sorted(times)


def test_signing_is_exported_as_metrics(tmp_path, keydir):
    from prometheus_client import generate_latest
    from exporter.replay import replay_into
    from exporter.settings import load
    settings = load("replay", [str(CAPTURE), "--archive-dir", str(tmp_path / "a"), "--model", "tiny",
                               "--no-progress", "--signing-key-file", str(keydir / "signing.key")], {})
    rt, _ = replay_into(settings, quiet=True)
    text = generate_latest(rt.registry).decode()
    assert f"vllm_audit_checkpoints_signed_total {float(rt.tlog.signed)}" in text and rt.tlog.signed >= 2
    assert "vllm_audit_signed_tree_size 22.0" in text
    assert 'vllm_audit_checkpoint_sign_failures_total{reason="forked"} 0.0' in text
    assert "vllm_audit_last_signed_checkpoint_timestamp_seconds" in text


def test_never_signs_a_tree_behind_or_forked_from_the_signed_one(tmp_path, keydir, capsys):
    """After a recovery that fell back to an older pipeline checkpoint the
    tree can be smaller than (or, re-derived, different from) what was
    signed: the log waits rather than sign an inconsistent checkpoint."""
    import base64
    from exporter.transparency import merkle
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    state = json.loads((archive / ".state" / "checkpoint.json").read_bytes())["state"]["archive"]
    clock = Clock(time.time())
    err = __import__("io").StringIO()
    log = TransparencyLog(archive, keydir / "signing.key", "example.org/audit", 10.0, clock, err=err)
    f = merkle.Frontier()
    for leaf in TreeReader(tree_path(archive)).leaves(0, 20):
        f.append(leaf)
    behind = dict(state, tree={"size": 20, "frontier": [base64.b64encode(h).decode() for h in f.nodes]})
    before = len(checkpoints(archive))
    assert log.sign(behind) is None and log.failures["behind"] == 1
    forked = dict(state, tree={"size": 22, "frontier": [base64.b64encode(b"\x01" * 32).decode()] * 3})
    assert log.sign(forked) is None and log.failures["forked"] == 1
    assert len(checkpoints(archive)) == before  # nothing signed
    assert "refusing to sign a forked history" in err.getvalue()
    assert log.sign(state) is not None  # the real tree again: signing resumes


def test_a_torn_checkpoint_append_is_cut_on_start(tmp_path, keydir, capsys):
    archive = tmp_path / "a"
    assert replay(archive, keydir / "signing.key") == 0
    path = list_checkpoint_files(archive)[-1][1]
    good = path.read_bytes()
    path.write_bytes(good + b'{"kind":"checkpoint","note":"exam')  # crash mid-append
    assert replay(archive, keydir / "signing.key") == 0
    assert path.read_bytes().startswith(good) and path.read_bytes().endswith(b"\n")
    capsys.readouterr()
    assert main(["verify", str(archive), "--public-key", str(keydir / "signing.pub")]) == 0
