"""Content policy: what text from the client or the model each destination receives.

Modes per field and destination:

- ``full``   the text as logged;
- ``redact`` every detected PII/secret span replaced by a typed mask
             (``[EMAIL]``, ``[PHONE]``, ``[CN_ID]``, ``[BANK_CARD]``, ``[IPV4]``,
             ``[SECRET]``);
- ``hash``   ``hmac-sha256:<hex>`` of the UTF-8 text: equal texts stay
             comparable (repeated prompts) without being readable; needs a key,
             an unkeyed hash of a short prompt is reversible by guessing;
- ``omit``   ``null``.

Which mode governs which field (every string inside lists and objects too):

- the prompt mode: ``prompt`` and ``error`` (vLLM's 400 validation errors
  echo up to 200 characters of the client's input);
- the output mode: ``output``, every ``choices[]`` field but ``index`` and
  ``finish_reason`` (text, tool calls, reasoning text), and any field this
  module does not know: a field added to the record later is content until
  it is listed in :data:`METADATA_FIELDS`, so it is never shipped raw by
  default;
- ``headers_mode``: everything in ``identity`` but ``api_key_hash``
  (trusted and untrusted header values, the body's ``user`` field).

Defaults: archive ``full``, loki ``redact``. ``headers_mode`` defaults to
``full`` in the archive and ``redact`` elsewhere, so an e-mail in
``x-openwebui-user-email`` does not reach Loki in clear.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.chain import keyed_digest
from exporter.compliance.detect import find_spans

MODES = ("full", "redact", "hash", "omit")
DESTINATIONS = ("archive", "loki")
DEFAULTS = {"archive": ("full", "full"), "loki": ("redact", "redact")}
MASKS = {"email": "[EMAIL]", "phone": "[PHONE]", "cn_id": "[CN_ID]", "bank_card": "[BANK_CARD]",
         "ipv4": "[IPV4]", "secret": "[SECRET]"}


# A value glued to the end of another match can escape one scan: in
# "a@b.cnx0@d.org" the first match ends at "cnx", and the second address's
# start is then refused by the token-boundary lookbehind. Every mask starts
# with "[" and ends with "]", which no detector accepts, so a mask is a hard
# boundary: rescanning the masked text finds what the first scan had to
# skip, and each pass that finds anything turns raw characters into masks,
# so the loop ends. Real text settles in one or two passes; past
# _MAX_PASSES (only contrived input gets there) the text is withheld rather
# than risk a raw value.
_MAX_PASSES = 8
WITHHELD = "[REDACTED]"


def _mask_once(text: str) -> str | None:
    spans = find_spans(text)
    if not spans:
        return None
    out, pos = [], 0
    for start, end, kind in spans:
        out.append(text[pos:start])
        out.append(MASKS[kind])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """``text`` with every detected span replaced by its typed mask, rescanned
    until no detector finds anything (see above)."""
    for _ in range(_MAX_PASSES):
        masked = _mask_once(text)
        if masked is None:
            return text
        text = masked
    return text if _mask_once(text) is None else WITHHELD


# Fields the exporter itself produced (times, counts, enumerations, hashes)
# or the identity a record is about (``user``, ``client``: see the README's
# user-label section for how labels treat them): never rewritten.
METADATA_FIELDS = frozenset((
    "ts", "request_id", "model", "user", "endpoint", "stream", "prompt_tokens", "completion_tokens",
    "tokens_source", "finish_reason", "status", "empty_response", "latency_seconds", "params", "flags",
    "ttft_seconds", "http_status", "client", "sources", "engine", "seq", "prev_hash", "hash", "identity_source",
))
PROMPT_FIELDS = ("prompt", "error")
_CHOICE_METADATA = frozenset(("index", "finish_reason"))
_IDENTITY_METADATA = frozenset(("api_key_hash", "invalid_reason"))


def _deep(leaf: Callable[[str], object]) -> Callable[[object], object]:
    """Apply ``leaf`` to every string in a JSON value (keys stay: they are
    structure, such as header names or ``function``/``arguments``)."""
    def walk(v):
        if isinstance(v, str):
            return leaf(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v
    return walk


def _transform(mode: str, key: bytes | None) -> Callable[[object], object]:
    if mode == "full":
        return lambda v: v
    if mode == "omit":
        return _deep(lambda s: None)
    if mode == "redact":
        return _deep(redact)
    if mode == "hash":
        if key is None:
            raise ValueError("content mode 'hash' needs an HMAC key (--hmac-key-file or VLLM_AUDIT_HMAC_KEY)")
        return _deep(lambda s: keyed_digest(key, s.encode()))
    raise ValueError(f"unknown content mode {mode!r}; expected one of {', '.join(MODES)}")


def make_policy(destination: str, prompt_mode: str | None = None, output_mode: str | None = None,
                key: bytes | None = None, *, headers_mode: str | None = None) -> Callable[[dict], dict]:
    """A function record -> NEW record with the destination's content policy applied.

    ``None`` modes take the destination's default. The input record is never
    mutated (the same record goes to the archive and to Loki); untouched
    nested values are shared with it, so callers must not mutate the result's
    nested objects either.
    """
    if destination not in DESTINATIONS:
        raise ValueError(f"unknown destination {destination!r}; expected one of {', '.join(DESTINATIONS)}")
    d_prompt, d_output = DEFAULTS[destination]
    prompt_mode, output_mode = prompt_mode or d_prompt, output_mode or d_output
    headers_mode = headers_mode or ("full" if destination == "archive" else "redact")
    if headers_mode == "hash" and key is None:
        headers_mode = "redact"  # headers are metadata: never fail startup over them
    on_prompt, on_output = _transform(prompt_mode, key), _transform(output_mode, key)
    on_header = _transform(headers_mode, key)
    identity_untouched = headers_mode == "full"
    if prompt_mode == output_mode == "full" and identity_untouched:
        return lambda record: dict(record)

    def on_choice(c):
        if not isinstance(c, dict):
            return on_output(c)
        out = {k: v if k in _CHOICE_METADATA else on_output(v) for k, v in c.items()}
        out.setdefault("text", None)
        return out

    def apply(record: dict) -> dict:
        out = {}
        for name, value in record.items():
            if name in METADATA_FIELDS or value is None:
                out[name] = value
            elif name in PROMPT_FIELDS:
                out[name] = on_prompt(value)
            elif name == "choices":
                out[name] = [on_choice(c) for c in value] if isinstance(value, list) else on_output(value)
            elif name == "identity":
                out[name] = value if identity_untouched or not isinstance(value, dict) else {
                    k: v if k in _IDENTITY_METADATA else on_header(v) for k, v in value.items()}
            else:  # output, and any field not classified above
                out[name] = on_output(value)
        return out

    return apply
