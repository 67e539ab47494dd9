"""Open WebUI's signed identity: the stdlib HS256 verifier and what the
middleware line says for good and bad tokens.

Tokens are minted with PyJWT exactly as Open WebUI 0.12.4 mints them
(``open_webui/utils/headers.py`` ``_mint_forward_user_jwt``: ``jwt.encode``
of ``sub``, ``email``, ``name``, ``role``, ``iss``, ``iat``, ``exp``, HS256).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from exporter.middleware import MiddlewareConfig
from exporter.middleware.openwebui import INVALID_REASONS, verify
from exporter.record import IDENTITY_INVALID_REASONS
from exporter.middleware import capture as middleware_capture
from test_middleware import CHAT_BODY, CHAT_RESPONSE, RID, T0, FakeClock, call, json_app, make, written

SECRET = "owui-shared-secret-0123456789abcdef"  # >= 32 bytes, as RFC 7518 asks for HS256
NOW = T0  # the request arrives at T0 (test_middleware's writer clock and the fake wall clock)


pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture(autouse=True)
def arrival(monkeypatch):
    """Every request arrives at T0 (the capture code's wall clock)."""
    monkeypatch.setattr(middleware_capture, "time", FakeClock())


def mint(secret=SECRET, now=NOW, lifetime=300, **over) -> str:
    payload = {"sub": "u-1", "email": "ana@example.org", "name": "Ana", "role": "user",
               "iss": "open-webui", "iat": int(now), "exp": int(now) + lifetime}
    payload.update(over)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(head: dict, payload: dict, secret=SECRET) -> str:
    msg = f"{b64(head)}.{b64(payload)}"
    sig = hmac.new(secret.encode(), msg.encode(), hashlib.sha256).digest()
    return f"{msg}.{b64(sig)}"


def check(token: str, now=NOW, leeway=60, key=SECRET):
    return verify(token.encode(), key.encode(), now, leeway)


def test_reasons_are_one_closed_set():
    assert INVALID_REASONS == IDENTITY_INVALID_REASONS


def test_good_token_gives_its_claims():
    claims, reason = check(mint())
    assert reason is None
    assert {k: claims[k] for k in ("sub", "email", "name", "role", "iss")} == {
        "sub": "u-1", "email": "ana@example.org", "name": "Ana", "role": "user", "iss": "open-webui"}


def test_expiry_with_clock_skew_allowance():
    token = mint(lifetime=300)
    assert check(token, now=NOW + 300 + 60)[1] is None  # inside the leeway
    assert check(token, now=NOW + 300 + 61) == (None, "expired")
    assert check(token, now=NOW + 301, leeway=0) == (None, "expired")
    assert check(mint(exp=None)) == (None, "malformed")  # Open WebUI always sets exp
    assert check(mint(exp="tomorrow")) == (None, "malformed")
    forever = signed({"alg": "HS256"}, {"iss": "open-webui", "exp": float("inf")})  # JSON "Infinity"
    assert check(forever) == (None, "malformed")


def test_token_from_the_future_is_refused_beyond_the_skew():
    assert check(mint(now=NOW + 30))[1] is None  # a sender clock 30 s ahead
    assert check(mint(now=NOW + 120)) == (None, "not_yet_valid")
    assert check(mint(nbf=int(NOW) + 600)) == (None, "not_yet_valid")


def test_wrong_or_missing_issuer():
    assert check(mint(iss="someone-else")) == (None, "issuer")
    assert check(mint(iss=None)) == (None, "issuer")


def test_alg_none_and_other_algorithms_are_refused():
    payload = {"email": "ana@example.org", "iss": "open-webui", "exp": NOW + 300}
    assert check(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}.") == (None, "algorithm")
    assert check(f"{b64({'alg': 'None'})}.{b64(payload)}.") == (None, "algorithm")
    assert check(jwt.encode(payload, SECRET, algorithm="HS512")) == (None, "algorithm")
    assert check(f"{b64({'typ': 'JWT'})}.{b64(payload)}.x") == (None, "algorithm")
    # The same claims correctly signed with HS256 pass: the refusal is the alg.
    assert check(signed({"alg": "HS256"}, payload))[1] is None


def test_bad_signature():
    assert check(mint(secret="another-secret")) == (None, "signature")
    head, payload, _ = mint().split(".")
    forged = b64({"sub": "u-2", "email": "eve@example.org", "iss": "open-webui", "exp": NOW + 300})
    assert check(f"{head}.{forged}.{mint().split('.')[2]}") == (None, "signature")
    assert check(f"{head}.{payload}.") == (None, "signature")


@pytest.mark.parametrize("token", [
    "garbage", "a.b", "a.b.c.d", "!!!.###.$$$", "e30.e30", f"{b64(b'not json')}.e30.sig",
    f"{b64([1, 2])}.e30.e30", "x" * 9000, "é.é.é",
])
def test_garbage_is_malformed(token):
    assert check(token) == (None, "malformed")


def test_payload_that_is_not_an_object_is_malformed_after_the_signature():
    assert check(signed({"alg": "HS256"}, [1, 2])) == (None, "malformed")


def test_missing_and_unusable_key():
    assert check("") == (None, "missing")
    assert check("   ") == (None, "missing")
    assert verify(mint().encode(), b"", NOW, 60) == (None, "secret_unavailable")


# -- the middleware line -------------------------------------------------------

JWT_ENV = {"VLLM_AUDIT_OPENWEBUI_JWT_SECRET": SECRET}
CHAT_ID = [("x-openwebui-chat-id", "c-9")]


def jwt_line(headers, env=None, body=CHAT_BODY):
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE), {**JWT_ENV, **(env or {})})
    call(mw, body, headers=RID + headers)
    [line] = written(writer, sink)
    return line, sink.data.decode()


def test_valid_token_is_the_user_and_never_written():
    token = mint()
    session = [("x-openwebui-message-id", "m-1"), ("x-openwebui-user-message-id", "um-1"),
               ("x-openwebui-task", "title_generation")]
    line, _ = jwt_line([("x-openwebui-user-jwt", token), ("x-openwebui-task", "")] + CHAT_ID)
    assert line["identity"]["openwebui"] == {"chat_id": "c-9", "message_id": None,  # "" = no value
                                             "user_message_id": None, "task": None}
    line, raw = jwt_line([("x-openwebui-user-jwt", token), ("authorization", "Bearer shared")]
                         + CHAT_ID + session)
    assert (line["user"], line["identity_source"]) == ("ana@example.org", "jwt")
    assert line["identity"]["jwt"] == {"sub": "u-1", "email": "ana@example.org", "name": "Ana",
                                       "role": "user"}
    assert line["identity"]["openwebui"] == {"chat_id": "c-9", "message_id": "m-1",
                                             "user_message_id": "um-1", "task": "title_generation"}
    assert "invalid_reason" not in line["identity"]
    assert token not in raw and token.split(".")[2] not in raw and SECRET not in raw


def test_token_is_not_written_even_when_listed_as_a_trusted_header():
    token = mint()
    env = {"VLLM_AUDIT_TRUSTED_HEADERS": "x-openwebui-user-jwt,x-openwebui-chat-id"}
    line, raw = jwt_line([("x-openwebui-user-jwt", token)], env)
    assert line["user"] == "ana@example.org" and token not in raw
    # ... and without JWT mode a listed token header is still never copied.
    mw, writer, sink = make(json_app(200, CHAT_RESPONSE), env)
    call(mw, CHAT_BODY, headers=RID + [("x-openwebui-user-jwt", token)])
    assert token not in sink.data.decode() + json.dumps(written(writer, sink))


def test_user_claim_is_configurable():
    line, _ = jwt_line([("x-openwebui-user-jwt", mint())], {"VLLM_AUDIT_OPENWEBUI_JWT_USER_CLAIM": "sub"})
    assert (line["user"], line["identity_source"]) == ("u-1", "jwt")
    line, _ = jwt_line([("x-openwebui-user-jwt", mint())], {"VLLM_AUDIT_OPENWEBUI_JWT_USER_CLAIM": "tenant"})
    assert (line["user"], line["identity_source"], line["identity"]["invalid_reason"]) == (
        None, None, "claim_missing")


@pytest.mark.parametrize("token,reason", [
    (None, "missing"),
    (mint(secret="forger-guess-forger-guess-forger-guess", email="eve@example.org"), "signature"),
    (mint(now=NOW - 3600), "expired"),
    ("not-a-jwt", "malformed"),
])
def test_bad_or_missing_token_never_falls_back(token, reason):
    headers = [("authorization", "Bearer shared-owui-key"), ("x-openwebui-user-email", "eve@example.org")]
    headers += [("x-openwebui-user-jwt", token)] if token else []
    body = {**CHAT_BODY, "user": "body-user"}
    line, raw = jwt_line(headers + CHAT_ID, body=body)
    assert (line["user"], line["identity_source"]) == (None, None)
    ident = line["identity"]
    assert ident["invalid_reason"] == reason
    # The evidence stays, none of it becomes the user.
    assert ident["headers"] == {} and ident["untrusted_headers"] == {
        "x-openwebui-user-email": "eve@example.org", "x-openwebui-chat-id": "c-9"}
    assert ident["user_field"] == "body-user" and ident["api_key_hash"]
    assert "openwebui" not in ident and "jwt" not in ident
    assert "shared-owui-key" not in raw and (token is None or token not in raw)


def test_expiry_is_judged_at_arrival_not_when_the_writer_runs():
    # The writer's clock is irrelevant: the line is rendered from ex.start_wall.
    line, _ = jwt_line([("x-openwebui-user-jwt", mint(now=NOW - 299))])
    assert line["identity_source"] == "jwt"


def test_without_a_token_the_shared_secret_headers_may_stand_in():
    env = {"VLLM_AUDIT_IDENTITY_SECRET": "proxy-secret"}
    plain = [("x-openwebui-user-email", "bob@example.org"), ("x-vllm-audit-identity-secret", "proxy-secret")]
    line, raw = jwt_line(plain, env)
    assert (line["user"], line["identity_source"]) == ("bob@example.org", "header_secret")
    assert "invalid_reason" not in line["identity"] and "proxy-secret" not in raw
    # A bad token is refused even with the proxy secret: a forgery is never papered over.
    line, _ = jwt_line(plain + [("x-openwebui-user-jwt", mint(secret="x"))], env)
    assert (line["user"], line["identity"]["invalid_reason"]) == (None, "signature")


def test_secret_from_file_is_stripped_like_open_webui_strips_it(tmp_path):
    path = tmp_path / "owui-jwt"
    path.write_text(f"  {SECRET} \n")
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_OPENWEBUI_JWT_SECRET_FILE": str(path)})
    assert cfg.jwt_secret == SECRET.encode()
    line, _ = jwt_line([("x-openwebui-user-jwt", mint())],
                       {"VLLM_AUDIT_OPENWEBUI_JWT_SECRET": "", "VLLM_AUDIT_OPENWEBUI_JWT_SECRET_FILE": str(path)})
    assert line["identity_source"] == "jwt"


def test_unreadable_secret_file_refuses_every_token(tmp_path, caplog):
    cfg = MiddlewareConfig.from_env({"VLLM_AUDIT_OPENWEBUI_JWT_SECRET_FILE": str(tmp_path / "absent")})
    assert cfg.jwt_secret == b"" and "identity_invalid" in caplog.text
    line, _ = jwt_line([("x-openwebui-user-jwt", mint())],
                       {"VLLM_AUDIT_OPENWEBUI_JWT_SECRET": "",
                        "VLLM_AUDIT_OPENWEBUI_JWT_SECRET_FILE": str(tmp_path / "absent")})
    assert (line["user"], line["identity"]["invalid_reason"]) == (None, "secret_unavailable")


def test_renamed_token_header():
    env = {"VLLM_AUDIT_OPENWEBUI_JWT_HEADER": "X-Corp-Jwt"}
    line, raw = jwt_line([("x-corp-jwt", mint())], env)
    assert line["identity_source"] == "jwt" and mint() not in raw


# -- through the exporter: parse (type checks) -> correlate -> record ---------------

def _records(lines: list[dict]) -> list[dict]:
    from exporter.assemble import AssembleContext, build_record
    from exporter.correlate import Correlator
    from exporter.parse import parse_line
    corr = Correlator(merge_grace=0)
    for line in lines:
        corr.feed(parse_line(json.dumps(line)), NOW)
    return [build_record(e, AssembleContext(model="tiny")) for e in corr.drain()]


def test_record_carries_identity_source_claims_and_the_invalid_flag():
    good, _ = jwt_line([("x-openwebui-user-jwt", mint()), ("x-openwebui-task", "title_generation")] + CHAT_ID)
    bad, _ = jwt_line([("x-openwebui-user-jwt", mint(now=NOW - 3600)), ("x-request-id", "rid-2")])
    bad["request_id"] = "rid-2"
    ok, expired = _records([good, bad])
    assert (ok["user"], ok["identity_source"], ok["flags"]) == ("ana@example.org", "jwt", [])
    assert ok["identity"]["jwt"]["role"] == "user"
    assert ok["identity"]["openwebui"] == {"chat_id": "c-9", "message_id": None, "user_message_id": None,
                                           "task": "title_generation"}
    assert (expired["user"], expired["identity_source"]) == (None, None)
    assert expired["identity"]["invalid_reason"] == "expired" and "identity_invalid" in expired["flags"]


def test_hostile_identity_fields_are_type_checked():
    line, _ = jwt_line([("x-openwebui-user-jwt", mint())])
    line.update(identity_source="root", user="mallory")
    line["identity"].update(jwt={"sub": ["x"], "email": "a", "extra": "dropped"},
                            openwebui="chat", invalid_reason="because")
    [rec] = _records([line])
    assert rec["identity_source"] is None and "invalid_field" in rec["flags"]
    assert rec["identity"]["jwt"] == {"sub": None, "email": "a"}
    assert rec["identity"]["openwebui"] is None
    # An unknown reason is still a refusal: the flag survives, the value is bounded.
    assert rec["identity"]["invalid_reason"] == "malformed" and "identity_invalid" in rec["flags"]


def test_log_only_user_field_and_legacy_lines():
    from exporter.assemble import _legacy_source
    assert _legacy_source("ana", {"headers": {"x-openwebui-user-name": "ana"}, "user_field": "ana"}) is None
    assert _legacy_source("bob", {"headers": {}, "user_field": "bob"}) == "user_field"
    assert _legacy_source("key:abcd", {"headers": {}, "api_key_hash": "abcdef"}) == "api_key"
    line, _ = jwt_line([("authorization", "Bearer k")], {"VLLM_AUDIT_OPENWEBUI_JWT_SECRET": ""})
    del line["identity_source"]  # a line written before the field existed
    [rec] = _records([line])
    assert (rec["user"][:4], rec["identity_source"]) == ("key:", "api_key")


def test_log_only_record_takes_the_body_user_as_user_field():
    from exporter.assemble import AssembleContext, build_record
    from exporter.correlate import Correlator
    from exporter.parse import parse_line
    body = {"model": "tiny", "messages": [], "user": "carol"}
    corr = Correlator(merge_grace=0)
    for text in (f"INFO 11-22 10:00:00 [request_logger.py:84] Request w1 JSON body: {json.dumps(body)}",
                 "INFO 11-22 10:00:00 [request_logger.py:65] Received request chatcmpl-w1: params: "
                 "SamplingParams(n=1, temperature=1.0, max_tokens=9), lora_request: None."):
        corr.feed(parse_line(text), NOW)
    [entry] = corr.drain()
    rec = build_record(entry, AssembleContext(model="tiny"))
    assert (rec["user"], rec["identity_source"]) == ("carol", "user_field")


def test_loki_copy_redacts_the_claims_and_keeps_the_provenance():
    from exporter.compliance.policy import make_policy
    good, _ = jwt_line([("x-openwebui-user-jwt", mint())])
    bad, _ = jwt_line([("x-openwebui-user-jwt", "garbage"), ("x-request-id", "rid-2")])
    bad["request_id"] = "rid-2"
    ok, refused = (make_policy("loki")(r) for r in _records([good, bad]))
    assert ok["identity"]["jwt"]["email"] == "[EMAIL]" and ok["identity_source"] == "jwt"
    assert refused["identity"]["invalid_reason"] == "malformed" and "identity_invalid" in refused["flags"]


# -- property: hostile tokens -------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hyp import examples  # noqa: E402

_PART = st.one_of(st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")),
                  st.binary(max_size=32), st.sampled_from([b"", b"e30", b"eyJhbGciOiJIUzI1NiJ9"]))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_PART, min_size=1, max_size=4).map(b".".join), st.binary(max_size=40))
def test_any_token_bytes_give_a_known_reason_and_never_raise(token, key):
    claims, reason = verify(token, key, NOW, 60)
    # Without the key nobody can produce a valid token by chance.
    assert claims is None and reason in INVALID_REASONS


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(st.sampled_from(["iss", "exp", "iat", "nbf", "email", "sub"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                                 st.lists(st.integers(), max_size=2))))
def test_any_signed_claims_never_raise(claims):
    # Signed with the right key (a buggy or hostile holder of the secret): still only known outcomes.
    got, reason = check(signed({"alg": "HS256"}, claims))
    assert (got is None) == (reason is not None) and reason in (None, *INVALID_REASONS)
    if got is not None:
        assert got["iss"] == "open-webui" and NOW <= got["exp"] + 60 < float("inf")
