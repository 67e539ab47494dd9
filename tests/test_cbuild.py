"""Every optional C accelerator is built and current where a compiler
exists, and used unless ``VLLM_AUDIT_PURE_PYTHON`` switches it off; where no
compiler exists the pure-Python path runs alone."""

from __future__ import annotations

import importlib

import pytest

from cbuild import HAVE_CC
from exporter import accel

# the module that selects each extension, and the extension it loads
STAGES = {
    "exporter.parse.fast": "exporter/parse/_scan.c",
    "exporter.tail.lines": "exporter/tail/_cut.c",
    "exporter.transparency.leaf_line": "exporter/transparency/_leaf.c",
    "exporter.assemble": "exporter/_assemble.c",
    "exporter.metrics": "exporter/_observe.c",
}


@pytest.mark.parametrize("selector", sorted(STAGES))
def test_extension_is_built_where_a_compiler_exists(selector):
    module = importlib.import_module(selector)
    if HAVE_CC and not accel.forced_off():
        assert module.IMPLEMENTATION == "c", (
            f"a C compiler exists but {STAGES[selector]} is not built or is stale: "
            "python setup.py build_ext --inplace (or pip install -e .)")
    else:
        assert module.IMPLEMENTATION == "python"


def test_the_accelerator_list_is_complete():
    """accel's docstring and this table name the same extensions."""
    assert all(path in accel.__doc__ for path in STAGES.values())
