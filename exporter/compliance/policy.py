"""Content policy: what prompt/output text each destination receives.

Modes per field and destination:

- ``full``   the text as logged;
- ``redact`` every detected PII/secret span replaced by a typed mask
             (``[EMAIL]``, ``[PHONE]``, ``[CN_ID]``, ``[BANK_CARD]``, ``[IPV4]``,
             ``[SECRET]``);
- ``hash``   ``hmac-sha256:<hex>`` of the UTF-8 text: equal texts stay
             comparable (repeated prompts) without being readable; needs a key,
             an unkeyed hash of a short prompt is reversible by guessing;
- ``omit``   ``null``.

Defaults: archive ``full``, loki ``redact``. ``identity.headers`` values follow
``headers_mode`` (default: ``full`` in the archive, ``redact`` elsewhere) so an
e-mail in ``x-openwebui-user-email`` does not reach Loki in clear.
"""

from __future__ import annotations

import copy
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


def _transform(mode: str, key: bytes | None) -> Callable[[object], object]:
    if mode == "full":
        return lambda v: v
    if mode == "omit":
        return lambda v: None
    if mode == "redact":
        return lambda v: redact(v) if isinstance(v, str) else v
    if mode == "hash":
        if key is None:
            raise ValueError("content mode 'hash' needs an HMAC key (--hmac-key-file or VLLM_AUDIT_HMAC_KEY)")
        return lambda v: keyed_digest(key, v.encode()) if isinstance(v, str) else v
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

    def apply(record: dict) -> dict:
        out = dict(record)
        if "prompt" in record:
            out["prompt"] = on_prompt(record["prompt"])
        if "output" in record:
            out["output"] = on_output(record["output"])
        choices = record.get("choices")
        if isinstance(choices, list):
            out["choices"] = [
                {**c, "text": on_output(c.get("text"))} if isinstance(c, dict) else c for c in choices
            ]
        identity = record.get("identity")
        if not identity_untouched and isinstance(identity, dict) and isinstance(identity.get("headers"), dict):
            ident = copy.copy(identity)
            ident["headers"] = {k: on_header(v) for k, v in identity["headers"].items()}
            out["identity"] = ident
        return out

    return apply
