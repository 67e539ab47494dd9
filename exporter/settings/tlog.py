"""The signed log's settings: the signing key (a key, and replaceable), the
witnesses (``URL=VERIFIER_KEY``), the RFC 3161 time-stamping authority, and
:func:`split_key`, which the ``witness`` subcommand's ``--log-key`` shares."""

from __future__ import annotations

from pathlib import Path

from .read import SettingsError, http_url, positive


def check_signing_key(path: Path) -> None:
    """Readable, a signing key, and replaceable (each day's key replaces it)."""
    import os
    from exporter.transparency.keys import SigningKeyError, load_signer
    try:
        load_signer(path)
    except SigningKeyError as exc:
        raise SettingsError(str(exc)) from None
    if not os.access(path.parent, os.W_OK):
        raise SettingsError(f"--signing-key-file: {path.parent} is not writable (the key is replaced "
                            "by each new day's key, erasing the old one)")


def split_key(text: str, flag: str):
    """(what, verifier) of ``WHAT=VERIFIER_KEY``; ``what`` is None without '='.

    A verifier key holds no '=' but its base64 padding, and a URL may hold
    '=' (a query), so the split is at the last '=' before the padding."""
    from exporter.transparency.note import NoteError, parse_verifier
    body = text.rstrip("=")
    left, sep, key = body.rpartition("=")
    key += text[len(body):]
    try:
        return (left if sep else None), parse_verifier(key)
    except NoteError as exc:
        raise SettingsError(f"{flag} {text!r}: {exc}") from None


def parse_witnesses(v: dict) -> tuple:
    out, names = [], set()
    for item in v.get("witnesses") or ():
        url, key = split_key(item, "--witness")
        if not url or not url.startswith(("http://", "https://")):
            raise SettingsError(f"--witness {item!r}: expected URL=VERIFIER_KEY with an http(s) URL")
        if key.alg != 0x04:
            raise SettingsError(f"--witness {item!r}: not a cosignature/v1 (type 0x04) witness key")
        if key.name in names:
            raise SettingsError(f"--witness: two witnesses named {key.name!r}")
        names.add(key.name)
        out.append((url.rstrip("/"), key))
    positive(v, "witness_timeout", "--witness-timeout")
    return tuple(out)


def checked_tsa_url(v: dict) -> str | None:
    url = v.get("tsa_url") or None
    http_url(url, "--tsa-url")
    if url:
        import shutil
        if shutil.which("openssl") is None:
            raise SettingsError("--tsa-url: the openssl command is needed for RFC 3161 (apt-get install openssl)")
    positive(v, "tsa_interval", "--tsa-interval")
    if v.get("tsa_ca_file") is not None and not Path(v["tsa_ca_file"]).is_file():
        raise SettingsError(f"--tsa-ca-file: {v['tsa_ca_file']}: no such file")
    return url
