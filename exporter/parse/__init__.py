"""Parse: one physical line → an :class:`~exporter.events.Event` or an
``Ignored(reason)``. Pure, no I/O. ``messages`` routes vLLM's messages,
``header`` reads the line header, ``pyrepr`` scans Python repr literals,
``untrusted`` type-checks JSON that came from clients."""

from exporter.parse.messages import parse_line
from exporter.parse.untrusted import CHECK_PROBLEMS

__all__ = ["CHECK_PROBLEMS", "parse_line"]
