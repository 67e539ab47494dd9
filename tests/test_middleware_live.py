"""The audit middleware inside a real vLLM (CPU builds 0.32.0, 0.31.0, 0.28.0; tiny offline model).

One server per vLLM version (``vllm_proc.LIVE_VERSIONS``, each in the venv
tools/setup.sh --live installs; a missing venv fails, it is not skipped),
started by tools/vllm_proc.py with
``--middleware exporter.middleware.AuditMiddleware``. Each scenario must
yield exactly one line for its request id, with tokens equal to the usage the
client received.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from vllm_proc import DEFAULT_MODEL_DIR, LIVE_VERSIONS, VllmServer, venv_python  # noqa: E402

pytestmark = pytest.mark.live

EOS_ID = 2  # tiny-llama's <|im_end|>
SALT = "live-salt"
SECRET = "proxy-secret"
OWUI = {"X-OpenWebUI-User-Name": "Ana", "X-OpenWebUI-User-Email": "ana@example.org",
        "X-OpenWebUI-User-Id": "u-1", "X-OpenWebUI-Chat-Id": "c-1", "X-Audit-Secret": SECRET}


@pytest.fixture(scope="module", params=LIVE_VERSIONS)
def server(request, tmp_path_factory):
    python = venv_python(request.param)
    if not Path(python).exists():
        pytest.fail(f"vLLM {request.param} venv missing ({python}): run tools/setup.sh --live")
    tmp = tmp_path_factory.mktemp("mw-live")
    audit = tmp / "middleware.jsonl"
    env = {"VLLM_AUDIT_MIDDLEWARE_FILE": str(audit), "VLLM_AUDIT_API_KEY_SALT": SALT,
           "VLLM_AUDIT_IDENTITY_SECRET": SECRET, "VLLM_AUDIT_IDENTITY_SECRET_HEADER": "X-Audit-Secret",
           "VLLM_AUDIT_MIDDLEWARE_FSYNC_MS": "50"}
    srv = VllmServer(DEFAULT_MODEL_DIR, tmp / "vllm.log", env=env, python=python,
                     version=request.param, middleware="exporter.middleware.AuditMiddleware")
    with srv:
        with httpx.Client(base_url=srv.base_url, timeout=60) as client:
            yield client, audit


def complete_lines(audit: Path) -> list[dict]:
    """The lines the writer has finished: a big line can be mid-write (the
    writer loops over partial os.write calls), and a reader that parses the
    unterminated tail sees half a JSON object (seen once under load)."""
    text = audit.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def lines_for(audit: Path, predicate, timeout: float = 30.0) -> list[dict]:
    """Poll the file another process writes until a matching line shows up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if audit.exists():
            found = [line for line in complete_lines(audit) if predicate(line)]
            if found:
                time.sleep(0.2)  # a duplicate would arrive in the same batch; give it the chance
                return [line for line in complete_lines(audit) if predicate(line)]
        time.sleep(0.05)
    raise AssertionError(f"no middleware line within {timeout}s")


def by_response(audit, response_id):
    return lines_for(audit, lambda line: line.get("response_id") == response_id)


def counts(usage):
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def chat(content="Hello there", **extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0.0, **extra}


def test_open_webui_headers_non_streaming(server):
    client, audit = server
    resp = client.post("/v1/chat/completions", json=chat(), headers=OWUI)
    assert resp.status_code == 200
    body = resp.json()
    [line] = by_response(audit, body["id"])
    assert line["request_id_generated"] is True
    assert body["id"] == "chatcmpl-" + line["request_id"]
    assert (line["user"], line["identity"]["headers"]["x-openwebui-chat-id"]) == ("ana@example.org", "c-1")
    assert "x-audit-secret" not in json.dumps(line).lower() and SECRET not in json.dumps(line)
    assert line["usage"] == counts(body["usage"])
    assert (line["status"], line["status_code"], line["stream"], line["model"]) == ("completed", 200, False, "tiny")
    assert line["choices"][0]["text"] == body["choices"][0]["message"]["content"]


def test_forged_identity_headers_without_secret_are_untrusted(server):
    client, audit = server
    forged = {k: v for k, v in OWUI.items() if k != "X-Audit-Secret"}
    body = client.post("/v1/chat/completions", json=chat(user="real-user"), headers=forged).json()
    [line] = by_response(audit, body["id"])
    assert (line["user"], line["identity"]["headers"]) == ("real-user", {})
    assert line["identity"]["untrusted_headers"]["x-openwebui-user-name"] == "Ana"


def test_user_field_streaming_with_usage(server):
    client, audit = server
    usage, rid, text = None, None, []
    with client.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": "live-stream-1"},
                       json=chat(user="bob", stream=True, stream_options={"include_usage": True})) as r:
        for raw in r.iter_lines():
            if raw.startswith("data: ") and raw != "data: [DONE]":
                chunk = json.loads(raw[6:])
                rid = chunk["id"]
                usage = chunk.get("usage") or usage
                text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    [line] = lines_for(audit, lambda x: x.get("request_id") == "live-stream-1")
    assert (rid, line["request_id_generated"], line["user"]) == ("chatcmpl-live-stream-1", False, "bob")
    assert (line["status"], line["stream"], line["usage"]) == ("completed", True, counts(usage))
    assert line["choices"][0]["text"] == "".join(text)
    assert line["ttft_seconds"] is not None and 0 < line["ttft_seconds"] <= line["latency_seconds"]


def test_api_key_hash(server):
    client, audit = server
    body = client.post("/v1/completions", headers={"Authorization": "Bearer sk-live-42"},
                       json={"model": "tiny", "prompt": "Once", "max_tokens": 5}).json()
    [line] = by_response(audit, body["id"])
    digest = hmac.new(SALT.encode(), b"sk-live-42", hashlib.sha256).hexdigest()
    assert (line["user"], line["identity"]["api_key_hash"]) == ("key:" + digest[:16], digest)
    assert body["id"] == f"cmpl-{line['request_id']}-0" or body["id"].startswith("cmpl-" + line["request_id"])
    assert line["usage"] == counts(body["usage"])
    assert line["choices"][0]["text"] == body["choices"][0]["text"]


def test_over_long_prompt_is_rejected(server):
    client, audit = server
    resp = client.post("/v1/chat/completions", headers={"X-Request-Id": "live-long-1"},
                       json=chat(" ".join(["hello world"] * 400)))
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    [line] = lines_for(audit, lambda x: x.get("request_id") == "live-long-1")
    assert (line["status"], line["status_code"], line["error"]) == ("rejected", 400, message)
    assert line["rejected_prompt_tokens"] is not None and str(line["rejected_prompt_tokens"]) in message


def test_disconnect_mid_stream_is_aborted(server):
    client, audit = server
    with client.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": "live-abort-1"},
                       json=chat(max_tokens=490, stream=True, ignore_eos=True)) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break
    [line] = lines_for(audit, lambda x: x.get("request_id") == "live-abort-1")
    # The outcome is what the server saw, and that is a race the test cannot
    # fix: on 2 busy cores the tiny model can write all 490 tokens into the
    # socket's buffers before the client's close is noticed (seen once under
    # load). Then the exchange was complete from vLLM's side and the line says
    # so; otherwise it is an abort. Either way the line must be consistent.
    assert line["status"] in ("aborted", "completed"), line
    assert line["aborted"] is (line["status"] == "aborted") and line["usage"] is None
    if line["status"] == "completed":
        assert line["choices"][0]["finish_reason"] == "length", line  # every token was sent
    else:
        assert not line["choices"] or line["choices"][0]["finish_reason"] is None, line


def test_empty_non_streaming_response(server):
    client, audit = server
    body = client.post("/v1/chat/completions",
                       json=chat(logit_bias={str(EOS_ID): 100}, user="empty")).json()
    assert body["choices"][0]["message"]["content"] == ""
    [line] = by_response(audit, body["id"])
    assert (line["empty_response"], line["status"]) == (True, "completed")
    assert line["usage"] == counts(body["usage"]) and line["usage"]["completion_tokens"] == 1


def test_non_audited_paths_write_nothing(server):
    client, audit = server
    before = audit.read_text() if audit.exists() else ""
    assert client.get("/v1/models").status_code == 200
    assert client.post("/tokenize", json={"model": "tiny", "prompt": "x"}).status_code == 200
    time.sleep(0.3)  # the writer would have flushed by now (FSYNC_MS=50)
    assert audit.read_text() == before
