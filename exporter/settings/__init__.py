"""One settings object, built once at the edge (the CLI) from flags and env.

Every flag has an environment variable: ``--web.listen-address`` →
``VLLM_AUDIT_WEB_LISTEN_ADDRESS``, ``--loki-url`` → ``VLLM_AUDIT_LOKI_URL``.
Precedence: command line, then environment, then default. Repeatable flags
(``--log``) take a comma-separated list from the environment; those whose
values are keys (``--witness``, ``--log-key``) a whitespace-separated one
(space or newline: a key name may hold a comma, never a space). Validation runs
once, in :func:`build`, and raises :class:`SettingsError` with a message a
person can act on; nothing else in the package reads the environment.

The parts: the option table (:mod:`.options`: one row per flag, the place a
new setting goes), reading flags, environment and secret files (:mod:`.read`),
the frozen object (:mod:`.model`), its validation (:mod:`.validate`, with the
signed log's parts in :mod:`.tlog`) and the small subcommands' settings
(:mod:`.subcommands`).
"""

from .model import Settings
from .options import ENV_PREFIX, OPTIONS, POLICY_MODES, Option, env_table
from .read import SettingsError, add_options, resolve
from .subcommands import WitnessSettings, alert_log_options, witness_settings
from .tlog import split_key
from .validate import MAX_INSTANCE_LEN, build, load, loki_settings, pricing

__all__ = ["ENV_PREFIX", "MAX_INSTANCE_LEN", "OPTIONS", "POLICY_MODES", "Option", "Settings",
           "SettingsError", "WitnessSettings", "add_options", "alert_log_options", "build",
           "env_table", "load", "loki_settings", "pricing", "resolve", "split_key",
           "witness_settings"]
