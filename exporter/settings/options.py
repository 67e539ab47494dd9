"""The option table: every flag of every subcommand, with its environment
variable (``VLLM_AUDIT_`` + the flag), default, kind and the subcommands that
take it. A new setting is one row here (plus its field in
:mod:`exporter.settings.model` and its check in
:mod:`exporter.settings.validate`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "VLLM_AUDIT_"


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
           "per UTC day) and of the exporter's state", Path("audit-archive"), "path",
           (*_BOTH, "prove", "export"), "DIR"),
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
           "costly, so commits take at most 5%% of the time (gap at most 10 s)", 0.25, "float", ("run",),
           "SECONDS"),
    # A backfill has no reader waiting for each commit (replay pushes to Loki
    # at its end): a commit there only bounds what a crash makes it re-read,
    # and at run's cadence the fixed part of a commit (fsyncs, the metrics
    # snapshot) was 5-8 % of a replay's CPU (README, Benchmarks).
    Option("--checkpoint-interval", "checkpoint_interval", "seconds between archive fsync + "
           "checkpoint: after a crash, the next replay resumes from the last one, re-reading at most "
           "about this much; widened while a commit is costly, so commits take at most 5%% of the "
           "time (gap at most 10 s)", 2.0, "float", ("replay",), "SECONDS"),
    Option("--hmac-key-file", "hmac_key_file", "key for the archive's HMAC-SHA256 chain (else env "
           "VLLM_AUDIT_HMAC_KEY; else a plain, labelled SHA-256 chain)", None, "path",
           (*_BOTH, "retention", "verify", "export"), "FILE"),
    Option("--hmac-key", "hmac_key", "HMAC key itself (prefer the env var or --hmac-key-file)",
           None, "str", (*_BOTH, "retention", "verify", "export"), "KEY"),
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


def env_table() -> list[tuple[str, str, str]]:
    """(flag, env var, commands) rows for the README."""
    return [(o.flag, o.env, ",".join(o.commands)) for o in OPTIONS]
