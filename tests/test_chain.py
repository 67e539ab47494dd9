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
