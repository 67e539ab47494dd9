"""WitnessPool against real witnesses over HTTP (exporter.transparency.witness):
cosignatures are kept and verify; a witness that is down, hung, ahead of the
log or lying costs a counter and a retry, never a blocked writer; it catches
up with the latest checkpoint when it comes back."""

from __future__ import annotations

import socket
import threading

from prometheus_client import CollectorRegistry

from exporter.transparency import note
from exporter.transparency.witness_client import WitnessPool
from tests.witness_helpers import ORIGIN, FakeLog, WitnessServer, eventually

NOW = 1_780_000_000


def value(reg, name, **labels) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def witness(tmp_path, log, name="witness.example/w1", port=0, state=None):
    key = note.Signer.generate(name, note.ALG_COSIGNATURE_V1)
    state = state or tmp_path / name.replace("/", "_")
    state.mkdir(exist_ok=True)
    srv = WitnessServer(key, {ORIGIN: [log.signer.verifier]}, state, clock=lambda: NOW)
    srv.port = port
    return key, srv


def pool_for(log, servers, reg, **kw):
    pool = WitnessPool([(srv.url, key.verifier) for key, srv in servers], log.consistency_proof,
                       log.add_cosignatures, reg, lambda: NOW + 7, initial_backoff=0.05, max_backoff=0.5, **kw)
    log.add_listener(pool.submit)
    return pool


def cosigned_by(log, text, key) -> int:
    lines = log.cosignatures.get(text, [])
    stamps = []
    for line in lines:
        (sig,) = note.split_note(text + "\n" + line)[1]
        if sig.name == key.name:
            stamps.append(note.verify_cosignature(text, sig, key.verifier))
    return len(stamps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_witnesses_cosign_each_latest_checkpoint(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    servers = [witness(tmp_path, log, f"witness.example/w{i}") for i in (1, 2)]
    for _, srv in servers:
        srv.start()
    pool = pool_for(log, servers, reg)
    try:
        for n in (3, 4, 1):
            log.append(n)
            log.sign()
            text = log.checkpoint_text()
            assert log.wait_for(lambda: all(cosigned_by(log, text, k) for k, _ in servers))
        for key, _ in servers:  # (the gauges follow the kept cosignature)
            assert eventually(lambda: value(reg, "vllm_audit_witness_cosigned_size", witness=key.name) == 8)
            assert value(reg, "vllm_audit_witness_cosigned_timestamp_seconds", witness=key.name) == NOW
            assert value(reg, "vllm_audit_witness_clock_skew_seconds", witness=key.name) == NOW - (NOW + 7)
            assert value(reg, "vllm_audit_witness_up", witness=key.name) == 1
            assert sum(value(reg, "vllm_audit_witness_failures_total", witness=key.name, reason=r)
                       for r in ("unreachable", "conflict", "rejected", "bad_response")) == 0
    finally:
        pool.close()
        for _, srv in servers:
            srv.stop()


def test_a_witness_that_is_down_loses_nothing_and_catches_up(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    key, srv = witness(tmp_path, log, port=free_port())  # nothing listens there yet
    pool = pool_for(log, [(key, srv)], reg)
    try:
        log.append(2)
        log.sign()
        assert eventually(lambda: value(reg, "vllm_audit_witness_failures_total",
                                        witness=key.name, reason="unreachable") >= 2)  # retried
        for _ in range(50):  # the writer goes on signing; nothing waits, nothing queues
            log.append(1)
            log.sign()
        assert value(reg, "vllm_audit_witness_up", witness=key.name) == 0 and not log.cosignatures
        srv.start()
        latest = log.checkpoint_text()
        assert log.wait_for(lambda: cosigned_by(log, latest, key) == 1)
        # Only the newest checkpoint was sent once it was back (latest wins):
        assert list(log.cosignatures) == [latest]
        assert srv.witness.latest(ORIGIN).startswith(latest)
        log.append(3)
        log.sign()
        assert log.wait_for(lambda: cosigned_by(log, log.checkpoint_text(), key) == 1)
        assert eventually(lambda: value(reg, "vllm_audit_witness_cosigned_size", witness=key.name) == 55)
    finally:
        pool.close()
        srv.stop()


def test_a_hung_witness_never_blocks_the_writer(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # accepts connections, never answers
    key = note.Signer.generate("witness.example/hung", note.ALG_COSIGNATURE_V1)
    pool = WitnessPool([(f"http://127.0.0.1:{hung.getsockname()[1]}", key.verifier)], log.consistency_proof,
                       log.add_cosignatures, reg, timeout=0.5, initial_backoff=0.05, max_backoff=0.2)
    try:
        log.append(1)
        pool.submit(log.sign())
        assert eventually(lambda: value(reg, "vllm_audit_witness_requests_total", witness=key.name) >= 1)
        done = threading.Event()

        def writer():
            for _ in range(200):
                log.append(1)
                pool.submit(log.sign())
            done.set()
        threading.Thread(target=writer, daemon=True).start()
        # 200 submissions finish while the worker sits in a request that never ends.
        assert done.wait(60)
        assert eventually(lambda: value(reg, "vllm_audit_witness_failures_total",
                                        witness=key.name, reason="timeout") >= 1)
    finally:
        pool.close(timeout=5)
        hung.close()


def test_a_restarted_client_resyncs_from_the_409_size(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    key, srv = witness(tmp_path, log)
    srv.start()
    try:
        first = pool_for(log, [(key, srv)], reg)
        log.append(5)
        log.sign()
        assert log.wait_for(lambda: cosigned_by(log, log.checkpoint_text(), key) == 1)
        first.close()
        log.listeners.clear()
        reg2 = CollectorRegistry()
        second = pool_for(log, [(key, srv)], reg2)  # knows nothing: asks with old 0, gets 409 "5"
        log.append(2)
        log.sign()
        assert log.wait_for(lambda: cosigned_by(log, log.checkpoint_text(), key) == 1)
        assert value(reg2, "vllm_audit_witness_requests_total", witness=key.name) == 2
        assert value(reg2, "vllm_audit_witness_failures_total", witness=key.name, reason="conflict") == 0
        second.close()
    finally:
        srv.stop()


def test_a_log_behind_its_witness_is_a_counted_conflict(tmp_path):
    # The host restored an older archive (or rewrote it): the witness has seen more.
    log, reg = FakeLog(), CollectorRegistry()
    key, srv = witness(tmp_path, log)
    srv.start()
    try:
        ahead = FakeLog(log.signer)
        ahead.append(10)
        p = pool_for(ahead, [(key, srv)], CollectorRegistry())
        ahead.sign()
        assert ahead.wait_for(lambda: cosigned_by(ahead, ahead.checkpoint_text(), key) == 1)
        p.close()
        pool = pool_for(log, [(key, srv)], reg)
        log.append(4)
        log.sign()
        assert eventually(lambda: value(reg, "vllm_audit_witness_failures_total",
                                        witness=key.name, reason="conflict") >= 2)
        assert not log.cosignatures
        pool.close()
    finally:
        srv.stop()


def test_a_witness_answering_with_another_key_is_not_believed(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    _, srv = witness(tmp_path, log, "witness.example/w1")
    srv.start()
    claimed = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)  # same name, other key
    pool = WitnessPool([(srv.url, claimed.verifier)], log.consistency_proof, log.add_cosignatures, reg,
                       initial_backoff=0.05, max_backoff=0.2)
    try:
        log.append(1)
        pool.submit(log.sign())
        assert eventually(lambda: value(reg, "vllm_audit_witness_failures_total",
                                        witness=claimed.name, reason="bad_response") >= 1)
        assert not log.cosignatures
    finally:
        pool.close()
        srv.stop()


def test_a_cosignature_that_cannot_be_kept_is_asked_for_again(tmp_path):
    log, reg = FakeLog(), CollectorRegistry()
    key, srv = witness(tmp_path, log)
    srv.start()
    fails = {"left": 2}

    def flaky_store(text, lines):
        if fails["left"]:
            fails["left"] -= 1
            raise OSError(28, "No space left on device")
        log.add_cosignatures(text, lines)
    pool = WitnessPool([(srv.url, key.verifier)], log.consistency_proof, flaky_store, reg,
                       initial_backoff=0.05, max_backoff=0.2)
    try:
        log.append(3)
        pool.submit(log.sign())
        assert log.wait_for(lambda: cosigned_by(log, log.checkpoint_text(), key) == 1)
        assert value(reg, "vllm_audit_witness_failures_total", witness=key.name, reason="store") == 2
        assert eventually(lambda: value(reg, "vllm_audit_witness_cosignatures_total", witness=key.name) == 1)
    finally:
        pool.close()
        srv.stop()


def test_a_key_epoch_checkpoint_is_not_skipped_while_a_witness_is_down(tmp_path):
    from exporter.transparency import merkle
    day1, day2 = note.Signer.generate("log-key"), note.Signer.generate("log-key")
    log, reg = FakeLog(day1), CollectorRegistry()
    key, srv = witness(tmp_path, log, port=free_port())  # trusts day1 only, down for now
    pool = pool_for(log, [(key, srv)], reg)
    try:
        log.append(2)
        log.sign()
        assert eventually(lambda: value(reg, "vllm_audit_witness_failures_total",
                                        witness=key.name, reason="unreachable") >= 1)
        log.append(1)
        ext = (f"vllm-audit-epoch 2026-12-03 {day2.verifier.text()}",)
        rotation = note.Checkpoint(ORIGIN, 3, merkle.root(log.hashes), ext).text()
        pool.submit(note.sign_note(rotation, day1, day2))
        log.signer = day2  # the old key is erased: from now on only day2 signs
        for _ in range(5):
            log.append(1)
            log.sign()
        srv.start()
        latest = log.checkpoint_text()
        assert log.wait_for(lambda: cosigned_by(log, latest, key) == 1)
        assert cosigned_by(log, rotation, key) == 1  # delivered first, so the witness learnt day2
        assert value(reg, "vllm_audit_witness_failures_total", witness=key.name, reason="rejected") == 0
    finally:
        pool.close()
        srv.stop()
