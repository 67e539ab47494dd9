"""Compliance features over the local audit archive.

``detect`` (PII/secret/injection detectors), ``policy`` (what content goes to
which destination), ``manifest`` (per-day seals), ``verify`` (chain check),
``export`` (CSV/JSONL extracts), ``retention`` (gzip/delete old days),
``files`` (archive naming and I/O helpers).

Kept free of imports so importing one submodule stays cheap.
"""
