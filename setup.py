"""Optional C accelerator of the log parser (exporter/parse/_scan.c).

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

SOURCE = "exporter/parse/_scan.c"
DIGEST = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("exporter.parse._scan", [SOURCE], optional=True, extra_compile_args=["-O2"],
                             define_macros=[("SCAN_SOURCE_SHA256", f'"{DIGEST}"')])])
