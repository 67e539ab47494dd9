"""RFC 3161 timestamps over checkpoints against a local TSA built on
``openssl ts -reply`` (tests/tsa_server.py): a token verifies for its
checkpoint and for nothing else, a TSA outage is counted and loses nothing,
and the newest checkpoint is stamped once the TSA is back."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from exporter.transparency import tsa
from tests.witness_helpers import FakeLog
from tests.tsa_server import LocalTsa, make_ca
from tests.witness_helpers import eventually



@pytest.fixture(scope="module")
def local_tsa(tmp_path_factory):
    server = LocalTsa(tmp_path_factory.mktemp("tsa")).start()
    yield server
    server.stop()


def test_a_token_over_a_checkpoint_verifies_and_fails_for_other_data(local_tsa, tmp_path):
    log = FakeLog()
    log.append(4)
    data = log.checkpoint_text().encode()
    before = int(time.time())
    token = tsa.request_token(local_tsa.url, data, ca_file=local_tsa.ca_file)
    after = time.time()
    assert token[:1] == b"\x30"  # DER SEQUENCE (a CMS ContentInfo), not PEM or a whole response
    stamp = tsa.verify_token(token, data, local_tsa.ca_file)
    assert before - 1 <= stamp <= after + 1  # the TSA's clock, this machine's clock, 1 s accuracy
    assert tsa.verify_token(token, data, local_tsa.tsa_cert) == stamp  # pinned TSA certificate
    log.append(1)
    with pytest.raises(tsa.TsaError):
        tsa.verify_token(token, log.checkpoint_text().encode(), local_tsa.ca_file)
    with pytest.raises(tsa.TsaError):
        tsa.verify_token(token, data + b" ", local_tsa.ca_file)
    make_ca(tmp_path / "other", "Another TSA")
    with pytest.raises(tsa.TsaError):
        tsa.verify_token(token, data, str(tmp_path / "other" / "ca.pem"))
    tampered = bytearray(token)
    tampered[-10] ^= 0x01  # inside the signature
    with pytest.raises(tsa.TsaError):
        tsa.verify_token(bytes(tampered), data, local_tsa.ca_file)
    # Without a trust anchor the client still checks the token against its request.
    assert tsa.verify_token(tsa.request_token(local_tsa.url, data), data, local_tsa.ca_file) >= stamp


def test_a_token_from_another_tsa_is_refused_on_receipt(local_tsa, tmp_path):
    make_ca(tmp_path / "other", "Another TSA")
    with pytest.raises(tsa.TsaError):
        tsa.request_token(local_tsa.url, b"x\n", ca_file=str(tmp_path / "other" / "ca.pem"))


def test_outage_is_counted_and_the_newest_checkpoint_is_stamped_when_back(tmp_path):
    server = LocalTsa(tmp_path / "tsa").start()
    server.stop()  # down, on a known port
    log, reg = FakeLog(), CollectorRegistry()
    stamper = tsa.TsaStamper(server.url, log.add_timestamp, reg, interval=3600, ca_file=server.ca_file,
                             initial_backoff=0.05, max_backoff=0.3)
    log.add_listener(stamper.submit)
    try:
        log.append(2)
        log.sign()
        assert eventually(lambda: (reg.get_sample_value("vllm_audit_tsa_failures_total",
                                                        {"reason": "unreachable"}) or 0) >= 2)
        for _ in range(20):
            log.append(1)
            log.sign()
        assert not log.timestamps
        server.start()
        latest = log.checkpoint_text()
        assert log.wait_for(lambda: latest in log.timestamps)
        assert list(log.timestamps) == [latest]  # latest wins: one token, over the newest
        (token,) = log.timestamps[latest]
        assert tsa.verify_token(token, latest.encode(), server.ca_file) > 0
        assert eventually(lambda: reg.get_sample_value("vllm_audit_tsa_tokens_total") == 1)
        assert reg.get_sample_value("vllm_audit_tsa_last_timestamp_seconds") == tsa.token_time(token)
    finally:
        stamper.close()
        server.stop()


def test_at_most_one_token_per_interval(local_tsa):
    now = [1000.0]
    log, reg = FakeLog(), CollectorRegistry()
    stamper = tsa.TsaStamper(local_tsa.url, log.add_timestamp, reg, interval=3600, ca_file=local_tsa.ca_file,
                             monotonic=lambda: now[0], initial_backoff=0.05)
    log.add_listener(stamper.submit)
    try:
        log.append(1)
        log.sign()
        assert log.wait_for(lambda: len(log.timestamps) == 1)
        assert eventually(lambda: not stamper.pending())
        for _ in range(10):  # heartbeats within the hour: no new token
            log.append(1)
            log.sign()
        now[0] += 3600
        log.append(1)
        log.sign()
        latest = log.checkpoint_text()
        assert log.wait_for(lambda: latest in log.timestamps)
        assert len(log.timestamps) == 2
        assert reg.get_sample_value("vllm_audit_tsa_requests_total") == 2
    finally:
        stamper.close()
