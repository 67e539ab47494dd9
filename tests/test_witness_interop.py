"""Our witness's cosignatures and our logs' checkpoints, read by an
independent implementation: tlog-scales (florolf/tlog-scales, PyPI), a
C2SP signed-note / tlog-checkpoint / tlog-cosignature verifier written
without this project's code. (A real CT log's checkpoint with a real public
witness's cosignature, read by our code, is in test_witness.py.)"""

from __future__ import annotations

import dataclasses

import pytest
from tlog_scales.signing import Vkey
from tlog_scales.tlog import Checkpoint as TsCheckpoint, ConsistencyProof, ConsistencyProofInvalid

from exporter.transparency import note
from exporter.transparency.witness import Witness
from tests.witness_helpers import ORIGIN, FakeLog, body


def test_tlog_scales_verifies_our_log_signature_and_witness_cosignature(tmp_path):
    log = FakeLog()
    wkey = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    w = Witness(wkey, {ORIGIN: [log.signer.verifier]}, tmp_path, clock=lambda: 1_780_000_000)
    log.append(5)
    signed = log.sign()
    cosigned = signed + w.add_checkpoint(body(0, [], signed))
    cp = TsCheckpoint.from_text(cosigned)
    assert (cp.origin, cp.size, cp.root_hash) == (ORIGIN, 5, note.parse_checkpoint(log.checkpoint_text()).root)
    cp.verify(Vkey.from_string(log.signer.verifier.text()))
    cp.verify(Vkey.from_string(wkey.verifier.text()))
    assert Vkey.from_string(wkey.verifier.text()).key_id == int.from_bytes(wkey.verifier.id, "big")
    with pytest.raises(Exception):  # the cosignature is over this size only
        dataclasses.replace(cp, size=6).verify(Vkey.from_string(wkey.verifier.text()))


def test_tlog_scales_accepts_the_consistency_proofs_the_pool_sends():
    log = FakeLog()
    log.append(37)
    for old, new in ((1, 2), (3, 7), (8, 16), (5, 37), (36, 37)):
        proof = log.consistency_proof(old, new)
        old_root = note.parse_checkpoint(log.checkpoint_text(old)).root
        new_root = note.parse_checkpoint(log.checkpoint_text(new)).root
        ConsistencyProof(old, new, proof).check(old_root, new_root)
        with pytest.raises(ConsistencyProofInvalid):
            ConsistencyProof(old, new, proof).check(old_root, old_root if old != new else b"\x00" * 32)
