"""One settings object, built once at the edge (the CLI) from flags and env.

Every flag has an environment variable: ``--web.listen-address`` →
``VLLM_AUDIT_WEB_LISTEN_ADDRESS``, ``--loki-url`` → ``VLLM_AUDIT_LOKI_URL``.
Precedence: command line, then environment, then default. Repeatable flags
(``--log``) take a comma-separated list from the environment; those whose
values are keys (``--witness``, ``--log-key``) a whitespace-separated one
(space or newline: a key name may hold a comma, never a space). Validation runs
once, in :func:`build`, and raises :class:`SettingsError` with a message a
person can act on; nothing else in the package reads the environment.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exporter.labels import USER_LABEL_MODES
from exporter.secrets import SecretError, read_secret, read_secret_text

ENV_PREFIX = "VLLM_AUDIT_"


class SettingsError(ValueError):
    """Bad configuration: the message names the flag, env var and problem."""


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    help: str
    default: Any = None
    kind: str = "str"  # str, int, float, bool, path, list
    commands: tuple[str, ...] = ("run", "replay")
    metavar: str | None = None
    sep: str | None = ","  # how a list is split in the environment (None: whitespace)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace(".", "_").replace("-", "_").upper()


_BOTH = ("run", "replay")
_LOKI = (*_BOTH, "export")  # the connection: the pusher and export --source loki share it
OPTIONS: tuple[Option, ...] = (
    Option("--log", "logs", "vLLM log file to tail (repeatable; '-' = stdin). Give the audit "
           "middleware's JSONL file here too.", [], "list", ("run",), "FILE"),
    Option("--archive-dir", "archive_dir", "directory of the local audit archive (JSONL, one file "
           "per UTC day) and of the exporter's state", Path("audit-archive"), "path", _BOTH, "DIR"),
    Option("--state-dir", "state_dir", "where checkpoints live (default: ARCHIVE_DIR/.state)",
           None, "path", (*_BOTH, "verify", "retention"), "DIR"),
    # First start (no checkpoint): read what vLLM already wrote, so nothing it
    # served before the exporter's first start is lost. --from-end opts out.
    Option("--from-start", "from_start", "on the first start (no checkpoint) read existing log "
           "files from their start; this is the default, kept for old command lines", False,
           "bool", ("run",)),
    Option("--from-end", "from_end", "on the first start (no checkpoint) skip what the log "
           "files already hold and read only new lines; ignored once a checkpoint exists",
           False, "bool", ("run",)),
    # Deleting files the user's writer made must be asked for (compose does).
    Option("--prune-rotated", "prune_rotated", "delete rotated generations of a --log file "
           "(<log>.1, <log>.2, ...) once a durable checkpoint shows they were read to their end, "
           "so the writer's ring holds only unread data", False, "bool", ("run",)),
    Option("--vllm-url", "vllm_url", "vLLM base URL; its /metrics is scraped for up and "
           "audit completeness (empty: no scrape)", None, "str", ("run",), "URL"),
    Option("--scrape-interval", "scrape_interval", "seconds between vLLM /metrics scrapes",
           15.0, "float", ("run",), "SECONDS"),
    Option("--web.listen-address", "listen_address", "address for /metrics, /health and / "
           "(alert-log: where Alertmanager posts)", "127.0.0.1:9400", "str", ("run", "alert-log"),
           "HOST:PORT"),
    Option("--instance", "instance", "replica identity written into every record's `instance` "
           "field and as the Loki label `vllm_instance` (on Kubernetes: NAMESPACE/POD from the "
           "downward API)", None, "str", _BOTH, "NAME"),
    Option("--model", "model", "served model name to record when the client's does not show; "
           "overrides the name vLLM's start-up line gives (a contradiction is reported)", None,
           "str", _BOTH, "NAME"),
    Option("--server-timezone", "server_timezone", "IANA zone of vLLM's log timestamps (its "
           "text format has no zone)", "UTC", "str", _BOTH, "ZONE"),
    Option("--vllm-logging-prefix", "vllm_logging_prefix", "vLLM's VLLM_LOGGING_PREFIX, if set "
           "there (written before every line); other unknown prefixes are refused", "", "str",
           _BOTH, "TEXT"),
    Option("--max-log-len", "max_log_len", "vLLM's --max-log-len: logged prompts, outputs and "
           "token-id lists of this length are treated as truncated; default: what vLLM's start-up "
           "line says (a contradiction is reported)", None, "int", _BOTH, "N"),
    Option("--tokenizer", "tokenizer", "local tokenizer directory of the served model (offline); "
           "counts tokens when the log has text but no ids", None, "path", _BOTH, "PATH"),
    Option("--request-timeout", "request_timeout", "seconds (log time) after a request's last "
           "event before it is recorded as incomplete", 300.0, "float", _BOTH, "SECONDS"),
    Option("--merge-grace", "merge_grace", "seconds to wait for the other source (vLLM log / "
           "middleware) before a finished request is recorded; run does not wait for a request "
           "both sources have ended", 0.5, "float", _BOTH, "SECONDS"),
    Option("--max-inflight", "max_inflight", "bound on requests held in memory; the oldest is "
           "recorded as incomplete beyond it (counted)", 10000, "int", _BOTH, "N"),
    Option("--max-users", "max_users", "distinct values of the metric/Loki 'user' label; later "
           "users fold into __other__ (sums stay exact, the full user stays in the record)",
           500, "int", _BOTH, "N"),
    Option("--no-user-label", "no_user_label", "drop the 'user' label entirely", False, "bool", _BOTH),
    Option("--user-label-mode", "user_label_mode", "'user' label values: pseudonymous (an e-mail, "
           "phone or other personal data becomes u:<keyed hash>), hashed (every user), raw",
           "pseudonymous", "str", _BOTH, "MODE"),
    Option("--oversized-input-tokens", "oversized_input_tokens", "prompt tokens above which an "
           "input counts as oversized", 2048, "int", _BOTH, "N"),
    Option("--checkpoint-interval", "checkpoint_interval", "seconds between archive fsync + "
           "checkpoint (the Loki pusher reads only checkpointed records); widened while a commit is "
           "costly, so commits take at most 5%% of the time (gap at most 10 s)", 0.25, "float", _BOTH,
           "SECONDS"),
    Option("--hmac-key-file", "hmac_key_file", "key for the archive's HMAC-SHA256 chain (else env "
           "VLLM_AUDIT_HMAC_KEY; else a plain, labelled SHA-256 chain)", None, "path",
           (*_BOTH, "retention"), "FILE"),
    Option("--hmac-key", "hmac_key", "HMAC key itself (prefer the env var or --hmac-key-file)",
           None, "str", (*_BOTH, "retention"), "KEY"),
    Option("--loki-url", "loki_url", "Loki base URL: run/replay push every record to it, export --source loki reads from it", None, "str",
           _LOKI, "URL"),
    Option("--loki-tenant", "loki_tenant", "X-Scope-OrgID", None, "str", _LOKI, "ID"),
    Option("--loki-username", "loki_username", "basic auth user", None, "str", _LOKI, "USER"),
    Option("--loki-password-file", "loki_password_file", "basic auth password file (or env "
           "VLLM_AUDIT_LOKI_PASSWORD)", None, "path", _LOKI, "FILE"),
    Option("--loki-password", "loki_password", "basic auth password (prefer the file)", None,
           "str", _LOKI, "SECRET"),
    Option("--loki-bearer-token-file", "loki_bearer_token_file", "bearer token file", None, "path",
           _LOKI, "FILE"),
    Option("--loki-bearer-token", "loki_bearer_token", "bearer token (prefer the file)", None,
           "str", _LOKI, "SECRET"),
    Option("--loki-ca-file", "loki_ca_file", "CA bundle for Loki's TLS", None, "path", _LOKI, "FILE"),
    Option("--loki-client-cert-file", "loki_client_cert_file", "client certificate for Loki's TLS (mTLS)",
           None, "path", _LOKI, "FILE"),
    Option("--loki-client-key-file", "loki_client_key_file", "its private key (if not in the certificate "
           "file)", None, "path", _LOKI, "FILE"),
    Option("--loki-timeout", "loki_timeout", "seconds a Loki request may take", 10.0, "float", _LOKI,
           "SECONDS"),
    Option("--loki-job", "loki_job", "optional extra `job` stream label", None, "str", _BOTH, "NAME"),
    Option("--loki-insecure-skip-verify", "loki_insecure_skip_verify", "do not verify Loki's TLS "
           "certificate", False, "bool", _LOKI),
    Option("--loki-structured-metadata", "loki_structured_metadata", "send request_id and user "
           "as structured metadata (Loki >= 3)", False, "bool", _BOTH),
    Option("--loki-batch-wait", "loki_batch_wait", "max seconds a record waits for a batch",
           0.1, "float", _BOTH, "SECONDS"),
    Option("--loki-batch-bytes", "loki_batch_bytes", "max bytes per push", 1048576, "int", _BOTH, "N"),
    Option("--loki-prompt-policy", "loki_prompt_policy", "prompt text sent to Loki: full, redact, "
           "hash, omit", "redact", "str", _BOTH, "MODE"),
    Option("--loki-output-policy", "loki_output_policy", "output text sent to Loki: full, redact, "
           "hash, omit", "redact", "str", _BOTH, "MODE"),
    Option("--archive-prompt-policy", "archive_prompt_policy", "prompt text kept in the archive",
           "full", "str", _BOTH, "MODE"),
    Option("--archive-output-policy", "archive_output_policy", "output text kept in the archive",
           "full", "str", _BOTH, "MODE"),
    Option("--retention-compress-days", "retention_compress_days", "gzip archive days older "
           "than this (checked hourly; manifests keep the chain verifiable)", None, "int",
           ("run",), "DAYS"),
    Option("--retention-delete-days", "retention_delete_days", "delete archive days older than "
           "this (their manifests stay)", None, "int", ("run",), "DAYS"),
    Option("--max-thread-restarts", "max_thread_restarts", "restarts of a worker thread "
           "(pipeline, Loki pusher) after unexpected failures without progress in between "
           "before the process exits with status 1 (0: exit on the first)", 5, "int", ("run",), "N"),
    Option("--no-progress", "no_progress", "no progress bar", False, "bool", ("replay",)),
    # alert-log: the stack's default Alertmanager receiver (exporter/alertlog.py)
    Option("--alert-log-file", "alert_log_file", "also append every notification as JSON here",
           None, "path", ("alert-log",), "FILE"),
    Option("--alert-webhook-url", "alert_webhook_url", "forward each notification's JSON to this "
           "webhook", None, "str", ("alert-log",), "URL"),
    Option("--alert-slack-webhook-url", "alert_slack_webhook_url", "forward to this Slack "
           "incoming webhook", None, "str", ("alert-log",), "URL"),
    Option("--alert-email-to", "alert_email_to", "forward by e-mail to this address (SMTP "
           "below)", None, "str", ("alert-log",), "ADDR"),
    Option("--alert-smtp-host", "alert_smtp_host", "SMTP server", "localhost:25", "str",
           ("alert-log",), "HOST:PORT"),
    Option("--alert-smtp-from", "alert_smtp_from", "sender address", "vllm-audit@localhost", "str",
           ("alert-log",), "ADDR"),
    Option("--alert-smtp-username", "alert_smtp_username", "SMTP login", None, "str",
           ("alert-log",), "USER"),
    Option("--alert-smtp-password-file", "alert_smtp_password_file", "SMTP password file", None,
           "path", ("alert-log",), "FILE"),
    Option("--alert-smtp-starttls", "alert_smtp_starttls", "STARTTLS before login", False, "bool",
           ("alert-log",)),
    Option("--signing-key-file", "signing_key_file", "Ed25519 signing key (from `keygen`): write a "
           "signed checkpoint of the archive's Merkle tree every --sign-interval seconds; the file is "
           "replaced by each new day's key (forward security), so it and its directory must be "
           "writable", None, "path", _BOTH, "FILE"),
    Option("--sign-interval", "sign_interval", "seconds between signed checkpoints (also when no "
           "record arrived: a heartbeat)", 10.0, "float", _BOTH, "SECONDS"),
    Option("--log-origin", "log_origin", "origin line of the signed checkpoints (default: "
           "<hostname>/vllm-audit)", None, "str", _BOTH, "ORIGIN"),
    # verify --public-key: the transparency log, checked with public keys only.
    Option("--public-key", "public_key", "the log's verifier key (signing.pub from keygen): check the "
           "Merkle tree, every signed checkpoint and its key epoch; needs no secret", None, "path",
           ("verify",), "FILE"),
    Option("--witness-key", "witness_keys", "a witness's verifier key (repeatable): check its "
           "cosignatures", [], "list", ("verify",), "FILE"),
    Option("--min-witnesses", "min_witnesses", "witness cosignatures a checkpoint needs (default: 1 "
           "with --witness-key)", None, "int", ("verify",), "N"),
    Option("--max-gap", "max_gap", "fail when two consecutive signed checkpoints are further apart "
           "(the exporter was stopped)", None, "float", ("verify",), "SECONDS"),
    Option("--tsa-cert", "tsa_cert", "TSA certificate to check RFC 3161 timestamp tokens with", None,
           "path", ("verify",), "FILE"),
    # Transparency log: witnesses and trusted time (issue 15; docs in README "Witnesses").
    Option("--witness", "witnesses", "C2SP tlog-witness to cosign each checkpoint: its submission URL "
           "and its one-line verifier key (repeatable; env: whitespace-separated)", [], "list", _BOTH,
           "URL=VERIFIER_KEY", None),
    Option("--witness-timeout", "witness_timeout", "seconds one witness request may take", 10.0,
           "float", _BOTH, "SECONDS"),
    Option("--tsa-url", "tsa_url", "RFC 3161 time-stamping authority: a token over a checkpoint at "
           "least every --tsa-interval", None, "str", _BOTH, "URL"),
    Option("--tsa-interval", "tsa_interval", "seconds between RFC 3161 timestamps", 3600.0, "float",
           _BOTH, "SECONDS"),
    Option("--tsa-ca-file", "tsa_ca_file", "CA (or TSA) certificate to check each token on receipt "
           "(verify checks them anyway)", None, "path", _BOTH, "FILE"),
    Option("--listen", "witness_listen", "where the witness serves POST /add-checkpoint",
           "127.0.0.1:7380", "str", ("witness",), "HOST:PORT"),
    Option("--key-file", "witness_key_file", "the witness's private key (cosignature/v1, or a Go "
           "note Ed25519 key); written by --init-key", None, "path", ("witness",), "FILE"),
    Option("--state-dir", "state_dir", "the latest cosigned checkpoint of each log (keep it: losing it "
           "lets a log roll back)", None, "path", ("witness",), "DIR"),
    Option("--log-key", "witness_log_keys", "a log this witness cosigns: its verifier key, with its "
           "origin if that differs from the key name (repeatable; env: whitespace-separated)", [],
           "list", ("witness",), "[ORIGIN=]VERIFIER_KEY", None),
    Option("--init-key", "witness_init_key", "write a new witness key to --key-file (and its verifier "
           "key beside it, .pub) and exit", False, "bool", ("witness",)),
    Option("--name", "witness_name", "key name for --init-key, a URL-like name of this witness",
           None, "str", ("witness",), "NAME"),
    Option("--gpu-hour-price", "gpu_hour_price", "price of one GPU-hour in your currency: a "
           "request costs its share of engine time x the engine's GPUs x this / 3600 "
           "(vllm_audit_cost_total, the export's cost column; needs the stat-logger plugin). "
           "Empty: no price", None, "str", (*_BOTH, "export"), "PRICE"),
    Option("--gpu-hour-price-model", "gpu_hour_price_model", "per-model price of one GPU-hour, "
           "MODEL=PRICE (repeatable; env: comma-separated)", [], "list", (*_BOTH, "export"),
           "MODEL=PRICE"),
)

POLICY_MODES = ("full", "redact", "hash", "omit")


@dataclass(frozen=True)
class Settings:
    command: str
    logs: tuple[str, ...] = ()
    replay_files: tuple[str, ...] = ()
    archive_dir: Path = Path("audit-archive")
    state_dir: Path = Path("audit-archive/.state")
    from_start: bool = True  # no checkpoint: read existing files from 0 (--from-end: from EOF)
    prune_rotated: bool = False
    vllm_url: str | None = None
    scrape_interval: float = 15.0
    listen_host: str = "127.0.0.1"
    listen_port: int = 9400
    instance: str | None = None
    model: str | None = None
    server_timezone: str = "UTC"
    max_log_len: int | None = None
    tokenizer: Path | None = None
    request_timeout: float = 300.0
    merge_grace: float = 0.5
    max_inflight: int = 10000
    max_users: int = 500
    user_label: bool = True
    user_label_mode: str = "pseudonymous"
    oversized_input_tokens: int = 2048
    checkpoint_interval: float = 0.25
    hmac_key: bytes | None = field(default=None, repr=False)
    loki: object | None = field(default=None, repr=False)  # exporter.loki.LokiSettings
    archive_prompt_policy: str = "full"
    archive_output_policy: str = "full"
    loki_prompt_policy: str = "redact"
    loki_output_policy: str = "redact"
    progress: bool = True
    vllm_logging_prefix: str = ""
    retention_compress_days: int | None = None
    retention_delete_days: int | None = None
    max_thread_restarts: int = 5
    signing_key_file: Path | None = None
    sign_interval: float = 10.0
    log_origin: str = ""
    witnesses: tuple = ()  # ((submission URL, note.Verifier), ...)
    witness_timeout: float = 10.0
    tsa_url: str | None = None
    tsa_interval: float = 3600.0
    tsa_ca_file: Path | None = None
    pricing: object = None  # exporter.cost.Pricing

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.server_timezone)


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


def _read_secret_file(path: Path | None, flag: str, *, text: bool = False) -> bytes | str | None:
    """The one secret reader (:mod:`exporter.secrets`), errors as SettingsError."""
    if path is None:
        return None
    try:
        return read_secret_text(path, flag) if text else read_secret(path, flag)
    except SecretError as exc:
        raise SettingsError(str(exc)) from None


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


def build(command: str, ns: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge flags, env and defaults; validate; return the frozen settings."""
    return _validate(command, resolve(command, ns, environ), ns, environ)


def _positive(values: dict, dest: str, flag: str, allow_zero: bool = False) -> None:
    v = values.get(dest)
    if v is None:
        return
    if v < 0 or (v == 0 and not allow_zero):
        raise SettingsError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")


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
    if not v["loki_url"].startswith(("http://", "https://")):
        raise SettingsError(f"--loki-url: expected an http(s) URL, got {v['loki_url']!r}")
    password = _read_secret_file(v.get("loki_password_file"), "--loki-password-file", text=True) \
        or v.get("loki_password")
    token = _read_secret_file(v.get("loki_bearer_token_file"), "--loki-bearer-token-file", text=True) \
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
        _positive(v, dest, flag)
    _positive(v, "sign_interval", "--sign-interval")
    _positive(v, "merge_grace", "--merge-grace", allow_zero=True)
    _positive(v, "retention_compress_days", "--retention-compress-days")
    _positive(v, "retention_delete_days", "--retention-delete-days")
    _positive(v, "max_thread_restarts", "--max-thread-restarts", allow_zero=True)
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
        host, sep, port_text = v["listen_address"].rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
            raise SettingsError(f"--web.listen-address: expected HOST:PORT, got {v['listen_address']!r}")
        port = int(port_text)
        host = host.strip("[]") or "0.0.0.0"
        if v.get("vllm_url") and not v["vllm_url"].startswith(("http://", "https://")):
            raise SettingsError(f"--vllm-url: expected an http(s) URL, got {v['vllm_url']!r}")
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

    hmac_key = v.get("hmac_key")
    if v.get("hmac_key_file") is not None:
        hmac_key = _read_secret_file(v["hmac_key_file"], "--hmac-key-file")
    loki = loki_settings(v)
    prices = pricing(v)
    archive_dir = Path(v["archive_dir"])
    signing_key_file = v.get("signing_key_file")
    if signing_key_file is not None:
        _check_signing_key(Path(signing_key_file))
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
        hmac_key=hmac_key.encode() if isinstance(hmac_key, str) else hmac_key,
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
        witnesses=_witnesses(v),
        witness_timeout=v["witness_timeout"],
        tsa_url=_tsa_url(v),
        tsa_interval=v["tsa_interval"],
        tsa_ca_file=v.get("tsa_ca_file"),
        pricing=prices,
    )


def _check_signing_key(path: Path) -> None:
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


def _witnesses(v: dict) -> tuple:
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
    _positive(v, "witness_timeout", "--witness-timeout")
    return tuple(out)


def _tsa_url(v: dict) -> str | None:
    url = v.get("tsa_url") or None
    if url and not url.startswith(("http://", "https://")):
        raise SettingsError(f"--tsa-url: expected an http(s) URL, got {url!r}")
    if url:
        import shutil
        if shutil.which("openssl") is None:
            raise SettingsError("--tsa-url: the openssl command is needed for RFC 3161 (apt-get install openssl)")
    _positive(v, "tsa_interval", "--tsa-interval")
    if v.get("tsa_ca_file") is not None and not Path(v["tsa_ca_file"]).is_file():
        raise SettingsError(f"--tsa-ca-file: {v['tsa_ca_file']}: no such file")
    return url


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


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise SettingsError(f"{flag}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def witness_settings(ns: argparse.Namespace, environ: Mapping[str, str]) -> WitnessSettings:
    """The validated settings of the ``witness`` subcommand."""
    v = resolve("witness", ns, environ)
    host, port = _host_port(v["witness_listen"], "--listen")
    if v.get("witness_key_file") is None:
        raise SettingsError("witness: give --key-file FILE (env VLLM_AUDIT_KEY_FILE)")
    key_file = Path(v["witness_key_file"])
    if v.get("witness_init_key"):
        import socket
        return WitnessSettings(host, port, key_file, None, init_key=True,
                               name=v.get("witness_name") or f"{socket.gethostname()}/witness")
    from exporter.transparency.note import NoteError, parse_signer
    raw = _read_secret_file(key_file, "--key-file")
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


def env_table() -> list[tuple[str, str, str]]:
    """(flag, env var, commands) rows for the README."""
    return [(o.flag, o.env, ",".join(o.commands)) for o in OPTIONS]


def alert_log_options(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict, str | None]:
    """The alert-log command's resolved options and its SMTP password, validated."""
    v = resolve("alert-log", ns, environ)
    host, sep, port = v["listen_address"].rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"--web.listen-address: expected HOST:PORT, got {v['listen_address']!r}")
    for dest in ("alert_webhook_url", "alert_slack_webhook_url"):
        if v.get(dest) and not v[dest].startswith(("http://", "https://")):
            raise SettingsError(f"--{dest.replace('_', '-')}: expected an http(s) URL, got {v[dest]!r}")
    if v.get("alert_email_to") and "@" not in v["alert_email_to"]:
        raise SettingsError(f"--alert-email-to: not an e-mail address: {v['alert_email_to']!r}")
    password = _read_secret_file(v.get("alert_smtp_password_file"), "--alert-smtp-password-file",
                                 text=True)
    return v, password
