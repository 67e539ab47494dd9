"""--witness / --tsa-* settings (flags and VLLM_AUDIT_* env) and their wiring
onto a log's hooks (exporter.transparency.publish): one readable error for
bad values; a configured witness and TSA receive the checkpoints the log
signs and give back cosignatures and tokens that verify."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from exporter.cli import make_parser
from exporter.settings import SettingsError, build, split_key
from exporter.transparency import note, tsa
from exporter.transparency.publish import attach
from tests.witness_helpers import ORIGIN, FakeLog, WitnessServer
from tests.tsa_server import LocalTsa

W1 = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
W2 = note.Signer.generate("witness.example/w,2", note.ALG_COSIGNATURE_V1)


def settings(argv, env=None, tmp=None):
    ns = make_parser().parse_args(["replay", __file__, "--archive-dir", str(tmp or "/tmp/x"), *argv])
    return build("replay", ns, env or {})


def test_witness_flags_and_env(tmp_path):
    s = settings(["--witness", f"https://w1.example/prefix?a=b={W1.verifier.text()}"], tmp=tmp_path)
    assert s.witnesses == (("https://w1.example/prefix?a=b", W1.verifier),)
    env = {"VLLM_AUDIT_WITNESS": f"http://w1:7380={W1.verifier.text()}\n  http://w2/={W2.verifier.text()} ",
           "VLLM_AUDIT_TSA_URL": "http://tsa.example/", "VLLM_AUDIT_TSA_INTERVAL": "600"}
    s = settings([], env, tmp_path)
    assert [(u, k.name) for u, k in s.witnesses] == [("http://w1:7380", W1.name), ("http://w2", W2.name)]
    assert (s.tsa_url, s.tsa_interval, s.tsa_ca_file) == ("http://tsa.example/", 600.0, None)
    assert split_key("a=b=" + W1.verifier.text(), "--x") == ("a=b", W1.verifier)


@pytest.mark.parametrize("argv, named", [
    (["--witness", "http://w1"], "--witness"),
    (["--witness", "w1:7380=" + W1.verifier.text()], "--witness"),
    (["--witness", "http://w1=" + note.Signer.generate("log").verifier.text()], "cosignature/v1"),
    (["--witness", "http://w1=" + W1.verifier.text(), "--witness", "http://w2=" + W1.verifier.text()], "two witnesses"),
    (["--witness", "http://w1=" + W1.verifier.text()[:-2] + "AA"], "--witness"),
    (["--witness-timeout", "0"], "--witness-timeout"),
    (["--tsa-url", "tsa.example"], "--tsa-url"),
    (["--tsa-interval", "-5"], "--tsa-interval"),
    (["--tsa-ca-file", "/nonexistent/ca.pem"], "--tsa-ca-file"),
])
def test_bad_values_are_one_line_naming_the_flag(tmp_path, argv, named):
    with pytest.raises(SettingsError, match=named.replace("?", r"\?")) as exc:
        settings(argv, tmp=tmp_path)
    assert "\n" not in str(exc.value)


def test_attach_sends_each_checkpoint_to_witnesses_and_the_tsa(tmp_path):
    log = FakeLog()
    (tmp_path / "w").mkdir()
    srv = WitnessServer(W1, {ORIGIN: [log.signer.verifier]}, tmp_path / "w").start()
    local = LocalTsa(tmp_path / "tsa").start()
    s = settings(["--witness", f"{srv.url}={W1.verifier.text()}", "--tsa-url", local.url,
                  "--tsa-ca-file", local.ca_file], tmp=tmp_path)
    reg = CollectorRegistry()
    pubs = attach(log, s, reg)
    try:
        log.append(3)
        log.sign()
        text = log.checkpoint_text()
        assert log.wait_for(lambda: text in log.cosignatures and text in log.timestamps)
        (sig,) = note.split_note(text + "\n" + log.cosignatures[text][0])[1]
        assert note.verify_cosignature(text, sig, W1.verifier) <= time.time() + 1
        assert tsa.verify_token(log.timestamps[text][0], text.encode(), local.ca_file) > 0
    finally:
        pubs.close()
        srv.stop()
        local.stop()
