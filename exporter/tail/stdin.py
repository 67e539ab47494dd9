"""``--log -``: lines from a pipe with the :class:`~exporter.tail.lines.Line` interface.

``docker logs -f vllm | vllm-audit-exporter run --log -``. Rules:

* A daemon thread reads the stream (blocking) into a bounded queue;
  :meth:`StdinTailer.poll` drains it without blocking (``timeout`` > 0 waits
  that long for the first line). A full queue blocks the reader, so the
  writer is held back instead of memory growing.
* The position is only a line count, ``{"v": 1, "path": "-", "lines": n}``:
  a pipe cannot be rewound, so a restart cannot resume, and lines read but not
  yet checkpointed at a crash are lost. FileTailer rejects such a position.
* At end of stream a last line without newline is emitted with
  ``partial=True``; then ``at_eof`` is True and ``up`` False. A read error
  ends the stream too (counted in ``open_errors``).
* Line cutting follows :mod:`exporter.tail`: ``\n`` and one ``\r``
  stripped, invalid UTF-8 replaced, NULs dropped, lines over
  ``max_line_bytes`` truncated with ``truncated=True`` and ``nbytes`` the
  full length.
"""

from __future__ import annotations

import queue
import threading

from exporter.tail.lines import Line, TailStats, cut_utf8, decode, strip_cr, strip_eol
from exporter.tail.position import VERSION

MiB = 1024 * 1024


_EOF = object()


class StdinTailer:
    """Read ``stream`` (binary, or text with ``.buffer``) in a thread; see the module rules."""

    def __init__(self, stream, *, max_line_bytes: int = 16 * MiB, queue_lines: int = 10000,
                 stats: TailStats | None = None):
        self._stream = getattr(stream, "buffer", stream)  # sys.stdin -> bytes
        self.max_line_bytes = max_line_bytes
        self.stats = stats if stats is not None else TailStats(up=True)
        self.stats.up = True
        self._q: queue.Queue = queue.Queue(maxsize=queue_lines)
        self._count = 0
        self.at_eof = False
        self._thread = threading.Thread(target=self._reader, name="stdin-tailer", daemon=True)
        self._thread.start()

    @property
    def up(self) -> bool:
        return self.stats.up

    size = None  # a pipe has no size: no lag gauge

    def _reader(self) -> None:
        try:
            while True:
                raw = self._stream.readline(self.max_line_bytes + 1)
                if not raw:
                    break
                total, nl = len(raw), raw.endswith(b"\n")
                if len(raw) > self.max_line_bytes and not nl:
                    while not nl:  # skip the rest of a long line in bounded reads
                        more = self._stream.readline(MiB)
                        if not more:
                            break
                        total += len(more)
                        nl = more.endswith(b"\n")
                self._q.put((raw, total, total > self.max_line_bytes, not nl))
        except (OSError, ValueError) as exc:
            self.stats.open_errors += 1  # closed or failing stream: treat as its end
            self.stats.error = f"stdin: {exc}"
        finally:
            self._q.put(_EOF)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader to reach end of stream (tests, shutdown)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def position(self) -> dict:
        return {"v": VERSION, "path": "-", "lines": self._count}

    def poll(self, max_lines: int | None = None, timeout: float = 0.0) -> list[Line]:
        out: list[Line] = []
        while not self.at_eof and (max_lines is None or len(out) < max_lines):
            try:
                item = self._q.get(timeout=timeout) if timeout > 0 and not out else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self.at_eof, self.stats.up = True, False
                self.stats.error = self.stats.error or "stdin: end of stream (the writer closed it)"
                break
            raw, total, truncated, partial = item
            body = strip_eol(raw)
            if truncated:
                body = cut_utf8(body[:self.max_line_bytes])
                self.stats.long_lines += 1
            self.stats.partial_lines += partial
            self._count += 1
            self.stats.lines += 1
            self.stats.bytes += total
            out.append(Line(decode(body, self.stats), total, self.position(), truncated, partial,
                            cr=strip_cr(raw[:-1])[1] if raw.endswith(b"\n") else 0))
        return out

    def close(self) -> None:
        """Stop handing out lines; the reader thread ends with the stream."""
        self.at_eof = True
