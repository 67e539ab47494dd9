import copy
import hashlib
import hmac

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exporter.compliance.detect import luhn_valid
from exporter.compliance.policy import make_policy, redact
from exporter.record import new_record
from hyp import examples

_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def record():
    r = new_record()
    r.update(prompt="mail bob@example.com from 10.1.2.3", output="card 4111111111111111",
             choices=[{"index": 0, "text": "card 4111111111111111", "finish_reason": "stop"},
                      {"index": 1, "text": "call 13812345678", "finish_reason": "stop"}],
             identity={"headers": {"x-openwebui-user-email": "bob@example.com", "x-user": "bob"},
                       "user_field": "bob", "api_key_hash": "abc"})
    return r


def test_redact_uses_typed_masks():
    assert redact("a@example.com 13812345678 11010519491231002X 4111111111111111 8.8.8.8 "
                  "sk-abcdefghijklmnopqrstuvwxyz") == "[EMAIL] [PHONE] [CN_ID] [BANK_CARD] [IPV4] [SECRET]"


def test_loki_default_redacts_and_never_mutates():
    r = record()
    before = copy.deepcopy(r)
    out = make_policy("loki")(r)
    assert r == before
    assert out["prompt"] == "mail [EMAIL] from [IPV4]"
    assert out["output"] == "card [BANK_CARD]"
    assert [c["text"] for c in out["choices"]] == ["card [BANK_CARD]", "call [PHONE]"]
    assert out["identity"]["headers"] == {"x-openwebui-user-email": "[EMAIL]", "x-user": "bob"}
    assert "bob@example.com" not in repr(out)


def test_archive_default_is_full_copy():
    r = record()
    out = make_policy("archive")(r)
    assert out == r and out is not r


def test_hash_mode_is_keyed_and_comparable():
    key = b"policy-key"
    pol = make_policy("loki", "hash", "omit", key)
    a, b = pol(record()), pol(record())
    expected = "hmac-sha256:" + hmac.new(key, record()["prompt"].encode(), hashlib.sha256).hexdigest()
    assert a["prompt"] == b["prompt"] == expected
    assert a["output"] is None and [c["text"] for c in a["choices"]] == [None, None]


def test_invalid_modes_and_missing_key():
    with pytest.raises(ValueError, match="needs an HMAC key"):
        make_policy("loki", "hash", "full", None)
    with pytest.raises(ValueError, match="unknown content mode"):
        make_policy("loki", "mask", None, None)
    with pytest.raises(ValueError, match="unknown destination"):
        make_policy("s3", None, None, None)


def test_none_values_stay_none():
    r = new_record()
    assert make_policy("loki", "redact", "hash", b"k")(r)["prompt"] is None


# -- property: generated PII embedded anywhere never survives redaction ---------------

_local = st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=20).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum())
_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
emails = st.builds(lambda l, d, t: f"{l}@{d}.{t}", _local, _label, st.sampled_from(["com", "cn", "org", "io"]))


def _luhn(prefix):
    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


cards = st.builds(lambda first, rest: _luhn(first + rest), st.sampled_from("3456"),
                  st.text("0123456789", min_size=14, max_size=17))


def _cn_id(region, y, m, d, serial):
    body = f"{region}{y:04d}{m:02d}{d:02d}{serial:03d}"
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _W)) % 11]


ids = st.builds(_cn_id, st.integers(110000, 659999).map(str), st.integers(1900, 2020), st.integers(1, 12),
                st.integers(1, 28), st.integers(0, 999))
phones = st.builds(lambda p, n: f"1{p}{n:09d}", st.sampled_from("3456789"), st.integers(0, 999_999_999))
filler = st.text(st.sampled_from(list("abc xyz,.;:!?()[]{}\"'\n\t中文测试，。@_+-")), max_size=30)


# Values touching other digits are a different number (two glued cards are a
# 32-digit run); everything else may touch them: letters, CJK, "@", "-",
# another value, or nothing at all.
seps = st.sampled_from(["", " ", ",", "：", "\n", "(", "中", "x", "id:", "-", "@", "."])


def _glue(prev: str, sep: str, value: str) -> str:
    if prev[-1:].isdigit() and (sep + value)[:1].isdigit():
        return " "
    return sep


def test_redaction_of_glued_addresses_regression():
    # Found by Hypothesis on another machine: the first match ended inside
    # what starts the second, and one scan left the second address raw.
    text = "... g2678@tbyat6l6y2dl.cnx0@du0j82.org"
    out = redact(text)
    assert "0@du0j82.org" not in out and "g2678@tbyat6l6y2dl.cn" not in out
    assert out == "... [EMAIL][EMAIL]"


def test_redaction_reads_a_local_part_backwards_past_a_long_run():
    # A token-boundary rule alone would let 70 glued letters hide the address.
    out = redact("a" * 70 + "bob@example.com and card-4111111111111111")
    assert "bob@example.com" not in out and "4111111111111111" not in out


def test_redaction_withholds_text_that_never_settles(monkeypatch):
    import exporter.compliance.policy as policy
    calls = []

    def always(text):
        calls.append(text)
        return [(0, 1, "email")]
    monkeypatch.setattr(policy, "find_spans", always)
    assert policy.redact("abc") == policy.WITHHELD
    assert len(calls) == policy._MAX_PASSES + 1


@settings(max_examples=examples(600))
@example(parts=[("... ", "", "g2678@tbyat6l6y2dl.cn"), ("", "x", "0@du0j82.org")], sep="", tail="")
@given(st.lists(st.tuples(filler, seps, st.one_of(emails, cards, ids, phones)), min_size=1, max_size=6),
       seps, filler)
def test_redaction_never_leaks_a_raw_value(parts, sep, tail):
    text = ""
    for f, s, v in parts:
        text += f
        text += _glue(text, s, v) + v
    text += sep.replace("x", " ") + tail
    out = redact(text)
    for _, _, value in parts:
        assert value not in out, (text, out)


# Full-width digits and letters (what a CJK keyboard types) and JSON-escaped
# context (a chat prompt is JSON text) must not hide a value either.
_FW = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


@settings(max_examples=examples(300))
# Found by the 10 000-example exploration: a "+" after another "+" hid the number.
@example(parts=[("++", "", "13000000000", False)], as_json=False)
@given(st.lists(st.tuples(filler, seps, st.one_of(emails, cards, ids, phones), st.booleans()),
                min_size=1, max_size=5), st.booleans())
def test_redaction_never_leaks_full_width_or_escaped_values(parts, as_json):
    import json
    text, values = "", []
    for f, s, v, wide in parts:
        v = v.translate(_FW) if wide else v
        values.append(v)
        text += f
        text += _glue(text, s, v) + v
    if as_json:
        text = json.dumps([{"role": "user", "content": text}], ensure_ascii=False)
    out = redact(text)
    for value in values:
        assert value not in out, (text, out)


# -- every field that can carry client input (issue #18, item 4) --------------------

def rich_record():
    r = record()
    r.update(
        status="rejected", http_status=400,
        error="1 validation error: messages.0.content Input should be a valid string "
              "[input_value='call me: zhang.wei@example.com / 13812345678']",
        choices=[{"index": 0, "text": "ok", "finish_reason": "tool_calls",
                  "tool_calls": [{"function": {"name": "send", "arguments": '{"to": "bob@example.com"}'}}],
                  "reasoning": "the user's card is 4111111111111111"},
                 {"index": 1, "text": "call 13812345678", "finish_reason": "stop"}],
        identity={"headers": {"x-openwebui-user-email": "bob@example.com"},
                  "untrusted_headers": {"x-openwebui-user-email": "mallory@example.com"},
                  "user_field": "carol@example.com", "api_key_hash": "a" * 64},
    )
    return r


RAW_IN_RICH = ("zhang.wei@example.com", "13812345678", "bob@example.com", "4111111111111111",
               "mallory@example.com", "carol@example.com")


def test_loki_default_redacts_error_tool_calls_reasoning_and_all_identity_text():
    r = rich_record()
    before = copy.deepcopy(r)
    out = make_policy("loki")(r)
    assert r == before
    shipped = repr(out)
    for value in RAW_IN_RICH:
        assert value not in shipped, value
    assert out["error"].endswith("[input_value='call me: [EMAIL] / [PHONE]']")
    c0 = out["choices"][0]
    assert (c0["index"], c0["finish_reason"]) == (0, "tool_calls")  # metadata kept
    assert c0["tool_calls"][0]["function"] == {"name": "send", "arguments": '{"to": "[EMAIL]"}'}
    assert c0["reasoning"] == "the user's card is [BANK_CARD]"
    assert out["identity"] == {"headers": {"x-openwebui-user-email": "[EMAIL]"},
                               "untrusted_headers": {"x-openwebui-user-email": "[EMAIL]"},
                               "user_field": "[EMAIL]", "api_key_hash": "a" * 64}
    assert make_policy("archive")(r) == r  # the archive keeps everything


def test_error_follows_the_prompt_mode_and_new_fields_the_output_mode():
    r = rich_record()
    r["thinking"] = "private notes about 13812345678"  # a field this build does not know
    out = make_policy("loki", "omit", "hash", b"k")(r)
    assert out["prompt"] is None and out["error"] is None
    assert out["thinking"].startswith("hmac-sha256:") and out["output"].startswith("hmac-sha256:")
    assert out["choices"][0]["reasoning"].startswith("hmac-sha256:")
    assert out["status"] == "rejected" and out["http_status"] == 400  # metadata untouched
    assert "13812345678" not in repr(make_policy("loki")(r)["thinking"])


def test_loki_full_content_still_redacts_identity_headers():
    # runtime used to skip the policy for full/full, shipping header e-mails raw.
    from exporter.runtime import _policy
    out = _policy("loki", "full", "full", None)(rich_record())
    assert out["prompt"] == rich_record()["prompt"]
    assert out["identity"]["headers"] == {"x-openwebui-user-email": "[EMAIL]"}
    assert _policy("archive", "full", "full", None)(rich_record()) == rich_record()
