import hashlib
import hmac

import pytest

from exporter.chain import GENESIS, Chain, KeyLoadError, digest_kind, load_key
from exporter.record import canonical_bytes, new_record


def _rec(**kw):
    r = new_record()
    r.update(ts="2026-11-22T10:00:00.000Z", request_id="chatcmpl-1", **kw)
    return r


def test_seal_adds_chain_fields_in_order_and_labels_hmac():
    chain = Chain(b"k" * 32)
    sealed = chain.seal(_rec(), 1, GENESIS)
    assert list(sealed)[-3:] == ["seq", "prev_hash", "hash"]
    assert sealed["prev_hash"] == GENESIS
    body = dict(sealed)
    body.pop("hash")
    expected = hmac.new(b"k" * 32, canonical_bytes(body), hashlib.sha256).hexdigest()
    assert sealed["hash"] == "hmac-sha256:" + expected
    assert digest_kind(sealed["hash"]) == "hmac-sha256"


def test_unkeyed_chain_is_labelled_sha256():
    sealed = Chain(None).seal(_rec(), 7, "sha256:" + "0" * 64)
    body = {k: v for k, v in sealed.items() if k != "hash"}
    assert sealed["hash"] == "sha256:" + hashlib.sha256(canonical_bytes(body)).hexdigest()


def test_seal_does_not_mutate_and_reseals_cleanly():
    chain = Chain(b"key")
    rec = _rec()
    first = chain.seal(rec, 1, GENESIS)
    assert "hash" not in rec
    again = chain.seal(first, 1, GENESIS)  # old chain fields are replaced, not hashed
    assert again == first


@pytest.mark.parametrize("field,value", [("output", "changed"), ("seq", 2), ("prev_hash", "x")])
def test_verify_record_detects_any_change(field, value):
    chain = Chain(b"key")
    sealed = chain.seal(_rec(output="hello"), 1, GENESIS)
    assert chain.verify_record(sealed)
    assert not chain.verify_record({**sealed, field: value})


def test_keyed_chain_rejects_unkeyed_hash_and_other_key():
    rec = Chain(None).seal(_rec(), 1, GENESIS)
    assert not Chain(b"key").verify_record(rec)
    assert not Chain(b"other").verify_record(Chain(b"key").seal(_rec(), 1, GENESIS))


def test_repr_never_shows_key():
    assert "supersecret" not in repr(Chain(b"supersecret"))


def test_load_key_file_env_and_errors(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"s3cret-key\n")
    assert load_key(f, "env") == b"s3cret-key"  # the file wins
    assert load_key(None, "from-env") == b"from-env"
    assert load_key(None, "") is None
    assert load_key(None, None) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(KeyLoadError, match="empty"):
        load_key(empty, None)
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_key(tmp_path / "missing", None)


def test_one_secret_reader_for_every_subcommand(tmp_path):
    """A key file ending in spaces gave `replay` and `verify` different keys
    (verify reported a good archive BROKEN), and a binary key crashed `run`
    with a traceback: one reader now, the same bytes everywhere."""
    from exporter.cli import make_parser
    from exporter.settings import build as build_settings
    for raw in (b"key with trailing spaces   \n", b"\xff\x00\xfebinary\r\n"):
        f = tmp_path / "key"
        f.write_bytes(raw)
        argv = ["replay", str(tmp_path / "key"), "--archive-dir", str(tmp_path / "a"), "--hmac-key-file", str(f)]
        replay_key = build_settings("replay", make_parser().parse_args(argv), {}).hmac_key
        assert replay_key == load_key(f, None) == raw.rstrip(b"\r\n")


def test_a_loki_password_file_that_is_not_text_is_one_line_error(tmp_path):
    from exporter.cli import make_parser
    from exporter.settings import SettingsError, build as build_settings
    f = tmp_path / "pw"
    f.write_bytes(b"\xff\xfe")
    argv = ["replay", str(f), "--archive-dir", str(tmp_path / "a"), "--loki-url", "http://loki:3100",
            "--loki-username", "u", "--loki-password-file", str(f)]
    with pytest.raises(SettingsError, match="--loki-password-file: .* is not UTF-8 text"):
        build_settings("replay", make_parser().parse_args(argv), {})
