"""Optional C accelerator of the log parser (exporter/parse/_scan.c).

Everything else about the package is in pyproject.toml. ``optional=True``:
where no compiler (or no Python headers) exists, the build of the extension
fails quietly and the install goes on; the parser then runs its pure-Python
path, which is the reference and always kept (README, "Parser fast path").
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("exporter.parse._scan", ["exporter/parse/_scan.c"], optional=True,
                             extra_compile_args=["-O2"])])
