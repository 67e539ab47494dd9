"""`import exporter` and the middleware stay light.

vLLM loads ``exporter.middleware`` into its own process from the repo with
only PYTHONPATH set; neither the package nor the middleware may import
anything outside the standard library (no FastAPI, prometheus_client, httpx,
transformers), and importing them must be quick.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("fastapi", "starlette", "uvicorn", "prometheus_client", "httpx", "transformers",
         "tokenizers", "torch", "pydantic", "yaml")


def _modules_after(statement: str) -> list[str]:
    code = ("import sys, json; before = set(sys.modules); " + statement +
            "; print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_import_exporter_pulls_nothing_heavy():
    loaded = _modules_after("import exporter")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], loaded


def test_middleware_imports_only_the_standard_library():
    loaded = _modules_after("import exporter.middleware")
    third_party = [m for m in loaded
                   if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "exporter"]
    assert third_party == [], third_party
    # ... and nothing of the exporter outside its own package and the shared
    # stdlib-only contract and the one secret-file reader (it runs in vLLM's
    # process, apart from the wings).
    ours = [m for m in loaded if m.split(".")[0] == "exporter"
            and m not in ("exporter", "exporter.middleware", "exporter.wire", "exporter.secrets")
            and not m.startswith("exporter.middleware.")]
    assert ours == [], ours
