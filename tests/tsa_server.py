"""A local RFC 3161 time-stamping authority for the tests, built on ``openssl ts -reply``.

``LocalTsa(dir)`` makes a test CA and a TSA certificate (EC P-256, critical
extendedKeyUsage timeStamping, as RFC 3161 requires) with the openssl CLI
and serves ``POST /`` (``application/timestamp-query`` in,
``application/timestamp-reply`` out) on 127.0.0.1; ``stop()`` and
``start()`` again on the same port simulate an outage.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONFIG = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = vllm-audit test
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ tsa_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {dir}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/ca.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.5
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str = "Test TSA") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(CONFIG.format(dir=d))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _run("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
         "-config", "openssl.cnf", "-extensions", "ca_ext", "-subj", f"/CN={name} CA", cwd=d)
    _run("req", "-new", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-config", "openssl.cnf",
         "-subj", f"/CN={name}", cwd=d)
    _run("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "tsa.pem", "-days", "3650", "-extfile", "openssl.cnf", "-extensions", "tsa_ext", cwd=d)
    (d / "tsaserial").write_text("01\n")


class LocalTsa:
    def __init__(self, directory: Path, name: str = "Test TSA"):
        self.dir = Path(directory)
        make_ca(self.dir, name)
        self.ca_file = str(self.dir / "ca.pem")
        self.tsa_cert = str(self.dir / "tsa.pem")
        self.port = 0
        self.requests = 0
        self.lock = threading.Lock()

    def start(self) -> "LocalTsa":
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with tsa.lock, tempfile.TemporaryDirectory() as tmp:  # the serial file is shared
                    tsa.requests += 1
                    (Path(tmp) / "q.tsq").write_bytes(query)
                    proc = subprocess.run(["openssl", "ts", "-reply", "-config", str(tsa.dir / "openssl.cnf"),
                                           "-queryfile", str(Path(tmp) / "q.tsq"), "-out", str(Path(tmp) / "r.tsr")],
                                          capture_output=True, timeout=60)
                    reply = (Path(tmp) / "r.tsr").read_bytes() if proc.returncode == 0 else None
                if reply is None:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
