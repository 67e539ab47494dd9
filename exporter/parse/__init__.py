"""Parse: one physical line → an :class:`~exporter.events.Event` or an
``Ignored(reason)``. Pure, no I/O. ``messages`` routes vLLM's messages
(``output_line``, ``prompt_line`` and ``body_line`` read the request-log
ones), ``header`` reads the line header, ``pyrepr`` scans Python repr
literals, ``untrusted`` type-checks JSON that came from clients; ``fast``
selects the optional C accelerator (``_scan.c``) of the common lines."""

from exporter.parse.messages import parse_line
from exporter.parse.untrusted import CHECK_PROBLEMS

__all__ = ["CHECK_PROBLEMS", "parse_line"]
