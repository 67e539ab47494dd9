"""A real Open WebUI (PyPI ``open-webui``) for live tests, in front of a vLLM.

    with OpenWebUI(tmp / "owui", openai_url=vllm.base_url + "/v1", openai_key="k",
                   env={"ENABLE_FORWARD_USER_INFO_HEADERS": "true"}) as owui:
        admin = owui.signup("Admin", "admin@example.org")      # the first user is the admin
        ana = owui.add_user(admin, "Ana", "ana@example.org")   # admin's /api/v1/auths/add
        reply = owui.chat(ana, "tiny", "Hello")                # Open WebUI's chat API
        text, chunks = owui.chat_stream(ana, "tiny", "Hello")

Rules:
- Runs ``open-webui serve`` from ``OWUI_PYTHON``'s venv (default: the audit
  cache's ``owui-venv``, installed by ``tools/setup.sh --live``) on a free
  loopback port, with a private ``DATA_DIR`` (its SQLite database, secret
  key and uploads) under ``root``, so instances never share state.
- Offline and lean: ``OFFLINE_MODE``, ``HF_HUB_OFFLINE``,
  ``BYPASS_EMBEDDING_AND_RETRIEVAL``, ``RAG_EMBEDDING_ENGINE=openai`` (no
  local embedding model is loaded), ``BYPASS_MODEL_ACCESS_CONTROL`` (every
  user may use every model), Ollama off; the one OpenAI connection is
  ``openai_url`` with ``openai_key``. ``connection_headers`` become that
  connection's per-connection headers (``OPENAI_API_CONFIGS["0"].headers``,
  with Open WebUI's ``{{CHAT_ID}}``/``{{MESSAGE_ID}}``/``{{TASK}}`` ...
  templates). ``env`` goes on top (forwarded-identity settings and such).
- ``start`` waits for ``GET /health`` and raises ``OpenWebUIStartError``
  (with the log tail) when the process dies or ``startup_timeout`` passes;
  ``stop`` sends SIGTERM to the process group, SIGKILL after ``stop_timeout``.
- Users are ``User(name, email, password, token)``; chats go through
  ``POST /api/chat/completions`` with the user's session token, as the web
  UI's API clients do. Without a ``chat_id`` Open WebUI runs no background
  tasks (title, tags, follow-ups), so one chat is one vLLM request.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CACHE_DIR = Path(os.environ.get("VLLM_AUDIT_CACHE") or Path.home() / ".cache" / "vllm-audit")
DEFAULT_VENV = Path(os.environ.get("OWUI_VENV") or CACHE_DIR / "owui-venv")
PASSWORD = "Live-test-passw0rd!"


class OpenWebUIStartError(RuntimeError):
    """Open WebUI exited or did not become healthy in time."""


@dataclass(frozen=True)
class User:
    name: str
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def installed(venv: Path = DEFAULT_VENV) -> bool:
    return (venv / "bin" / "open-webui").exists()


class OpenWebUI:
    """One Open WebUI server process; a context manager, or start()/stop()."""

    def __init__(self, root, *, openai_url: str, openai_key: str = "", env: dict | None = None,
                 connection_headers: dict | None = None, venv: Path = DEFAULT_VENV,
                 startup_timeout: float = 300.0, stop_timeout: float = 20.0,
                 request_timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.openai_url = openai_url
        self.openai_key = openai_key
        self.env = dict(env or {})
        self.connection_headers = dict(connection_headers or {})
        self.venv = Path(venv)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.request_timeout = request_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "open-webui.log"
        self._log = None
        self._client: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict:
        data = self.root / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WEBUI_"))}
        env.update({
            "DATA_DIR": str(data), "WEBUI_SECRET_KEY": "live-test-webui-secret",
            "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1", "BYPASS_EMBEDDING_AND_RETRIEVAL": "true",
            "BYPASS_MODEL_ACCESS_CONTROL": "true", "RAG_EMBEDDING_ENGINE": "openai",
            "ENABLE_OLLAMA_API": "false", "ENABLE_OPENAI_API": "true",
            "OPENAI_API_BASE_URLS": self.openai_url, "OPENAI_API_KEYS": self.openai_key,
            "ENABLE_SIGNUP": "true", "ENABLE_VERSION_UPDATE_CHECK": "false",
            "ENABLE_COMMUNITY_SHARING": "false", "SCARF_NO_ANALYTICS": "true",
            "DO_NOT_TRACK": "true", "ANONYMIZED_TELEMETRY": "false", "PYTHONUNBUFFERED": "1",
        })
        if self.connection_headers:
            env["OPENAI_API_CONFIGS"] = json.dumps({"0": {"enable": True, "headers": self.connection_headers}})
        env.update(self.env)
        return env

    def start(self) -> "OpenWebUI":
        exe = self.venv / "bin" / "open-webui"
        if not exe.exists():
            raise OpenWebUIStartError(f"{exe} missing: run bash tools/setup.sh --live")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self._log = open(self.log_path, "wb")
        # cwd = root: `serve` may write a .webui_secret_key next to it.
        self.proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=self.root, env=self.environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self._client = httpx.Client(base_url=self.base_url, timeout=self.request_timeout)
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OpenWebUIStartError(f"Open WebUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise OpenWebUIStartError(f"Open WebUI not healthy after {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode if self.proc is not None else None

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "OpenWebUI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- API ------------------------------------------------------------------

    def _post(self, path: str, body: dict, user: User | None = None) -> dict:
        resp = self._client.post(path, json=body, headers=user.headers if user else None)
        if resp.status_code != 200:
            raise AssertionError(f"POST {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def signup(self, name: str, email: str, password: str = PASSWORD) -> User:
        """Sign up; on a fresh DATA_DIR the first user becomes the admin."""
        out = self._post("/api/v1/auths/signup", {"name": name, "email": email, "password": password})
        return User(name, email, password, out["token"])

    def signin(self, email: str, password: str = PASSWORD) -> User:
        out = self._post("/api/v1/auths/signin", {"email": email, "password": password})
        return User(out.get("name") or email, email, password, out["token"])

    def add_user(self, admin: User, name: str, email: str, password: str = PASSWORD,
                 role: str = "user") -> User:
        """The admin adds a user (``/api/v1/auths/add``); returns it signed in."""
        self._post("/api/v1/auths/add", {"name": name, "email": email, "password": password, "role": role},
                   admin)
        return self.signin(email, password)

    def models(self, user: User) -> list[str]:
        resp = self._client.get("/api/models", headers=user.headers)
        resp.raise_for_status()
        return [m["id"] for m in resp.json()["data"]]

    def wait_for_model(self, user: User, model: str, timeout: float = 60.0) -> None:
        """Open WebUI lists a connection's models once it has fetched them."""
        deadline = time.monotonic() + timeout
        while model not in self.models(user):
            if time.monotonic() > deadline:
                raise AssertionError(f"Open WebUI never listed model {model!r}:\n{self.log_tail()}")
            time.sleep(0.5)

    def chat(self, user: User, model: str, content: str, **extra) -> dict:
        """A non-streaming chat completion through Open WebUI; the OpenAI response."""
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False, **extra}
        return self._post("/api/chat/completions", body, user)

    def chat_stream(self, user: User, model: str, content: str, **extra) -> tuple[str, list[dict]]:
        """A streaming chat completion; ``(text, SSE chunks)``."""
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True, **extra}
        chunks, text = [], []
        with self._client.stream("POST", "/api/chat/completions", json=body, headers=user.headers) as resp:
            if resp.status_code != 200:
                raise AssertionError(f"stream: HTTP {resp.status_code}: {resp.read()[:500]!r}")
            for raw in resp.iter_lines():
                if not raw.startswith("data: ") or raw == "data: [DONE]":
                    continue
                chunk = json.loads(raw[6:])
                chunks.append(chunk)
                for choice in chunk.get("choices") or ():
                    text.append((choice.get("delta") or {}).get("content") or "")
        return "".join(text), chunks
