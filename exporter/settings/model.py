"""The settings object of ``run`` and ``replay``: frozen, built once by
:func:`exporter.settings.validate.build`, its parts typed (the Loki
connection, the witnesses, the prices)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo


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
