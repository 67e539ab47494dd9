"""A real Open WebUI in front of a real vLLM 0.32 CPU build with the audit
middleware: who the records say each chat belongs to, and how sure they are.

* Secure mode: Open WebUI with ``FORWARD_USER_INFO_HEADER_JWT_SECRET``, the
  middleware with the same ``VLLM_AUDIT_OPENWEBUI_JWT_SECRET``, vLLM behind an
  API key that Open WebUI shares for all its users. Every chat (plain and
  streaming) of two users is one record with ``user`` = that user's e-mail and
  ``identity_source: jwt``; a forged and an expired token sent straight to
  vLLM give ``user: null`` with the flag ``identity_invalid``, counted by
  reason -- never the shared key's hash.
* Plain headers: ``ENABLE_FORWARD_USER_INFO_HEADERS=true`` without a JWT
  secret (and the middleware without one) gives ``identity_source: header``.

Records come from replaying vLLM's log and the middleware's file through the
exporter (``replay_into``), as a deployment's exporter would read them. One
vLLM + one Open WebUI per case (class-scoped fixtures, run one after the other).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import jwt
import pytest

from exporter.cli import make_parser
from exporter.replay import replay_into
from exporter.settings import build as build_settings

from .openwebui import OpenWebUI, installed
from .stack import DEFAULT_MODEL_DIR, DEFAULT_PYTHON, VllmServer, wait_until

pytestmark = pytest.mark.live

SECRET = "owui-live-jwt-secret-0123456789abcdef"
VLLM_KEY = "owui-shared-vllm-key"
USERS = (("Ana", "ana@example.org"), ("Bob", "bob@example.org"))
# An admin's per-connection headers (README, "Open WebUI"): Open WebUI fills the templates.
CONNECTION_HEADERS = {"X-OpenWebUI-Message-Id": "{{MESSAGE_ID}}", "X-OpenWebUI-Task": "{{TASK}}"}


def require() -> None:
    missing = [what for ok, what in (
        (installed(), "Open WebUI venv (~/.cache/vllm-audit/owui-venv)"),
        (Path(DEFAULT_PYTHON).exists(), f"vLLM venv python {DEFAULT_PYTHON}"),
        ((Path(DEFAULT_MODEL_DIR) / "config.json").exists(), f"tiny model {DEFAULT_MODEL_DIR}"),
    ) if not ok]
    if missing:  # CI fails on a skip: say what to install
        pytest.fail("Open WebUI live test cannot run, missing: " + "; ".join(missing)
                    + ". Install: bash tools/setup.sh --live")


class Deployment:
    """vLLM (+ middleware) and Open WebUI, with two users signed in."""

    def __init__(self, root: Path, mw_env: dict, owui_env: dict) -> None:
        self.root = root
        self.audit = root / "middleware.jsonl"
        self.vllm = VllmServer(DEFAULT_MODEL_DIR, root / "vllm.log",
                               env={"VLLM_AUDIT_MIDDLEWARE_FILE": str(self.audit),
                                    "VLLM_AUDIT_API_KEY_SALT": "live-salt",
                                    "VLLM_AUDIT_MIDDLEWARE_FSYNC_MS": "50", **mw_env},
                               middleware="exporter.middleware.AuditMiddleware",
                               extra_args=["--api-key", VLLM_KEY, "--enable-log-requests",
                                           "--enable-log-outputs"])
        self.owui = OpenWebUI(root / "owui", openai_url="", openai_key=VLLM_KEY, env=owui_env,
                              connection_headers=CONNECTION_HEADERS)
        self.users = {}

    def __enter__(self) -> "Deployment":
        self.vllm.start()
        try:
            self.owui.openai_url = self.vllm.base_url + "/v1"
            self.owui.start()
            admin = self.owui.signup("Admin", "admin@example.org")
            self.users = {email: self.owui.add_user(admin, name, email) for name, email in USERS}
            self.owui.wait_for_model(self.users[USERS[0][1]], "tiny")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.owui.stop()
        self.vllm.stop()

    def chats(self) -> dict[str, str]:
        """Each user chats once plain and once streaming; ``{response id: e-mail}``."""
        sent = {}
        for email, user in self.users.items():
            reply = self.owui.chat(user, "tiny", f"Hello from {email}", max_tokens=6, temperature=0.0,
                                   chat_id=f"local:chat-{email}", id=f"msg-{email}")
            sent[reply["id"]] = email
            _, chunks = self.owui.chat_stream(user, "tiny", "Tell me more", max_tokens=6, temperature=0.0)
            ids = {c["id"] for c in chunks if c.get("id")}
            assert len(ids) == 1, ids
            sent[ids.pop()] = email
        return sent

    def lines(self, count: int) -> list[dict]:
        """The middleware's lines once ``count`` have been written (another process)."""
        def enough():
            if not self.audit.exists():
                return None
            text = self.audit.read_text()  # only finished lines: the writer may be mid-line
            got = [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines()]
            return got if len(got) >= count else None
        return wait_until(enough, 60, f"{count} middleware lines in {self.audit}")

    def records(self):
        archive = self.root / "archive"
        argv = ["replay", str(self.root / "vllm.log"), str(self.audit), "--archive-dir", str(archive),
                "--model", "tiny", "--no-progress"]
        rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
        out = []
        for f in sorted(archive.glob("audit-*.jsonl")):
            out += [json.loads(line) for line in f.read_text().splitlines()]
        return out, rt.registry


def direct(base_url: str, token: str, rid: str) -> httpx.Response:
    """A request straight to vLLM with Open WebUI's shared key and a chosen token."""
    return httpx.post(base_url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {VLLM_KEY}", "X-OpenWebUI-User-Jwt": token,
                               "X-Request-Id": rid},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


# Class-scoped: each deployment is stopped before the next class starts one.
@pytest.fixture(scope="class")
def secure(tmp_path_factory):
    require()
    root = tmp_path_factory.mktemp("owui-jwt")
    owui_env = {"ENABLE_FORWARD_USER_INFO_HEADERS": "true", "FORWARD_USER_INFO_HEADER_JWT_SECRET": SECRET}
    with Deployment(root, {"VLLM_AUDIT_OPENWEBUI_JWT_SECRET": SECRET}, owui_env) as dep:
        sent = dep.chats()
        now = int(time.time())
        claims = {"sub": "u-x", "email": "ana@example.org", "name": "Ana", "role": "admin",
                  "iss": "open-webui"}
        forged = jwt.encode({**claims, "iat": now, "exp": now + 300}, "guessed-secret-guessed-secret-!!",
                            algorithm="HS256")
        # Minted by the right secret as Open WebUI does, 10 minutes ago: past its 300 s life.
        expired = jwt.encode({**claims, "iat": now - 600, "exp": now - 300}, SECRET, algorithm="HS256")
        for rid, token in (("forged-1", forged), ("expired-1", expired)):
            assert direct(dep.vllm.base_url, token, rid).status_code == 200
        lines = dep.lines(len(sent) + 2)
        records, registry = dep.records()
        yield {"sent": sent, "lines": lines, "records": records, "registry": registry,
               "tokens": (forged, expired), "vllm_log": (root / "vllm.log").read_text(errors="replace")}


@pytest.fixture(scope="class")
def plain(tmp_path_factory):
    require()
    root = tmp_path_factory.mktemp("owui-plain")
    with Deployment(root, {}, {"ENABLE_FORWARD_USER_INFO_HEADERS": "true"}) as dep:
        sent = dep.chats()
        dep.lines(len(sent))
        records, _ = dep.records()
        yield {"sent": sent, "records": records}


class TestSecureMode:
    @pytest.fixture
    def run(self, secure):
        return secure

    def test_every_chat_is_one_record_of_its_user_verified_by_jwt(self, run):
        by_id = {r["request_id"]: r for r in run["records"]}
        assert len(by_id) == len(run["records"]) == len(run["sent"]) + 2
        for rid, email in run["sent"].items():
            rec = by_id[rid]
            assert (rec["user"], rec["identity_source"], rec["status"]) == (email, "jwt", "completed"), rec
            assert rec["identity"]["jwt"]["email"] == email and rec["identity"]["jwt"]["role"] == "user"
            assert "identity_invalid" not in rec["flags"]
        assert sorted(r["stream"] for r in by_id.values() if r["request_id"] in run["sent"]) == [
            False, False, True, True]

    def test_open_webui_chat_and_message_ids_join_the_record(self, run):
        by_id = {r["request_id"]: r for r in run["records"]}
        plain = [by_id[rid] for rid in run["sent"] if by_id[rid]["stream"] is False]
        for rec in plain:
            assert rec["identity"]["openwebui"] == {
                "chat_id": f"local:chat-{rec['user']}", "message_id": f"msg-{rec['user']}",
                "user_message_id": None, "task": None}

    def test_forged_and_expired_tokens_give_no_user(self, run):
        by_id = {r["request_id"]: r for r in run["records"]}
        for rid, reason in (("chatcmpl-forged-1", "signature"), ("chatcmpl-expired-1", "expired")):
            rec = by_id[rid]
            assert (rec["user"], rec["identity_source"]) == (None, None), rec
            assert "identity_invalid" in rec["flags"] and rec["identity"]["invalid_reason"] == reason
            assert rec["identity"]["api_key_hash"]  # the shared key is seen, and not used as the user
        reg = run["registry"]
        for reason in ("signature", "expired"):
            assert reg.get_sample_value("vllm_audit_identity_invalid_total",
                                        {"model": "tiny", "reason": reason}) == 1
        assert reg.get_sample_value("vllm_audit_identity_source_requests_total",
                                    {"model": "tiny", "source": "jwt"}) == len(run["sent"])

    def test_no_token_or_key_is_written(self, run):
        raw = json.dumps(run["lines"]) + json.dumps(run["records"]) + run["vllm_log"]
        assert VLLM_KEY not in raw and SECRET not in raw
        for token in run["tokens"]:
            assert token not in raw and token.split(".")[2] not in raw
        # ... nor any of the tokens Open WebUI minted for the chats (JWTs start eyJ: base64 of '{"').
        assert re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+", raw) is None
        assert "x-openwebui-user-jwt" not in raw.lower()


class TestPlainHeaders:
    @pytest.fixture
    def run(self, plain):
        return plain

    def test_plain_headers_are_attributed_but_marked_unverified(self, run):
        by_id = {r["request_id"]: r for r in run["records"]}
        assert len(run["records"]) == len(run["sent"])
        for rid, email in run["sent"].items():
            rec = by_id[rid]
            assert (rec["user"], rec["identity_source"]) == (email, "header"), rec
            assert rec["identity"]["headers"]["x-openwebui-user-email"] == email
            assert "jwt" not in rec["identity"] and "invalid_reason" not in rec["identity"]
