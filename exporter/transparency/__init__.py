"""A transparency log over the audit archive: RFC 9162 Merkle tree, C2SP
signed checkpoints, witness cosignatures, per-record proofs.

``merkle`` and ``note`` are pure (no I/O) and need only public keys to
verify, so an auditor can check everything without any secret of the host.
"""
