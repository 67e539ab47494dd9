"""Where the values come from, and the error when one is bad: the command
line (argparse flags made from the option table), else the environment, else
the default, converted to the option's kind; secret files, through the one
secret reader (:mod:`exporter.secrets`); and the checks of a number, of
HOST:PORT and of an http(s) URL that every validator shares, each failing
with one line that names the flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from exporter.secrets import SecretError, read_secret, read_secret_text

from .options import OPTIONS, Option


class SettingsError(ValueError):
    """Bad configuration: the message names the flag, env var and problem."""


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    for opt in OPTIONS:
        if command not in opt.commands:
            continue
        shown = "" if opt.default in (None, [], False) else f" (default: {opt.default})"
        help_text = f"{opt.help}{shown} [env {opt.env}]"
        if opt.kind == "bool":
            parser.add_argument(opt.flag, dest=opt.dest, action="store_const", const=True,
                                default=None, help=help_text)
        elif opt.kind == "list":
            parser.add_argument(opt.flag, dest=opt.dest, action="append", default=None,
                                metavar=opt.metavar, help=help_text)
        else:
            parser.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar,
                                help=help_text)


def _convert(opt: Option, raw: Any, origin: str) -> Any:
    try:
        if opt.kind == "bool":
            if isinstance(raw, bool):
                return raw
            low = str(raw).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true/false, got {raw!r}")
        if opt.kind == "list":
            if isinstance(raw, list):
                return [str(x) for x in raw]
            return [p.strip() for p in str(raw).split(opt.sep) if p.strip()]
        if opt.kind == "int":
            return int(raw)
        if opt.kind == "float":
            return float(raw)
        if opt.kind == "path":
            return Path(raw)
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"{opt.flag} ({origin}): {exc}") from None


def resolve(command: str, ns: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Flag, else env, else default, converted, for each option of ``command``
    (no validation: the small subcommands take these values as they are)."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if command not in opt.commands:
            continue
        raw = getattr(ns, opt.dest, None)
        if raw is not None:
            values[opt.dest] = _convert(opt, raw, "flag")
        elif environ.get(opt.env, "").strip():
            # An empty variable means the default (compose passes `${VAR:-}`
            # through as ""), the same rule as the middleware's.
            values[opt.dest] = _convert(opt, environ[opt.env], f"env {opt.env}")
        else:
            values[opt.dest] = opt.default
    return values


def read_secret_file(path: Path | None, flag: str, *, text: bool = False) -> bytes | str | None:
    """The one secret reader (:mod:`exporter.secrets`), errors as SettingsError."""
    if path is None:
        return None
    try:
        return read_secret_text(path, flag) if text else read_secret(path, flag)
    except SecretError as exc:
        raise SettingsError(str(exc)) from None


def positive(values: dict, dest: str, flag: str, allow_zero: bool = False) -> None:
    v = values.get(dest)
    if v is None:
        return
    if v < 0 or (v == 0 and not allow_zero):
        raise SettingsError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")


def host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise SettingsError(f"{flag}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def http_url(value: str | None, flag: str) -> None:
    """An http(s) URL, or none given."""
    if value and not value.startswith(("http://", "https://")):
        raise SettingsError(f"{flag}: expected an http(s) URL, got {value!r}")
