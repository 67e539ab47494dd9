"""Optional C accelerators: the log parser (exporter/parse/_scan.c), the
transparency log's leaf (exporter/transparency/_leaf.c), the tailer's
line cutting (exporter/tail/_cut.c), the record's assembly without the
middleware (exporter/_assemble.c) and the request metrics' observe
(exporter/_observe.c).

Everything else about the package is in pyproject.toml. ``optional=True``:
where no compiler (or no Python headers) exists, the build of the extension
fails quietly and the install goes on; the parser then runs its pure-Python
path, which is the reference and always kept (README, "Parser fast path").
The source's SHA-256 is compiled in, so a checkout never runs a module
built from an older source (exporter/parse/fast.py).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
# One translation unit: _scan.c includes its _scan_*.h parts. The digest
# covers every part, in name order (exporter/parse/fast.py hashes the same).
PARTS = sorted((HERE / "exporter" / "parse").glob("_scan*.[ch]"), key=lambda p: p.name)
DIGEST = hashlib.sha256(b"".join(p.read_bytes() for p in PARTS)).hexdigest()

# The transparency log's leaf from an archive line (exporter/transparency/
# _leaf.c, OpenSSL's SHA-256; leaf_line.py is its pure-Python reference).
# One translation unit in parts, as _scan (leaf_line.py hashes the same).
LEAF_PARTS = sorted((HERE / "exporter" / "transparency").glob("_leaf*.[ch]"), key=lambda p: p.name)
LEAF_DIGEST = hashlib.sha256(b"".join(p.read_bytes() for p in LEAF_PARTS)).hexdigest()

# The tailer's bulk line cutting (exporter/tail/_cut.c; LineCutter._py_bulk in
# exporter/tail/lines.py is its pure-Python reference).
CUT_DIGEST = hashlib.sha256((HERE / "exporter" / "tail" / "_cut.c").read_bytes()).hexdigest()

# build_record's log-only case (exporter/_assemble.c; exporter/assemble.py's
# build_record is its pure-Python reference).
# One translation unit in parts, as _scan (assemble.py hashes the same).
ASSEMBLE_PARTS = sorted((HERE / "exporter").glob("_assemble*.[ch]"), key=lambda p: p.name)
ASSEMBLE_DIGEST = hashlib.sha256(b"".join(p.read_bytes() for p in ASSEMBLE_PARTS)).hexdigest()

# RequestMetrics.observe's common case (exporter/_observe.c; the Python
# observe in exporter/metrics.py is its reference).
OBSERVE_DIGEST = hashlib.sha256((HERE / "exporter" / "_observe.c").read_bytes()).hexdigest()

setup(ext_modules=[Extension("exporter.parse._scan", ["exporter/parse/_scan.c"], optional=True,
                             depends=[str(p.relative_to(HERE)) for p in PARTS if p.suffix == ".h"],
                             extra_compile_args=["-O2"], define_macros=[("SCAN_SOURCE_SHA256", f'"{DIGEST}"')]),
                   Extension("exporter.transparency._leaf", ["exporter/transparency/_leaf.c"], optional=True,
                             depends=[str(p.relative_to(HERE)) for p in LEAF_PARTS if p.suffix == ".h"],
                             libraries=["crypto"], extra_compile_args=["-O2", "-Wno-deprecated-declarations"],
                             define_macros=[("LEAF_SOURCE_SHA256", f'"{LEAF_DIGEST}"')]),
                   Extension("exporter.tail._cut", ["exporter/tail/_cut.c"], optional=True,
                             extra_compile_args=["-O2"], define_macros=[("CUT_SOURCE_SHA256", f'"{CUT_DIGEST}"')]),
                   Extension("exporter._assemble", ["exporter/_assemble.c"], optional=True,
                             depends=[str(p.relative_to(HERE)) for p in ASSEMBLE_PARTS if p.suffix == ".h"],
                             extra_compile_args=["-O2"],
                             define_macros=[("ASSEMBLE_SOURCE_SHA256", f'"{ASSEMBLE_DIGEST}"')]),
                   Extension("exporter._observe", ["exporter/_observe.c"], optional=True,
                             extra_compile_args=["-O2"], define_macros=[("OBSERVE_SOURCE_SHA256", f'"{OBSERVE_DIGEST}"')])])
