"""Stand-in for the ``grafana/loki`` image's ``/usr/bin/loki`` in the stack runner.

No Loki binary runs here, so the runner puts this where the image's binary
would be. It takes the two command lines compose.yaml gives Loki:

- ``loki -config.file=FILE [-config.expand-env=true]``: reads
  ``server.http_listen_port`` from the real config (``${VAR:-default}``
  expanded like Loki's ``-config.expand-env``) and serves the strict Loki
  protocol test server (tests/loki_server.py: push validation, ``/ready``,
  the ``query_range`` API that ``export --source loki`` uses) on 0.0.0.0.
- ``loki -health``: what Loki >= 3.6.5 does, ``GET http://localhost:3100/ready``,
  exit 0 on 200, else 1.

What it cannot prove: Loki's own storage, compactor, retention, ruler and
the image's contents.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from loki_server import LokiServer  # noqa: E402


def expand_env(text: str) -> str:
    def one(m):
        name, default = m.group(1), m.group(3)
        value = os.environ.get(name)
        return value if value else (default or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", one, text)


def health() -> int:
    try:
        with urllib.request.urlopen("http://localhost:3100/ready", timeout=5) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"Loki is unhealthy: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    opts = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "true") for a in argv)
    if "health" in opts:
        return health()
    text = Path(opts["config.file"]).read_text()
    if opts.get("config.expand-env") == "true":
        text = expand_env(text)
    config = yaml.safe_load(text)
    loki = LokiServer()
    loki.host, loki.port = "0.0.0.0", int(config["server"]["http_listen_port"])
    loki.start()
    print(f"loki stand-in (tests/loki_server.py) listening on :{loki.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    loki.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
