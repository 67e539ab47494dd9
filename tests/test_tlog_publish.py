"""The signed log with its outside parties, end to end: a real `replay` of the
recorded vLLM capture with --signing-key-file, --witness (the C2SP witness
this project ships, on a local port) and --tsa-url (a local openssl TSA);
cosignatures and tokens land in the log's store and `verify --public-key
--witness-key --tsa-cert` checks them. A witness that is down loses no
record and blocks nothing; once it is back it cosigns the next checkpoint."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from exporter.archive.layout import list_checkpoint_files
from exporter.cli import main
from exporter.transparency import note
from exporter.transparency.store import read_entries
from tests.tsa_server import LocalTsa
from tests.witness_helpers import WitnessServer

CAPTURE = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"
ORIGIN = "example.org/audit"
WITNESS = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)


def _entries(archive: Path, kind: str) -> list[dict]:
    return [e for _, p in list_checkpoint_files(archive) for _, e, _ in read_entries(p) if e and e.get("kind") == kind]


def _wait(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _keys(tmp_path) -> tuple[Path, Path, note.Verifier]:
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--name", "audit-host"]) == 0
    (tmp_path / "witness.pub").write_text(WITNESS.verifier.text() + "\n")
    pub = tmp_path / "keys" / "signing.pub"
    return tmp_path / "keys" / "signing.key", tmp_path / "witness.pub", note.parse_verifier(pub.read_text())


def _replay(archive, key, *extra) -> int:
    return main(["replay", str(CAPTURE), "--archive-dir", str(archive), "--model", "tiny", "--no-progress",
                 "--signing-key-file", str(key), "--log-origin", ORIGIN, *extra])


def _verify(archive, tmp_path, capsys, *extra) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["verify", str(archive), "--public-key", str(tmp_path / "keys" / "signing.pub"),
                 "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_replay_with_a_witness_and_a_tsa_verifies_their_evidence(tmp_path, capsys):
    key, wpub, log_key = _keys(tmp_path)
    (tmp_path / "w").mkdir()
    srv = WitnessServer(WITNESS, {ORIGIN: [log_key]}, tmp_path / "w").start()
    tsa = LocalTsa(tmp_path / "tsa").start()
    archive = tmp_path / "archive"
    try:
        assert _replay(archive, key, "--witness", f"{srv.url}={WITNESS.verifier.text()}",
                       "--tsa-url", tsa.url) == 0
        final = note.split_note(_entries(archive, "checkpoint")[-1]["note"])[0]
        assert _wait(lambda: any(e["checkpoint"] == final for e in _entries(archive, "cosignatures")))
        assert _wait(lambda: _entries(archive, "timestamp"))
    finally:
        srv.stop()
        tsa.stop()
    code, report = _verify(archive, tmp_path, capsys, "--witness-key", str(wpub), "--tsa-cert", tsa.ca_file)
    assert code == 0, report["problems"]
    assert report["witnessed_size"] == report["records"] == 22
    assert report["witnesses"]["witness.example/w1"] >= 1 and report["timestamps"] >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_witness_outage_loses_no_record_and_is_caught_up_later(tmp_path, capsys):
    key, wpub, log_key = _keys(tmp_path)
    archive = tmp_path / "archive"
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    assert _replay(archive, key, "--witness", f"{down}={WITNESS.verifier.text()}", "--witness-timeout", "2") == 0
    assert time.monotonic() - start < 60  # bounded: the witness never held the replay
    code, report = _verify(archive, tmp_path, capsys)
    assert code == 0 and report["records"] == 22  # every record archived and signed
    code, report = _verify(archive, tmp_path, capsys, "--witness-key", str(wpub))
    assert code == 1 and report["problems"][0]["kind"] == "quorum"
    # The witness is back: the next run's checkpoints (heartbeats) are cosigned.
    (tmp_path / "w").mkdir()
    srv = WitnessServer(WITNESS, {ORIGIN: [log_key]}, tmp_path / "w").start()
    try:
        assert _replay(archive, key, "--witness", f"{srv.url}={WITNESS.verifier.text()}") == 0
        assert _wait(lambda: _entries(archive, "cosignatures"))
    finally:
        srv.stop()
    code, report = _verify(archive, tmp_path, capsys, "--witness-key", str(wpub))
    assert code == 0 and report["witnessed_size"] == 22, report["problems"]


def test_a_witness_without_a_signing_key_is_a_one_line_error(tmp_path, capsys):
    code = main(["replay", str(CAPTURE), "--archive-dir", str(tmp_path / "a"), "--no-progress",
                 "--witness", f"http://127.0.0.1:1={WITNESS.verifier.text()}"])
    assert code == 2 and "--witness: needs --signing-key-file" in capsys.readouterr().err
