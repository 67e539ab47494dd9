"""Read compose.yaml (+ overrides) and an .env the way Docker Compose does.

What the stack runner (tests/stack/runner.py) and the static checks need of
Compose, and nothing else:

- ``.env`` (dotenv: ``KEY=VALUE``, ``#`` comments, quotes, ``export``);
  the process environment wins over it, as in Compose.
- Interpolation of every string, keys of ``x-`` extensions included:
  ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset *or empty*),
  ``${VAR-default}`` (unset only), ``${VAR:?message}`` / ``${VAR?message}``
  (an error naming the variable), ``${VAR:+alt}`` / ``${VAR+alt}``, ``$$``.
  Defaults may nest (``${A:-${B}}``). Errors are collected, so one run names
  every missing variable, like ``docker compose config``.
- YAML merge keys (``<<: *anchor``) and the ``!reset`` tag; files merged like
  Compose's override rules: mappings merge, ``!reset`` removes, sequences of
  ``ports``/``expose``/``volumes`` ... replace (enough for compose.cpu.yaml
  and compose.ports.yaml).

Normalised views used by the runner: ``environment`` as a dict of strings,
``volumes`` as (source, target, options), ``depends_on`` as a dict of
conditions, ``healthcheck`` with seconds.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class Reset:
    """Compose's ``!reset`` tag: drop the value inherited from the base file."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


class InterpolationError(ValueError):
    """``${VAR:?message}`` with VAR unset (or empty): Compose refuses to start."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if value[:1] in ("'", '"') and value.rfind(value[0]) > 0:
            value = value[1:value.rfind(value[0])]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        out[key] = value
    return out


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: dict[str, str], errors: list[str]) -> str:
    """One string, Compose's rules (module docstring)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:
                errors.append(f"unterminated ${{ in {text!r}")
                return text
            out.append(_expr(text[i + 2:j - 1], env, errors))
            i = j
            continue
        m = _NAME.match(text, i + 1)
        if m:
            out.append(env.get(m.group(0), ""))
            i = m.end()
            continue
        out.append("$")
        i += 1
    return "".join(out)


def _expr(body: str, env: dict[str, str], errors: list[str]) -> str:
    m = _NAME.match(body)
    if not m:
        errors.append(f"invalid interpolation ${{{body}}}")
        return ""
    name, rest = m.group(0), body[m.end():]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op):]
            break
    else:
        errors.append(f"invalid interpolation ${{{body}}}")
        return ""
    unset_or_empty = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env, errors) if unset_or_empty else value
    if op in (":?", "?"):
        if unset_or_empty:
            errors.append(f"required variable {name} is missing a value: "
                          f"{interpolate(arg, env, errors)}")
            return ""
        return value
    return "" if unset_or_empty else interpolate(arg, env, errors)


def _walk(doc, env, errors):
    if isinstance(doc, dict):
        return {k: _walk(v, env, errors) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_walk(v, env, errors) for v in doc]
    if isinstance(doc, str):
        return interpolate(doc, env, errors)
    return doc


def strip_resets(doc):
    if isinstance(doc, dict):
        return {k: strip_resets(v) for k, v in doc.items() if not isinstance(v, Reset)}
    if isinstance(doc, list):
        return [strip_resets(v) for v in doc]
    return doc


def merge(base, override):
    """Compose merge, enough for our overrides: maps merge, ``!reset`` removes, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value) if key in base else strip_resets(value)
        return out
    return copy.deepcopy(strip_resets(override))


def load_yaml(path: Path) -> dict:
    return yaml.load(Path(path).read_text(), Loader=ComposeLoader)


def environment_for(project_dir: Path, env_file: Path | None, process_env: dict[str, str]) -> dict[str, str]:
    env = parse_dotenv(env_file.read_text()) if env_file and env_file.exists() else {}
    env.update(process_env)  # the shell wins over .env, as in Compose
    return env


def load_project(files: list[Path], env: dict[str, str]) -> dict:
    """Merged, interpolated model; InterpolationError naming every missing variable."""
    errors: list[str] = []
    merged: dict = {}
    for f in files:
        doc = _walk(load_yaml(f), env, errors)
        merged = merge(merged, doc) if merged else strip_resets(doc)
    if errors:
        raise InterpolationError(errors)
    return merged


# --------------------------------------------------------------------------- normalised views

@dataclass(frozen=True)
class Mount:
    source: str  # "./path" (bind, relative to the project) or a named volume
    target: str
    read_only: bool
    options: tuple[str, ...]

    @property
    def bind(self) -> bool:
        return self.source.startswith(("./", "../", "/"))


def mounts(service: dict) -> list[Mount]:
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append(Mount(v["source"], v["target"], bool(v.get("read_only")), ()))
            continue
        parts = v.split(":")
        opts = tuple(parts[2].split(",")) if len(parts) > 2 else ()
        out.append(Mount(parts[0], parts[1], "ro" in opts, opts))
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in env.items()}


def depends_on(service: dict) -> dict[str, dict]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {d: {"condition": "service_started", "required": True} for d in dep}
    return {d: {"condition": c.get("condition", "service_started"), "required": c.get("required", True)}
            for d, c in dep.items()}


def duration(text: str | None, default: float) -> float:
    """Compose durations: 1m30s, 15s, 500ms, 2h."""
    if not text:
        return default
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", str(text)):
        total += float(num) * {"ms": 1e-3, "us": 1e-6, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def healthcheck(service: dict) -> dict | None:
    hc = service.get("healthcheck")
    if not hc or hc.get("disable"):
        return None
    return {"test": hc["test"], "interval": duration(hc.get("interval"), 30),
            "timeout": duration(hc.get("timeout"), 30), "retries": int(hc.get("retries", 3)),
            "start_period": duration(hc.get("start_period"), 0),
            "start_interval": duration(hc.get("start_interval"), 5)}


def container_ports(service: dict) -> set[int]:
    """Ports the service listens on: the container side of ``ports`` and ``expose``."""
    out = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports") or []}
    out |= {int(str(p).split("/")[0]) for p in service.get("expose") or []}
    return out
