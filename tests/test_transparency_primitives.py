"""RFC 9162 hashing/proofs and C2SP signed notes against published vectors.

The vectors are other implementations' (Certificate Transparency's Merkle
test data; golang.org/x/mod/sumdb/note's example note), so these tests pin
the formats to what third-party verifiers accept, not to our own output.
"""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, strategies as st

from exporter.transparency import merkle as m
from exporter.transparency import note

# Leaves and roots of Certificate Transparency's merkle tree tests
# (google/certificate-transparency, merkle_tree_test.cc; also in RFC 6962 test suites).
CT_LEAVES = [bytes.fromhex(x) for x in [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f"]]
CT_ROOTS = [bytes.fromhex(x) for x in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]]


def test_roots_match_certificate_transparency_vectors():
    hashes = [m.leaf_hash(x) for x in CT_LEAVES]
    frontier = m.Frontier()
    for n, want in enumerate(CT_ROOTS, start=1):
        assert m.root(hashes[:n]) == want
        frontier.append(hashes[n - 1])
        assert frontier.root() == want
    assert m.root([]) == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_published_consistency_proof_verifies():
    # CT's vector: consistency from size 2 to 5 is two nodes (merkle_tree_test.cc).
    proof = [bytes.fromhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
             bytes.fromhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]
    hashes = [m.leaf_hash(x) for x in CT_LEAVES]
    assert m.consistency_proof(2, 5, m.list_range_root(hashes)) == proof
    m.verify_consistency(2, 5, CT_ROOTS[1], CT_ROOTS[4], proof)
    with pytest.raises(m.ProofError):
        m.verify_consistency(2, 5, CT_ROOTS[1], CT_ROOTS[5], proof)


@given(st.integers(1, 40), st.data())
def test_every_proof_verifies_and_no_tampered_one_does(n, data):
    hashes = [m.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    rr = m.list_range_root(hashes)
    top = m.root(hashes)
    i = data.draw(st.integers(0, n - 1))
    proof = m.inclusion_proof(i, n, rr)
    m.verify_inclusion(i, n, hashes[i], proof, top)
    with pytest.raises(m.ProofError):
        m.verify_inclusion(i, n, m.leaf_hash(b"other"), proof, top)
    if proof:
        bad = list(proof)
        bad[data.draw(st.integers(0, len(bad) - 1))] = os.urandom(32)
        with pytest.raises(m.ProofError):
            m.verify_inclusion(i, n, hashes[i], bad, top)
    old = data.draw(st.integers(0, n))
    cproof = m.consistency_proof(old, n, rr)
    m.verify_consistency(old, n, m.root(hashes[:old]), top, cproof)
    if 0 < old < n:
        with pytest.raises(m.ProofError):  # a rewritten history is not consistent
            m.verify_consistency(old, n, m.leaf_hash(b"forged"), top, cproof)


GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_signed_note_matches_go_sumdb_note_byte_for_byte():
    signer = note.parse_signer(GO_SKEY)
    assert signer.verifier.text() == GO_VKEY
    assert note.sign_note(GO_TEXT, signer) == GO_NOTE
    assert note.verify_note(GO_NOTE, note.parse_verifier(GO_VKEY)) == GO_TEXT


def test_note_with_any_changed_byte_fails():
    v = note.parse_verifier(GO_VKEY)
    for i in range(len(GO_TEXT)):
        tampered = GO_NOTE[:i] + chr(ord(GO_NOTE[i]) ^ 1) + GO_NOTE[i + 1:]
        with pytest.raises(note.NoteError):
            note.verify_note(tampered, v)


def test_verifier_key_with_wrong_id_is_refused():
    with pytest.raises(note.NoteError):
        note.parse_verifier(GO_VKEY.replace("c74f20a3", "c74f20a4"))


def test_checkpoint_round_trip_and_cosignature():
    cp = note.Checkpoint("audit.example/vllm-1", 8, CT_ROOTS[7])
    assert cp.text() == "audit.example/vllm-1\n8\n" + base64.b64encode(CT_ROOTS[7]).decode() + "\n"
    assert note.parse_checkpoint(cp.text()) == cp
    witness = note.Signer.generate("witness.example", note.ALG_COSIGNATURE_V1)
    sig = note.cosign(cp.text(), witness, 1_700_000_000)
    assert note.verify_cosignature(cp.text(), sig, witness.verifier) == 1_700_000_000
    other = note.Checkpoint("audit.example/vllm-1", 8, CT_ROOTS[6]).text()
    with pytest.raises(note.NoteError):
        note.verify_cosignature(other, sig, witness.verifier)


def test_verifier_key_whose_base64_holds_a_plus():
    # transparency-dev/formats note tests: a 0x01 key whose base64 contains '+'.
    v = note.parse_verifier("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert v.name == "TEST" and v.alg == note.ALG_ED25519
