"""Compliance features over the local audit archive.

``detect`` (PII/secret/injection detectors), ``policy`` (what content goes to
which destination), ``verify`` (chain check), ``export`` (CSV/JSONL
extracts), ``retention`` (gzip/delete old days). They read the archive
through :mod:`exporter.archive` (its layout and manifests live there).

Kept free of imports so importing one submodule stays cheap.
"""
