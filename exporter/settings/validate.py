"""Validation, once: the resolved values of ``run`` and ``replay`` checked
and turned into the frozen :class:`~exporter.settings.model.Settings`
(:func:`build`, :func:`load`), with the Loki connection and the prices that
``export`` shares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exporter.chain import KeyLoadError, load_key
from exporter.labels import USER_LABEL_MODES

from .model import Settings
from .options import POLICY_MODES
from .read import SettingsError, add_options, host_port, http_url, positive, read_secret_file, resolve
from .tlog import check_signing_key, checked_tsa_url, parse_witnesses


def load(command: str, argv: list[str], environ: Mapping[str, str]) -> Settings:
    """The validated settings of ``command`` (``run`` or ``replay``) from an
    argv as the CLI takes it after the subcommand: for the demo, benchmarks
    and tests, without the CLI's whole parser (``replay``'s file arguments
    are its one positional)."""
    parser = argparse.ArgumentParser(prog=f"vllm-audit-exporter {command}")
    if command == "replay":
        parser.add_argument("files", nargs="*", metavar="FILE")
    add_options(parser, command)
    return build(command, parser.parse_args(argv), environ)


def build(command: str, ns: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags, env and defaults; validate; return the frozen settings."""
    return _validate(command, resolve(command, ns, environ), ns, environ)


def pricing(v: dict[str, Any]):
    """The validated GPU-hour prices (:class:`exporter.cost.Pricing`) of
    ``run``, ``replay`` and ``export``."""
    from exporter.cost import PricingError, parse_pricing
    try:
        return parse_pricing(v.get("gpu_hour_price"), v.get("gpu_hour_price_model"))
    except PricingError as exc:
        raise SettingsError(str(exc)) from None


def loki_settings(v: dict[str, Any]):
    """The typed, validated Loki connection (:class:`exporter.loki.LokiSettings`)
    from resolved option values, or None without ``--loki-url``: built here
    once, for ``run``/``replay`` (push) and ``export --source loki`` (query),
    so both reach a Loki with the same auth and TLS."""
    if not v.get("loki_url"):
        return None
    from exporter.loki.config import LokiSettings
    http_url(v["loki_url"], "--loki-url")
    password = read_secret_file(v.get("loki_password_file"), "--loki-password-file", text=True) \
        or v.get("loki_password")
    token = read_secret_file(v.get("loki_bearer_token_file"), "--loki-bearer-token-file", text=True) \
        or v.get("loki_bearer_token")
    if password and not v.get("loki_username"):
        raise SettingsError("--loki-password given without --loki-username")
    if password and token:
        raise SettingsError("Loki: choose basic auth or a bearer token, not both")
    for dest in ("loki_ca_file", "loki_client_cert_file", "loki_client_key_file"):
        if v.get(dest) is not None and not Path(v[dest]).is_file():
            raise SettingsError(f"--{dest.replace('_', '-')}: {v[dest]}: no such file")
    if v.get("loki_timeout") is not None and v["loki_timeout"] <= 0:
        raise SettingsError(f"--loki-timeout: must be > 0, got {v['loki_timeout']}")
    push = {"structured_metadata": bool(v.get("loki_structured_metadata")), "job": v.get("loki_job"),
            "batch_wait": v["loki_batch_wait"], "batch_bytes": v["loki_batch_bytes"]} \
        if "loki_batch_wait" in v else {}
    try:
        return LokiSettings(url=v["loki_url"].rstrip("/"), tenant=v.get("loki_tenant"),
                            username=v.get("loki_username"), password=password, bearer_token=token,
                            ca_file=v.get("loki_ca_file") and str(v["loki_ca_file"]),
                            insecure=bool(v.get("loki_insecure_skip_verify")),
                            client_cert_file=v.get("loki_client_cert_file") and str(v["loki_client_cert_file"]),
                            client_key_file=v.get("loki_client_key_file") and str(v["loki_client_key_file"]),
                            timeout_seconds=v.get("loki_timeout") or 10.0, **push)
    except ValueError as exc:
        raise SettingsError(f"Loki: {exc}") from None


MAX_INSTANCE_LEN = 253  # a DNS name; NAMESPACE/POD (63 + 1 + 63) fits


def _check_instance(value: str | None) -> None:
    # It becomes a Loki label value and part of every hashed record: printable,
    # bounded, never empty (an empty label would be dropped by Loki).
    if value is None:
        return
    if not value or len(value) > MAX_INSTANCE_LEN or not value.isprintable() or value != value.strip():
        raise SettingsError(f"--instance: expected 1..{MAX_INSTANCE_LEN} printable characters "
                            f"without surrounding spaces, got {value!r}")


def _validate(command: str, v: dict, ns: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    for dest, flag in (("scrape_interval", "--scrape-interval"), ("request_timeout", "--request-timeout"),
                       ("max_inflight", "--max-inflight"), ("max_users", "--max-users"),
                       ("oversized_input_tokens", "--oversized-input-tokens"),
                       ("checkpoint_interval", "--checkpoint-interval"), ("max_log_len", "--max-log-len"),
                       ("loki_batch_wait", "--loki-batch-wait"), ("loki_batch_bytes", "--loki-batch-bytes")):
        positive(v, dest, flag)
    positive(v, "sign_interval", "--sign-interval")
    positive(v, "merge_grace", "--merge-grace", allow_zero=True)
    positive(v, "retention_compress_days", "--retention-compress-days")
    positive(v, "retention_delete_days", "--retention-delete-days")
    positive(v, "max_thread_restarts", "--max-thread-restarts", allow_zero=True)
    if (v.get("retention_compress_days") and v.get("retention_delete_days")
            and v["retention_delete_days"] <= v["retention_compress_days"]):
        raise SettingsError("--retention-delete-days must be greater than --retention-compress-days")
    _check_instance(v.get("instance"))
    try:
        ZoneInfo(v["server_timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"--server-timezone: unknown zone {v['server_timezone']!r} "
                            "(use an IANA name such as UTC or Asia/Shanghai)") from None
    if v["user_label_mode"] not in USER_LABEL_MODES:
        raise SettingsError(f"--user-label-mode: {v['user_label_mode']!r} is not one of "
                            f"{', '.join(USER_LABEL_MODES)}")
    for dest in ("loki_prompt_policy", "loki_output_policy", "archive_prompt_policy",
                 "archive_output_policy"):
        if v[dest] not in POLICY_MODES:
            flag = "--" + dest.replace("_", "-")
            raise SettingsError(f"{flag}: {v[dest]!r} is not one of {', '.join(POLICY_MODES)}")

    if v.get("from_start") and v.get("from_end"):
        raise SettingsError("--from-start and --from-end: choose one")
    host, port = "127.0.0.1", 9400
    if command == "run":
        if not v["logs"]:
            raise SettingsError("run: give at least one --log FILE (or env VLLM_AUDIT_LOG)")
        if v["logs"].count("-") > 1:
            raise SettingsError("--log -: stdin can be given only once")
        host, port = host_port(v["listen_address"], "--web.listen-address")
        http_url(v.get("vllm_url"), "--vllm-url")
    replay_files: tuple[str, ...] = ()
    if command == "replay":
        replay_files = tuple(getattr(ns, "files", None) or ())
        if not replay_files:
            raise SettingsError("replay: give at least one log file")
        for f in replay_files:
            if f != "-" and not Path(f).is_file():
                raise SettingsError(f"replay: {f}: no such file")
    if v.get("tokenizer") is not None and not Path(v["tokenizer"]).is_dir():
        raise SettingsError(f"--tokenizer: {v['tokenizer']} is not a directory")

    try:
        hmac_key = load_key(v.get("hmac_key_file"), v.get("hmac_key"), "--hmac-key-file")
    except KeyLoadError as exc:
        raise SettingsError(str(exc)) from None
    loki = loki_settings(v)
    prices = pricing(v)
    archive_dir = Path(v["archive_dir"])
    signing_key_file = v.get("signing_key_file")
    if signing_key_file is not None:
        check_signing_key(Path(signing_key_file))
    origin = v.get("log_origin")
    if origin is None or not origin.strip():
        import socket
        origin = f"{socket.gethostname() or 'localhost'}/vllm-audit"
    if "\n" in origin or origin != origin.strip():
        raise SettingsError(f"--log-origin: {origin!r} must be one line without leading or trailing spaces")
    return Settings(
        command=command,
        logs=tuple(v.get("logs") or ()),
        replay_files=replay_files,
        archive_dir=archive_dir,
        state_dir=Path(v["state_dir"]) if v.get("state_dir") else archive_dir / ".state",
        from_start=not v.get("from_end"),
        prune_rotated=bool(v.get("prune_rotated")),
        vllm_url=(v.get("vllm_url") or None),
        scrape_interval=v.get("scrape_interval") or 15.0,
        listen_host=host, listen_port=port,
        instance=v.get("instance"),
        model=v.get("model"),
        server_timezone=v["server_timezone"],
        max_log_len=v.get("max_log_len"),
        tokenizer=v.get("tokenizer"),
        request_timeout=v["request_timeout"],
        merge_grace=v["merge_grace"],
        max_inflight=v["max_inflight"],
        max_users=v["max_users"],
        user_label=not v.get("no_user_label"),
        user_label_mode=v["user_label_mode"],
        oversized_input_tokens=v["oversized_input_tokens"],
        checkpoint_interval=v["checkpoint_interval"],
        hmac_key=hmac_key,
        loki=loki,
        archive_prompt_policy=v["archive_prompt_policy"],
        archive_output_policy=v["archive_output_policy"],
        loki_prompt_policy=v["loki_prompt_policy"],
        loki_output_policy=v["loki_output_policy"],
        progress=not v.get("no_progress"),
        vllm_logging_prefix=v.get("vllm_logging_prefix") or "",
        retention_compress_days=v.get("retention_compress_days"),
        retention_delete_days=v.get("retention_delete_days"),
        max_thread_restarts=v.get("max_thread_restarts", 5),
        signing_key_file=Path(signing_key_file) if signing_key_file is not None else None,
        sign_interval=v.get("sign_interval") or 10.0,
        log_origin=origin,
        witnesses=parse_witnesses(v),
        witness_timeout=v["witness_timeout"],
        tsa_url=checked_tsa_url(v),
        tsa_interval=v["tsa_interval"],
        tsa_ca_file=v.get("tsa_ca_file"),
        pricing=prices,
    )
