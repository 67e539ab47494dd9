"""Make a large vLLM log from a REAL capture by repeating its request section.

Usage::

    .venv/bin/python bench/make_big_log.py OUT --size 1GiB            # DEBUG capture
    .venv/bin/python bench/make_big_log.py OUT --requests 1000000 --users 10000
    .venv/bin/python bench/make_big_log.py OUT --size 1MiB --capture info

The capture (``tests/fixtures/vllm-0.32.0/<capture>/vllm.log``) is split into
a preamble (start-up), the request section (first to last request-log /
engine / access line before shutdown) and a trailer (shutdown). The output
is the preamble once, the request section repeated until the size or request
target is reached, then the trailer once. In every repetition:

* every request id (the 16-hex ``X`` of ``chatcmpl-X`` / ``cmpl-X-0`` /
  ``Request X JSON body``, and the custom ``X-Request-Id`` of the capture) is
  replaced by a fresh 16-character id, unique over the whole file, everywhere
  it occurs (internal ``-<8 hex>`` suffixes and ``0_`` child prefixes are kept
  around it, so the correlator's id mapping is exercised as in the capture);
* header times move forward by the section's span + 1 s per repetition, so
  log time advances like a live server (merge grace and request timeout work
  on log time; a log whose time stood still would hold every request);
* DEBUG ``JSON body`` lines get ``"user":"userNNNNN"`` (replaced, or added when
  the client sent none) drawn from ``--users`` distinct values (seeded).

The text is otherwise byte-for-byte the capture: prompts, outputs, forged
lines, the client disconnect, the over-context rejection, access lines.
Prints one JSON line: bytes, lines, repetitions, requests (ids vLLM logged
a request for: one record each), users.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path


@contextmanager
def workdir(given: Path | None, prefix: str):
    """A bench's work directory: ``given`` (created if needed, kept), or a new
    temporary one, removed afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "tests" / "fixtures" / "vllm-0.32.0"

_SECTION_LINE = re.compile(rb"\[(?:request_logger\.py|async_llm\.py):\d+\] |\"(?:POST|GET) /v1/|"
                           rb'"name": "(?:vllm\.entrypoints\.serve\.utils\.request_logger|vllm\.v1\.engine\.async_llm)"')
_SHUTDOWN = re.compile(rb"\[shutdown\]")
# Request ids as they appear in the capture: chatcmpl-X, cmpl-X-0, Request X JSON body.
_ID_SITES = re.compile(rb"(?:chatcmpl-|cmpl-|Request )([0-9a-f]{16}|fixture-req-\d{4})(?=[-:. ]|$)")
# Header time only (a prompt may quote a whole log line): PROC LEVEL MM-DD HH:MM:SS at a line start.
_TIME = re.compile(rb"(?m)^((?:\([^()\n]{1,80} pid=\d+\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) )"
                   rb"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?= \[)")
# vLLM's JSON formatter: {"asctime": "YYYY-MM-DD HH:MM:SS,mmm", ... (milliseconds kept).
_JTIME = re.compile(rb'(?m)^(\{"asctime": ")(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?=,\d{3}")')
_BODY = re.compile(rb"\] Request %\(i\d+\)s JSON body: \{")
_USER_FIELD = re.compile(rb'"user":"(?:[^"\\]|\\.)*"')

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).lower() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1MiB, 512KiB, 1GiB)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


# What ends a request in the log: vLLM's output lines, the engine's
# finish/abort lines and uvicorn's access line. --unfinished drops these
# (with their continuation lines), so every request stays in flight.
_ENDS = re.compile(rb"\] (?:Generated response|Finished request|Aborted request)|^INFO: +[0-9.:]+ - \"")
_HEADER = re.compile(rb"^(?:\([^()\n]{1,80} pid=\d+\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)[ :]")


def drop_ends(section: list[bytes]) -> list[bytes]:
    out, dropping = [], False
    for line in section:
        if _HEADER.match(line):
            dropping = bool(_ENDS.search(line))
        if not dropping:
            out.append(line)
    return out


def split_capture(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    lines = data.splitlines(keepends=True)
    idx = [i for i, ln in enumerate(lines) if _SECTION_LINE.search(ln) and not _SHUTDOWN.search(ln)]
    if not idx:
        raise SystemExit("capture holds no request logging")
    first, last = idx[0], idx[-1]
    # Keep the access line(s) right after the last request line (same request).
    return b"".join(lines[:first]), lines[first:last + 1], b"".join(lines[last + 1:])


class Template:
    """The request section as a ``bytes % dict`` template.

    Keys: ``iN`` request id N, ``tN`` time at offset N seconds, ``uN`` the
    user of JSON body line N.
    """

    def __init__(self, section: list[bytes]):
        text = b"".join(section).replace(b"%", b"%%")
        ids: dict[bytes, int] = {}
        for m in _ID_SITES.finditer(text):
            ids.setdefault(m.group(1), len(ids))
        self.n_ids = len(ids)
        # Requests vLLM served (an id behind chatcmpl-/cmpl-); a body-only id is
        # a request rejected before vLLM logged it (no record, as in the capture).
        self.n_requests = len({m.group(1) for m in _ID_SITES.finditer(text) if not m.group(0).startswith(b"Request ")})
        if ids:
            alt = re.compile(b"(?<![0-9A-Za-z])(" + b"|".join(re.escape(k) for k in ids) + b")(?![0-9A-Za-z])")
            text = alt.sub(lambda m: b"%%(i%d)s" % ids[m.group(1)], text)
        times = [self._dt(m) for m in _TIME.finditer(text)] + [self._jdt(m) for m in _JTIME.finditer(text)]
        self.t0 = min(times)
        self.span = int((max(times) - self.t0).total_seconds()) + 1
        offsets: set[int] = set()

        def put_time(m, key=b"t", parse=self._dt):
            off = int((parse(m) - self.t0).total_seconds())
            offsets.add(off)
            return m.group(1) + b"%(" + key + b"%d)s" % off
        text = _TIME.sub(put_time, text)
        text = _JTIME.sub(lambda m: put_time(m, b"j", self._jdt), text)
        self.offsets = sorted(offsets)
        self.n_users = 0
        out, pos = [], 0
        for m in _BODY.finditer(text):
            eol = text.find(b"\n", m.end())
            eol = len(text) if eol < 0 else eol
            line = text[m.end() - 1:eol]
            key = b"%%(u%d)s" % self.n_users
            self.n_users += 1
            if _USER_FIELD.search(line):
                line = _USER_FIELD.sub(b'"user":"' + key + b'"', line, count=1)
            elif line.rstrip(b"\r").endswith(b"}"):  # complete body without a user: add one
                cut = len(line.rstrip(b"\r")) - 1
                line = line[:cut] + b',"user":"' + key + b'"' + line[cut:]
            out += [text[pos:m.end() - 1], line]
            pos = eol
        out.append(text[pos:])
        self.text = b"".join(out)

    @staticmethod
    def _dt(m) -> datetime:
        mo, d, h, mi, s = (int(x) for x in m.groups()[1:])
        return datetime(2026, mo, d, h, mi, s)

    @staticmethod
    def _jdt(m) -> datetime:
        return datetime(*(int(x) for x in m.groups()[1:]))

    def render(self, rep: int, users: list[bytes], *, pileup: bool = False) -> bytes:
        values: dict[bytes, bytes] = {}
        for i in range(self.n_ids):
            values[b"i%d" % i] = b"%010x%06x" % (rep, i)
        # pileup: every repetition at the same log time, as a busy server's
        # burst looks in a log with one-second resolution.
        base = self.t0 + timedelta(seconds=0 if pileup else rep * (self.span + 1))
        for off in self.offsets:
            at = base + timedelta(seconds=off)
            values[b"t%d" % off] = at.strftime("%m-%d %H:%M:%S").encode()
            values[b"j%d" % off] = at.strftime("%Y-%m-%d %H:%M:%S").encode()
        for j in range(self.n_users):
            values[b"u%d" % j] = users[j]
        return self.text % values


def make(out: Path, *, capture: str = "debug", size: int | None = None, requests: int | None = None,
         users: int = 10000, seed: int = 1, pileup: bool = False, unfinished: bool = False) -> dict:
    src = CAPTURES / capture / "vllm.log"
    pre, section, post = split_capture(src.read_bytes())
    if unfinished:
        section = drop_ends(section)
    tpl = Template(section)
    rnd = random.Random(seed)
    names = [b"user%05d" % i for i in range(max(1, users))]
    if size is None and requests is None:
        size = 1 << 20
    written = lines = reps = 0
    with open(out, "wb", buffering=1 << 20) as f:
        f.write(pre)
        written += len(pre)
        lines += pre.count(b"\n")
        while True:
            if size is not None and written >= size:
                break
            if requests is not None and reps * tpl.n_requests >= requests:
                break
            chunk = tpl.render(reps, [rnd.choice(names) for _ in range(tpl.n_users)], pileup=pileup)
            f.write(chunk)
            written += len(chunk)
            lines += chunk.count(b"\n")
            reps += 1
        f.write(post)
        written += len(post)
        lines += post.count(b"\n")
    return {"file": str(out), "capture": capture, "bytes": written, "mib": round(written / 2**20, 3),
            "lines": lines, "repetitions": reps, "requests": reps * tpl.n_requests,
            "requests_per_repetition": tpl.n_requests, "ids_per_repetition": tpl.n_ids, "bodies_per_repetition": tpl.n_users,
            "users": users if tpl.n_users else 0, "span_seconds": tpl.span, "pileup": pileup,
            "unfinished": unfinished}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--capture", default="debug", help="capture under tests/fixtures/vllm-0.32.0 (debug, info, ...)")
    p.add_argument("--size", type=parse_size, default=None, help="stop after this many bytes (e.g. 1GiB)")
    p.add_argument("--requests", type=int, default=None, help="stop after this many request ids")
    p.add_argument("--users", type=int, default=10000, help="distinct user values in JSON body lines")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pileup", action="store_true",
                   help="log time stands still across repetitions (requests that never log a finish pile up)")
    p.add_argument("--unfinished", action="store_true",
                   help="drop every line that ends a request (outputs, finish/abort, access lines)")
    a = p.parse_args(argv)
    print(json.dumps(make(a.out, capture=a.capture, size=a.size, requests=a.requests,
                          users=a.users, seed=a.seed, pileup=a.pileup, unfinished=a.unfinished)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
