"""The settings of the small subcommands, from the same option table:
``witness`` (a C2SP tlog-witness) and ``alert-log`` (the stack's Alertmanager
receiver)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .read import SettingsError, host_port, http_url, read_secret_file, resolve
from .tlog import split_key


@dataclass(frozen=True)
class WitnessSettings:
    host: str
    port: int
    key_file: Path
    state_dir: Path | None
    logs: dict = field(default_factory=dict)  # origin -> [note.Verifier]
    signer: object | None = field(default=None, repr=False)  # note.Signer (None with init_key)
    init_key: bool = False
    name: str | None = None


def witness_settings(ns: argparse.Namespace, environ: Mapping[str, str]) -> WitnessSettings:
    """The validated settings of the ``witness`` subcommand."""
    v = resolve("witness", ns, environ)
    host, port = host_port(v["witness_listen"], "--listen")
    if v.get("witness_key_file") is None:
        raise SettingsError("witness: give --key-file FILE (env VLLM_AUDIT_KEY_FILE)")
    key_file = Path(v["witness_key_file"])
    if v.get("witness_init_key"):
        import socket
        return WitnessSettings(host, port, key_file, None, init_key=True,
                               name=v.get("witness_name") or f"{socket.gethostname()}/witness")
    from exporter.transparency.note import NoteError, parse_signer
    raw = read_secret_file(key_file, "--key-file")
    try:
        signer = parse_signer(raw.decode("ascii"))
    except (UnicodeDecodeError, NoteError) as exc:
        raise SettingsError(f"--key-file: {key_file}: {exc}") from None
    if v.get("state_dir") is None:
        raise SettingsError("witness: give --state-dir DIR (env VLLM_AUDIT_STATE_DIR)")
    logs: dict = {}
    for item in v.get("witness_log_keys") or ():
        origin, key = split_key(item, "--log-key")
        if key.alg != 0x01:
            raise SettingsError(f"--log-key {item!r}: a log signs checkpoints with an Ed25519 (type 0x01) key")
        logs.setdefault(origin or key.name, []).append(key)
    if not logs:
        raise SettingsError("witness: give at least one --log-key [ORIGIN=]VERIFIER_KEY (env VLLM_AUDIT_LOG_KEY)")
    return WitnessSettings(host, port, key_file, Path(v["state_dir"]), logs=logs, signer=signer)


def alert_log_options(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict, str | None]:
    """The alert-log command's resolved options and its SMTP password, validated."""
    v = resolve("alert-log", ns, environ)
    host_port(v["listen_address"], "--web.listen-address")
    for dest in ("alert_webhook_url", "alert_slack_webhook_url"):
        http_url(v.get(dest), f"--{dest.replace('_', '-')}")
    if v.get("alert_email_to") and "@" not in v["alert_email_to"]:
        raise SettingsError(f"--alert-email-to: not an e-mail address: {v['alert_email_to']!r}")
    password = read_secret_file(v.get("alert_smtp_password_file"), "--alert-smtp-password-file",
                                 text=True)
    return v, password
