"""vLLM stat-logger plugin: each finished request's engine timings, as JSON lines.

vLLM loads ``exporter.statlogger.plugin:AuditStatLogger`` from the entry-point
group ``vllm.stat_logger_plugins`` in its API-server process (README,
"Engine time and cost"). This package is stdlib-only apart from
``plugin.py``, which subclasses vLLM's ``StatLoggerBase``: ``share`` (each
request's share of the engine's busy time) and ``line`` (the JSON line) are
importable and testable without vLLM.
"""
