"""The witness (C2SP tlog-witness add-checkpoint) over real HTTP: it cosigns
consistent extensions only, refuses rolled-back and forked histories with the
status codes the spec prescribes, and remembers what it cosigned across a
restart. One test runs a real public log's checkpoint and a real public
witness's cosignature through the same code (interop)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from exporter.transparency import merkle, note
from exporter.transparency.witness import Witness, WitnessError, origin_hash
from tests.hyp import examples
from tests.witness_helpers import ORIGIN, FakeLog, WitnessServer, body

REPO = Path(__file__).resolve().parents[1]
NOW = 1_780_000_000


def post(url: str, data: bytes):
    req = urllib.request.Request(url + "/add-checkpoint", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read().decode()


@pytest.fixture
def setup(tmp_path):
    log = FakeLog()
    wkey = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    srv = WitnessServer(wkey, {ORIGIN: [log.signer.verifier]}, tmp_path / "state", clock=lambda: NOW)
    (tmp_path / "state").mkdir()
    srv.start()
    yield log, wkey, srv
    srv.stop()


def _cosigned(log: FakeLog, wkey: note.Signer, text: str, line: str) -> int:
    _, sigs = note.split_note(text + "\n" + line)
    assert len(sigs) == 1
    return note.verify_cosignature(text, sigs[0], wkey.verifier)


def test_cosigns_a_first_checkpoint_and_a_consistent_extension(setup):
    log, wkey, srv = setup
    log.append(3)
    status, ctype, answer = post(srv.url, body(0, [], log.sign()))
    assert status == 200 and ctype.startswith("text/plain")
    assert answer.startswith("\u2014 witness.example/w1 ") and answer.endswith("\n")
    assert _cosigned(log, wkey, log.checkpoint_text(), answer) == NOW
    log.append(4)
    status, _, answer = post(srv.url, body(3, log.consistency_proof(3, 7), log.sign()))
    assert status == 200
    assert _cosigned(log, wkey, log.checkpoint_text(), answer) == NOW
    # The same checkpoint again is consistent with itself: cosigned again.
    assert post(srv.url, body(7, [], log.sign()))[0] == 200
    # The cosignature is for this checkpoint only.
    with pytest.raises(note.NoteError):
        _cosigned(log, wkey, log.checkpoint_text(3), answer)


def test_refuses_a_rolled_back_history(setup, tmp_path):
    log, _, srv = setup
    log.append(7)
    assert post(srv.url, body(0, [], log.sign()))[0] == 200
    smaller = log.sign(5)  # validly signed by the log, but behind what the witness cosigned
    assert post(srv.url, body(7, [], smaller))[0] == 400  # old size > checkpoint size
    status, ctype, answer = post(srv.url, body(5, [], smaller))
    assert (status, ctype, answer) == (409, "text/x.tlog.size", "7\n")
    status, ctype, answer = post(srv.url, body(0, [], smaller))
    assert (status, ctype, answer) == (409, "text/x.tlog.size", "7\n")
    refused = [json.loads(x) for x in (tmp_path / "state" / "refused.log").read_text().splitlines()]
    assert [r["status"] for r in refused] == [409, 409]
    assert refused[0]["request"].endswith(smaller)  # the log's own signed evidence is kept


def test_refuses_a_forked_history(setup, tmp_path):
    log, _, srv = setup
    log.append(7)
    assert post(srv.url, body(0, [], log.sign()))[0] == 200
    # The host rewrites history: same key, different leaves, a proof of its own fork.
    fork = FakeLog(log.signer, salt=b"rewritten")
    fork.append(9)
    status, _, answer = post(srv.url, body(7, fork.consistency_proof(7, 9), fork.sign()))
    assert status == 422 and "inconsistent" in answer
    # Same size, another root: a split view.
    status, _, _ = post(srv.url, body(7, [], fork.sign(7)))
    assert status == 422
    # A proof of the real history does not carry the fork's root either.
    log.append(2)
    status, _, _ = post(srv.url, body(7, log.consistency_proof(7, 9), fork.sign()))
    assert status == 422
    # ... and the honest extension still goes through: nothing was recorded from the fork.
    assert post(srv.url, body(7, log.consistency_proof(7, 9), log.sign()))[0] == 200
    refused = (tmp_path / "state" / "refused.log").read_text().splitlines()
    assert len(refused) == 3 and all(json.loads(x)["status"] == 422 for x in refused)


def test_remembers_across_a_restart(setup, tmp_path):
    log, wkey, srv = setup
    log.append(5)
    assert post(srv.url, body(0, [], log.sign()))[0] == 200
    srv.stop()
    srv.start()  # a new Witness over the same state directory
    assert post(srv.url, body(0, [], log.sign()))[:3:2] == (409, "5\n")
    fork = FakeLog(log.signer, salt=b"x")
    fork.append(5)
    assert post(srv.url, body(5, [], fork.sign()))[0] == 422
    log.append(1)
    assert post(srv.url, body(5, log.consistency_proof(5, 6), log.sign()))[0] == 200
    # The monitoring API serves it with the log's signature and the witness's cosignature.
    with urllib.request.urlopen(f"{srv.url}/{origin_hash(ORIGIN)}/checkpoint", timeout=30) as resp:
        latest = resp.read().decode()
    assert note.verify_note(latest, log.signer.verifier) == log.checkpoint_text()
    _, sigs = note.split_note(latest)
    assert note.verify_cosignature(log.checkpoint_text(), sigs[-1], wkey.verifier) == NOW


def test_a_state_file_that_does_not_parse_stops_the_witness(tmp_path):
    log = FakeLog()
    wkey = note.Signer.generate("w", note.ALG_COSIGNATURE_V1)
    (tmp_path / f"{origin_hash(ORIGIN)}.json").write_text("garbage\n")
    with pytest.raises(ValueError, match="unusable"):
        Witness(wkey, {ORIGIN: [log.signer.verifier]}, tmp_path)


@pytest.mark.parametrize("make, status", [
    (lambda log, other: body(0, [], other.sign()), 404),  # unknown origin
    (lambda log, other: body(0, [], note.sign_note(log.checkpoint_text(), note.Signer.generate(ORIGIN))), 403),
    (lambda log, other: body(0, [], log.sign().replace(log.checkpoint_text(), log.checkpoint_text(2))), 403),
    (lambda log, other: b"old 01\n\n" + log.sign().encode(), 400),
    (lambda log, other: b"old 0\n" + log.sign().encode(), 400),  # no blank line
    (lambda log, other: body(0, [b"\x00" * 32] * 64, log.sign()), 400),
    (lambda log, other: b"old 0\nnot base64!\n\n" + log.sign().encode(), 400),
    (lambda log, other: body(0, [], log.checkpoint_text()), 400),  # not a signed note
    (lambda log, other: b"\xff\xfe", 400),
    (lambda log, other: body(0, [b"\x01" * 32], log.sign()), 422),  # a proof from size 0
    (lambda log, other: body(0, [], note.sign_note(note.Checkpoint(ORIGIN, 0, b"\x00" * 32).text(),
                                                   log.signer)), 422),
])
def test_malformed_or_untrusted_requests(setup, make, status):
    log, _, srv = setup
    log.append(3)
    other = FakeLog(origin="other.example/log")
    other.append(1)
    assert post(srv.url, make(log, other))[0] == status


def test_empty_tree_and_unknown_signatures_are_fine(setup):
    log, wkey, srv = setup
    empty = note.sign_note(log.checkpoint_text(0), note.Signer.generate("someone.else"), log.signer)
    status, _, answer = post(srv.url, body(0, [], empty))
    assert status == 200 and _cosigned(log, wkey, log.checkpoint_text(0), answer) == NOW


def test_interop_real_ct_log_checkpoint_and_public_witness_cosignature(tmp_path):
    # A checkpoint of Google's arche2025h1 staging CT log (a Tessera log) with
    # the cosignatures public witnesses returned, from florolf/tlog-scales
    # tests/test_signing.py; remora.n621.de's key is also in
    # transparency-dev/formats note/note_cosigv1_test.go.
    real = (REPO / "tests" / "fixtures" / "tlog" / "arche2025h1-cosigned.checkpoint").read_text()
    log_key = note.parse_verifier("arche2025h1.staging.ct.transparency.dev+ba2f06c0+"
                                  "AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f")
    remora = note.parse_verifier("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    text, sigs = note.split_note(real)
    (sig,) = [s for s in sigs if s.name == remora.name]
    assert note.verify_cosignature(text, sig, remora) == 1779573024
    with pytest.raises(note.NoteError):
        note.verify_cosignature(text.replace("1432088532", "1432088533"), sig, remora)
    # Our witness takes the real log's note (seven signature lines of four
    # kinds, only one by the trusted key) and cosigns it.
    wkey = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    w = Witness(wkey, {"arche2025h1.staging.ct.transparency.dev": [log_key]}, tmp_path, clock=lambda: NOW)
    line = w.add_checkpoint(body(0, [], real))
    assert note.verify_cosignature(text, note.split_note(text + "\n" + line)[1][0], wkey.verifier) == NOW
    with pytest.raises(WitnessError) as exc:
        w.add_checkpoint(body(0, [], real))
    assert exc.value.status == 409 and exc.value.body == "1432088532\n"


def test_a_go_note_ed25519_key_works_as_the_witness_key(tmp_path):
    # Go witnesses keep note.GenerateKey keys (type 0x01) and cosign with the
    # same Ed25519 key under a 0x04 key id (formats' NewSignerForCosignatureV1).
    plain = note.Signer.generate("witness.example/go")
    log = FakeLog()
    log.append(1)
    w = Witness(plain, {ORIGIN: [log.signer.verifier]}, tmp_path, clock=lambda: NOW)
    line = w.add_checkpoint(body(0, [], log.sign()))
    cosig_key = note.Verifier(plain.name, note.ALG_COSIGNATURE_V1, plain.verifier.public)
    assert _cosigned(log, note.Signer(plain.name, note.ALG_COSIGNATURE_V1, plain.seed), log.checkpoint_text(), line) == NOW
    assert cosig_key.id != plain.verifier.id


def test_cli_init_key_then_serve(tmp_path):
    key = tmp_path / "w" / "signing.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
    cmd = [sys.executable, "-m", "exporter", "witness"]
    init = subprocess.run(cmd + ["--init-key", "--key-file", str(key), "--name", "witness.example/cli"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    pub = (tmp_path / "w" / "signing.pub").read_text().strip()
    assert init.stdout.strip() == pub and note.parse_verifier(pub).alg == note.ALG_COSIGNATURE_V1
    assert key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(cmd + ["--init-key", "--key-file", str(key)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites a witness key
    log = FakeLog()
    log.append(2)
    env["VLLM_AUDIT_LOG_KEY"] = f"{ORIGIN}={log.signer.verifier.text()}\nother.example+00000000+" \
        + base64.b64encode(b"\x01" + b"\x00" * 32).decode()
    bad = subprocess.run(cmd + ["--key-file", str(key), "--state-dir", str(tmp_path / "s")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--log-key" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    env["VLLM_AUDIT_LOG_KEY"] = f"{ORIGIN}={log.signer.verifier.text()}"
    proc = subprocess.Popen(cmd + ["--key-file", str(key), "--state-dir", str(tmp_path / "s"),
                                   "--listen", "127.0.0.1:0"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stderr.readline()  # blocks until the server is bound
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        status, _, answer = post(url, body(0, [], log.sign()))
        assert status == 200
        _, sigs = note.split_note(log.checkpoint_text() + "\n" + answer)
        note.verify_cosignature(log.checkpoint_text(), sigs[0], note.parse_verifier(pub))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert (tmp_path / "s" / f"{origin_hash(ORIGIN)}.json").exists()


def test_follows_the_logs_certified_key_epochs(tmp_path):
    # exporter.transparency.keys: the first checkpoint of a day is signed by the
    # old key and a new one it names; later ones by the new key only.
    day1 = note.Signer.generate("audit.example-vllm-audit")
    day2 = note.Signer.generate("audit.example-vllm-audit")
    log = FakeLog(day1)
    wkey = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    w = Witness(wkey, {ORIGIN: [day1.verifier]}, tmp_path, clock=lambda: NOW)
    log.append(2)
    w.add_checkpoint(body(0, [], log.sign()))

    def signed(size, *signers, ext=()):
        cp = note.Checkpoint(ORIGIN, size, merkle.root(log.hashes[:size]), tuple(ext))
        return note.sign_note(cp.text(), *signers)
    log.append(1)
    with pytest.raises(WitnessError) as exc:  # not yet certified
        w.add_checkpoint(body(2, log.consistency_proof(2, 3), signed(3, day2)))
    assert exc.value.status == 403
    rotation = signed(3, day1, day2, ext=[f"vllm-audit-epoch 2026-12-03 {day2.verifier.text()}"])
    w.add_checkpoint(body(2, log.consistency_proof(2, 3), rotation))
    log.append(1)
    w.add_checkpoint(body(3, log.consistency_proof(3, 4), signed(4, day2)))
    # Remembered across a restart; a key named without its signature is not learnt.
    w = Witness(wkey, {ORIGIN: [day1.verifier]}, tmp_path, clock=lambda: NOW)
    log.append(1)
    day3 = note.Signer.generate("audit.example-vllm-audit")
    w.add_checkpoint(body(4, log.consistency_proof(4, 5),
                          signed(5, day2, ext=[f"vllm-audit-epoch 2026-12-04 {day3.verifier.text()}"])))
    log.append(1)
    with pytest.raises(WitnessError) as exc:
        w.add_checkpoint(body(5, log.consistency_proof(5, 6), signed(6, day3)))
    assert exc.value.status == 403
    assert w.add_checkpoint(body(5, log.consistency_proof(5, 6), signed(6, day2)))


@pytest.mark.parametrize("argv, named", [
    (["witness"], "--key-file"),
    (["witness", "--key-file", "/nonexistent/witness.key", "--state-dir", "S", "--log-key", "LOG"], "--key-file"),
    (["witness", "--key-file", "KEY", "--log-key", "LOG"], "--state-dir"),
    (["witness", "--key-file", "KEY", "--state-dir", "S"], "--log-key"),
    (["witness", "--key-file", "KEY", "--state-dir", "S", "--log-key", "WITNESSKEY"], "--log-key"),
    (["witness", "--key-file", "LOG", "--state-dir", "S", "--log-key", "LOG"], "--key-file"),  # a verifier, not a key
    (["witness", "--key-file", "KEY", "--state-dir", "S", "--log-key", "LOG", "--listen", "7380"], "--listen"),
    (["witness", "--key-file", "KEY", "--state-dir", "FILE", "--log-key", "LOG"], "--state-dir"),
])
def test_bad_witness_configuration_is_one_line_exit_2(tmp_path, argv, named):
    wkey = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    (tmp_path / "key").write_text(wkey.text() + "\n")
    (tmp_path / "log.pub").write_text(FakeLog().signer.verifier.text() + "\n")
    (tmp_path / "file").write_text("x")
    subst = {"KEY": str(tmp_path / "key"), "LOG": FakeLog().signer.verifier.text(), "S": str(tmp_path / "s"),
             "WITNESSKEY": wkey.verifier.text(), "FILE": str(tmp_path / "file")}
    argv = [subst.get(a, a) for a in argv]
    if "--key-file" in argv and argv[argv.index("--key-file") + 1] == subst["LOG"]:
        argv[argv.index("--key-file") + 1] = str(tmp_path / "log.pub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr


# -- whatever the key holder sends, the cosigned checkpoints form one history --


@hsettings(max_examples=examples(60), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["honest", "fork", "stale", "lie"]), st.integers(0, 12),
                          st.integers(0, 20)), min_size=1, max_size=12))
def test_no_two_cosigned_checkpoints_are_inconsistent(tmp_path_factory, steps):
    # The attacker holds the log's key: it signs the honest tree, a rewritten
    # one, and any old size and proof it likes. Every cosigned checkpoint must
    # be a prefix of every later one (the witness's only promise).
    honest = FakeLog()
    honest.append(40)
    forged = FakeLog(honest.signer, salt=b"rewritten")
    forged.append(40)
    w = Witness(note.Signer.generate("w", note.ALG_COSIGNATURE_V1), {ORIGIN: [honest.signer.verifier]},
                tmp_path_factory.mktemp("w"), clock=lambda: NOW)
    cosigned: list[tuple[int, bytes, FakeLog]] = []
    for kind, grow, old_pick in steps:
        seen = cosigned[-1][0] if cosigned else 0
        tree = forged if kind == "fork" else honest
        size = min(40, seen + grow) if kind != "stale" else max(0, seen - grow)
        old = seen if kind in ("honest", "fork") else min(old_pick, size)
        proof = tree.consistency_proof(old, size) if kind != "lie" else honest.consistency_proof(min(old, size), size)[::-1]
        try:
            w.add_checkpoint(body(old, proof, tree.sign(size)))
        except WitnessError as exc:
            assert exc.status in (400, 409, 422)
            continue
        cosigned.append((size, merkle.root(tree.hashes[:size]), tree))
    for (a, ra, _), (b, rb, tb) in zip(cosigned, cosigned[1:]):
        assert a <= b
        merkle.verify_consistency(a, b, ra, rb, tb.consistency_proof(a, b))


def test_concurrent_submissions_never_roll_the_state_back(tmp_path, monkeypatch):
    import exporter.transparency.witness as wmod
    real_write = wmod.write_atomic

    def slow_write(path, data, *a, **kw):  # widen the check-to-persist window the spec warns about
        threading.Event().wait(0.002)
        real_write(path, data, *a, **kw)
    monkeypatch.setattr(wmod, "write_atomic", slow_write)
    log = FakeLog()
    log.append(200)
    w = Witness(note.Signer.generate("w", note.ALG_COSIGNATURE_V1), {ORIGIN: [log.signer.verifier]}, tmp_path,
                clock=lambda: NOW)
    done, errors, lock = [], [], threading.Lock()

    def client(seed: int):
        try:
            submit(seed)
        except BaseException as exc:  # noqa: BLE001 (reported below, not lost in the thread)
            errors.append(exc)

    def submit(seed: int):
        for i in range(25):
            latest = w.latest(ORIGIN)
            seen = note.parse_checkpoint(note.split_note(latest)[0]).size if latest else 0
            size = min(200, seen + 1 + (seed * 7 + i) % 5)
            try:
                w.add_checkpoint(body(seen, log.consistency_proof(seen, size), log.sign(size)))
            except WitnessError as exc:
                assert exc.status == 409  # someone else moved it first
                continue
            with lock:
                done.append(size)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    final = note.parse_checkpoint(note.split_note(w.latest(ORIGIN))[0]).size
    assert done and final == max(done)
    reloaded = Witness(w.signer, w.logs, tmp_path)
    assert note.parse_checkpoint(note.split_note(reloaded.latest(ORIGIN))[0]).size == final


def test_a_state_that_cannot_be_written_gives_no_cosignature(setup, tmp_path):
    log, _, srv = setup
    log.append(1)
    state = tmp_path / "state"
    state.chmod(0o500)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(state)], capture_output=True).returncode == 0
    try:
        if os.access(state, os.W_OK) and not immutable:
            pytest.fail("cannot make the state directory unwritable here (as root this needs chattr +i)")
        status, _, answer = post(srv.url, body(0, [], log.sign()))
        assert status == 503 and "persist" in answer
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(state)], check=True)
        state.chmod(0o750)
    assert post(srv.url, body(0, [], log.sign()))[0] == 200  # nothing was recorded meanwhile
