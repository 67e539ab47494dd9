"""vLLM's configuration as its own start-up lines state it, per log source.

vLLM prints its settings once per server start (``non-default args: {...}``,
0.6.3-0.8: ``args: Namespace(...)``; :mod:`exporter.parse.startup`). From
that line on, until the next start-up line of the same source, they say:

* ``served``: the served model name(s) (``--served-model-name``, else the
  ``--model`` vLLM was started with, as vLLM itself does);
* ``max_log_len``: vLLM cuts prompts, outputs and token-id lists to this
  length in its log. ``None`` after a start-up line means *known unlimited*;
* ``max_model_len``, ``log_requests``, ``log_outputs``, ``log_deltas``,
  ``middleware`` (the ``--middleware`` classes), and the API server's
  identity (``process``, ``pid``, ``version``, ``host``, ``port``);
* ``frontend``: ``python``, or ``rust`` once the Rust frontend is seen
  (``Launching Rust frontend`` or any ``(RustFrontend pid=N)``/``*.rs`` line).

A flag the operator passed still wins (``--max-log-len``, ``--model``); a
flag that contradicts the log is reported once per (setting, flag, log)
value: a warning and ``vllm_audit_settings_conflicts_total{setting}``.

The state is plain JSON (checkpointed by the pipeline). :func:`lookback`
finds the last start-up line before the point where ``run`` starts reading an
existing log, reading at most :data:`LOOKBACK_BYTES` backwards.

Pure functions, except :func:`lookback` (reads the file it is given).
"""

from __future__ import annotations

from .events import STARTUP
from .parse import parse_line

LOOKBACK_BYTES = 64 * 1024 * 1024  # bounded: a start-up line further back is not looked for
_FIRST_CHUNK = 1024 * 1024  # doubled until found: at most ~2 x LOOKBACK_BYTES read in all
_NEEDLES = (b"non-default args: ", b"args: Namespace(", b"Launching Rust frontend", b"(RustFrontend pid=")


def apply(learned: dict | None, pending: dict | None, data: dict, t: float | None) -> tuple[dict | None, dict | None]:
    """(learned, pending) after one start-up event's ``data``.

    ``pending`` holds what a version line said until the settings line of
    the same start-up comes (vLLM prints the version first)."""
    what = data.get("what")
    ident = {k: data[k] for k in ("process", "pid") if data.get(k) is not None}
    if what == "version":
        version = data.get("version")
        if learned is not None and learned.get("version") == version:
            return learned, pending  # the same start-up's other version line
        if learned is not None and learned.get("known") and learned.get("version") is None and pending is None:
            # the engine core's line comes after the settings line
            return dict(learned, version=version), pending
        return learned, {"version": version, "model": data.get("model"), **ident}
    if what == "args":
        new = _from_args(data.get("args") or {}, full=bool(data.get("full")))
        new.update({k: v for k, v in (pending or {}).items() if v is not None and k != "model"})
        if new["served"] is None and (pending or {}).get("model"):
            new["served"] = [pending["model"]]
        new.update(ident)
        new["t"] = t
        if learned is not None and learned.get("frontend") == "rust" and learned.get("t") == t:
            new["frontend"] = "rust"  # the Rust launcher line of this same start-up
        return new, None
    if what == "rust_frontend":
        if learned is None:
            learned = _from_args(data.get("args") or {}, full=False) if data.get("args") else _unknown()
            learned["t"] = t
        elif learned.get("frontend") == "rust":
            return learned, pending  # most Rust lines: nothing new
        else:
            learned = dict(learned)
            for key, value in _from_args(data["args"], full=False).items() if data.get("args") else ():
                if value is not None and learned.get(key) is None:
                    learned[key] = value
        learned["frontend"] = "rust"
        return learned, pending
    if what == "listening" and learned is not None:
        if any(learned.get(k) != v for k, v in ident.items()):
            learned = dict(learned, **ident)
        return learned, pending
    return learned, pending


def _unknown() -> dict:
    return {"served": None, "model": None, "max_log_len": None, "max_model_len": None,
            "log_requests": None, "log_outputs": None, "log_deltas": None, "middleware": None,
            "frontend": "python", "known": False, "t": None}


def _from_args(args: dict, *, full: bool) -> dict:
    """Settings from vLLM's argument names; an absent key has vLLM's default."""
    out = _unknown()
    out["known"] = True
    model = args.get("model") if isinstance(args.get("model"), str) else None
    if model is None and isinstance(args.get("model_tag"), str):
        model = args["model_tag"]
    served = args.get("served_model_name")
    if isinstance(served, str):
        served = [served]
    if isinstance(served, list) and served and all(isinstance(x, str) for x in served):
        out["served"] = served
    elif model is not None:
        out["served"] = [model]
    out["model"] = model
    out["max_log_len"] = _int(args.get("max_log_len"))
    out["max_model_len"] = _int(args.get("max_model_len"))
    if args.get("disable_log_requests") is True:
        out["log_requests"] = False
    elif args.get("enable_log_requests") is True:
        out["log_requests"] = True
    elif full and args.get("disable_log_requests") is False:
        out["log_requests"] = True  # <=0.10.0: on unless disabled
    out["log_outputs"] = args.get("enable_log_outputs") is True
    out["log_deltas"] = args.get("enable_log_deltas") is not False
    mw = args.get("middleware")
    out["middleware"] = [m for m in mw if isinstance(m, str)] if isinstance(mw, list) else []
    for key in ("host", "port"):
        if isinstance(args.get(key), (str, int)) and not isinstance(args.get(key), bool):
            out[key] = args[key]
    return out


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def entry_cfg(learned: dict | None) -> dict | None:
    """What a request's record needs of the settings in effect when it came
    (stored in the correlator's entry): None when nothing was learned."""
    if learned is None or not learned.get("known"):
        return None
    served = learned.get("served")
    cfg = {"max_log_len": learned.get("max_log_len"), "model": served[0] if served else None}
    version = learned.get("version") or ""
    if learned.get("max_log_len") is None and (version == "0.31" or version.startswith("0.31.")):
        # 0.31 logs the JSON body [:-1] when --max-log-len is unset: only its "}" is missing
        cfg["body_lost_brace"] = True
    return cfg


def conflicts(learned: dict | None, *, model: str | None, max_log_len: int | None) -> list[tuple[str, str, str]]:
    """(setting, flag value, log value) where a flag contradicts the log."""
    if learned is None or not learned.get("known"):
        return []
    out = []
    if max_log_len is not None and max_log_len != learned.get("max_log_len"):
        out.append(("max_log_len", str(max_log_len), str(learned.get("max_log_len"))))
    served = learned.get("served")
    if model is not None and served and model not in served:
        out.append(("model", model, ",".join(served)))
    return out


def lookback(path: str, offset: int, *, logging_prefix: str = "",
             limit: int = LOOKBACK_BYTES) -> tuple[dict | None, dict | None]:
    """(learned, pending) as of byte ``offset`` of ``path``: the start-up lines
    of the last ``limit`` bytes before it, read in order. Lines that continue
    a multi-line record (one ``\\r`` more than the log's usual line end, as
    :class:`~exporter.pipeline.Pipeline` decides) are never read. Errors
    reading the file give (None, None): the caller goes on without."""
    learned = pending = None
    try:
        with open(path, "rb") as f:
            start = max(0, offset - limit)
            # Back from the end, doubling the span until a start-up line is
            # found: the usual case (a server started a while ago) reads little.
            # The span is read whole, so the continuation rule sees every line
            # in order.
            span = _FIRST_CHUNK
            while True:
                lo = max(start, offset - span)
                f.seek(lo)
                chunk = f.read(offset - lo)
                if any(n in chunk for n in _NEEDLES):
                    learned, pending = _scan(chunk, skip_first=lo > 0, prefix=logging_prefix)
                    if learned is not None:
                        return learned, pending
                if lo <= start:
                    break
                span *= 2
    except OSError:
        return None, None
    return learned, pending


def _scan(chunk: bytes, *, skip_first: bool, prefix: str) -> tuple[dict | None, dict | None]:
    learned = pending = None
    lines = chunk.split(b"\n")
    lines.pop()  # after the last newline: not a complete line
    if skip_first and lines:
        lines.pop(0)  # may start mid-line
    crs = [len(x) - len(x.rstrip(b"\r")) for x in lines]
    base = min(crs) if crs else 0
    prev = base
    for raw, cr in zip(lines, crs):
        continued = prev > base
        prev = cr
        if continued or not any(k in raw for k in (b"args", b"vLLM", b"Rust", b".rs:", b"LLM engine (v")):
            continue
        event = parse_line(raw.decode("utf-8", "replace"), logging_prefix=prefix)
        if getattr(event, "kind", None) == STARTUP:
            learned, pending = apply(learned, pending, event.data, None)
    return learned, pending

