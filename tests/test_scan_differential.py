"""The C accelerator (exporter/parse/_scan.c) and the pure-Python parser give
identical results: on every line of every real capture and format fixture,
and on hostile, mutated and truncated lines (hypothesis).

``_scan.scan(text)`` may decline (None: the Python path decides); whenever it
answers, its Event must equal the Python one exactly: same kind, id, time and
data, same key order, same value types (``repr`` is compared too, so ``1``
and ``True`` differ). Where a C compiler exists the extension must have been
built (``pip install -e .`` builds it): a missing one fails here, it is not
skipped.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cbuild import HAVE_CC
from hyp import examples
from leakcheck import assert_no_leaks

from exporter.events import Event
from exporter.parse import fast, messages

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
REAL_LOGS = sorted(FIXTURES.glob("vllm-*/*/vllm.log")) + sorted((FIXTURES / "formats").glob("*.log"))
# Lines as the tailer hands them: split on "\n", trailing "\r"s removed,
# invalid UTF-8 replaced; RAW_LINES keep their "\r" (parse_line's input too).
RAW_LINES = [line for path in REAL_LOGS for line in path.read_bytes().decode("utf-8", "replace").split("\n")]
REAL_LINES = [line.rstrip("\r") for line in RAW_LINES]
FUZZ = settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_scan():
    try:
        from exporter.parse import _scan
    except ImportError:
        return None
    return _scan


_scan_mod = _load_scan()


def reference(text: str):
    """The pure-Python parser, whatever fast path is configured."""
    saved = fast.scan, fast.dispatch
    fast.scan = fast.dispatch = None
    try:
        return messages.parse_line(text)
    finally:
        fast.scan, fast.dispatch = saved


def with_c(text: str):
    """parse_line with the C accelerator on, whatever VLLM_AUDIT_PURE_PYTHON says."""
    assert _scan_mod is not None, "exporter.parse._scan is not built (a C compiler exists: pip install -e . builds it)"
    fast.configure(_scan_mod)
    saved = fast.scan, fast.dispatch
    fast.scan, fast.dispatch = _scan_mod.scan, _scan_mod.dispatch
    try:
        return messages.parse_line(text)
    finally:
        fast.scan, fast.dispatch = saved


def same_line(text: str) -> None:
    """The whole of parse_line agrees with and without C (JSON lines included)."""
    got, want = with_c(text), reference(text)
    assert got == want and repr(got) == repr(want), text


def c_result(text: str):
    assert _scan_mod is not None, "exporter.parse._scan is not built (a C compiler exists: pip install -e . builds it)"
    fast.configure(_scan_mod)  # whatever VLLM_AUDIT_PURE_PYTHON says: this test compares both
    return _scan_mod.scan(text)


def same(text: str) -> bool:
    """C and Python agree on ``text``; True when C answered (did not decline)."""
    got = c_result(text)
    if got is None:
        return False
    want = reference(text)
    assert got == want, text
    assert repr(got) == repr(want), text
    if isinstance(want, Event):
        assert list(got.data) == list(want.data), text
    assert repr(with_c(text)) == repr(want), text
    return True


def test_env_switch_forces_pure_python():
    code = "from exporter.parse import fast; print(fast.IMPLEMENTATION, fast.scan is None)"
    for value, want in (("1", "python True"), ("0", "c False" if _scan_mod else "python True")):
        env = {**os.environ, fast.ENV: value, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split()


GUARDS = ("tests/test_forgery_pipeline.py", "tests/test_records_real.py", "tests/test_hostile_input.py",
          "tests/test_parse_formats.py")


def test_guards_pass_on_the_other_path():
    """The whole suite runs on the path this process selected; the security
    and record guards run here once more on the other one."""
    other = "0" if fast.IMPLEMENTATION == "python" else "1"
    if other == "0" and _scan_mod is None:
        assert not HAVE_CC  # nothing else to run: only the Python path exists here
        return
    env = {**os.environ, fast.ENV: other, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GUARDS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_every_real_capture_line_is_identical():
    answered = 0
    for line in REAL_LINES + RAW_LINES:
        answered += same(line)
        same_line(line)
    # the fast path must actually carry the common lines, not decline them all
    assert answered > len(REAL_LINES) // 3, (answered, len(REAL_LINES))
    # (a capture's share of request-log lines is about half; the rest is start-up)


JSON_LINES = [line for line in REAL_LINES if line.startswith("{")]


def test_json_formatter_messages_are_identical():
    from exporter.parse.header import json_header

    answered = 0
    for line in JSON_LINES:
        same_line(line)
        obj = json.loads(line)
        header = json_header(obj) if isinstance(obj, dict) else None
        if header is None or not isinstance(obj.get("message"), str):
            continue
        message = obj["message"].split("\n", 1)[0]
        fast.configure(_scan_mod)
        got = _scan_mod.dispatch(message, header)
        if got is not None:
            answered += 1
            want = messages._dispatch(message, 0, header)
            assert repr(got) == repr(want), line
    assert len(JSON_LINES) > 100 and answered > len(JSON_LINES) // 4, (answered, len(JSON_LINES))


def test_the_common_kinds_are_answered_in_c():
    kinds = set()
    for line in REAL_LINES:
        got = c_result(line)
        if got is not None:
            kinds.add(got.kind)
    assert kinds >= {"output", "output_details", "added", "finished", "details", "received", "body",
                     "access"}, kinds


H = "(APIServer pid=9141) {level} 11-22 02:27:09 [{file}] "
RL = H.format(level="INFO", file="request_logger.py:108")
ENG = H.format(level="INFO", file="async_llm.py:578")
SP = "SamplingParams(n=1, temperature=0.7, top_p=1.0, stop=['a, b'], max_tokens=16, structured_outputs=None)"
REPR_TEMPLATES = (
    RL + "Generated response {rid}: output: {lit}, finish_reason: stop",
    RL + "Generated response {rid} (streaming delta): output: {lit}, finish_reason: None",
    RL + "Generated response {rid} (streaming complete): output: {lit}, output_token_ids: [1, 2, 30], finish_reason: length",
    RL + "Generated response {rid} (streaming delta) details: output_token_ids: [{n}]",
    RL + "Generated response {rid} details: output_token_ids: None",
    RL + "Request {rid} details: prompt: {lit}, prompt_token_ids: [{n}, 7], prompt_embeds shape: None.",
    RL + "Received request {rid}: prompt: {lit}, params: " + SP + ", prompt_token_ids: [{n}], lora_request: None.",
    RL + "Received request {rid}: params: " + SP + ", lora_request: None.",
    ENG + "Added request {rid}.",
    ENG + "Finished request {rid}.",
)
TEMPLATES = REPR_TEMPLATES + (
    RL + "Request {rid} JSON body: {lit}",
    '(APIServer pid=9141) INFO:     {rid} - "POST {lit} HTTP/1.1" {n} OK',
    'INFO:     127.0.0.1:4000 - "GET {lit} HTTP/1.1" 200{rid}',
)
# Everything a prompt can carry that a parser could trip on: quotes,
# backslashes and escapes, a whole fake log line, NUL, ESC, CR, U+FFFD (what
# the tailer makes of invalid UTF-8), surrogates, astral and combining text.
HOSTILE = st.sampled_from([
    "'", '"', "\\", "\\'", '\\"', "\\n", "\\x41", "\\x4", "\\u00e9", "\\ud800", "\\U0001f600", "\\U00110000",
    "\\101", "\\q", "\\N{DASH}", ", finish_reason: stop", "', finish_reason: stop", ": output: 'x'",
    "\n" + ENG + "Finished request evil.", RL + "Generated response evil: output: 'x', finish_reason: stop",
    "Received request evil: params: " + SP, "\x00", "\x1b[31m", "\r", "\ufffd", "\ud83d", "\U0001f600",
    "e\u0301", "\u2028", "\xa0", "\u0663", "中文", " ", "(", ")", "[", "]", "{", "}", ",", ".", "None",
])
TEXT = st.lists(st.one_of(HOSTILE, st.text(max_size=8)), max_size=8).map("".join)
RID = st.one_of(st.sampled_from(["chatcmpl-86a1", "cmpl-1-0", "a:", "a:b", "x" * 2050, "id\u00e9", "i\td", "i d"]),
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
BODY = st.fixed_dictionaries({}, optional={k: JSON for k in ("model", "user", "stream", "temperature", "n",
                                                             "max_tokens", "response_format", "messages")})


@st.composite
def literal(draw):
    body = draw(TEXT)
    if draw(st.integers(0, 3)) == 0:  # a client's JSON body, maybe cut short
        text = json.dumps(draw(BODY), ensure_ascii=draw(st.booleans()))
        return text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text
    if draw(st.booleans()):
        return repr(body)  # what vLLM writes
    return draw(st.sampled_from(["'", '"'])) + body + draw(st.sampled_from(["'", '"', ""]))  # raw, maybe broken


@FUZZ
@given(st.sampled_from(TEMPLATES), RID, literal(), st.integers(0, 10**20))
def test_hostile_values_in_real_shapes(template, rid, lit, n):
    line = template.format(rid=rid, lit=lit, n=n)
    same(line)
    for cut in (len(line) - 1, len(line) // 2, len(line) - len(lit) // 2):
        same(line[:cut])  # truncated lines


@FUZZ
@given(st.sampled_from(TEMPLATES), RID, literal(), st.integers(0, 10**20),
       st.sampled_from(["vllm.entrypoints.logger", "vllm.v1.engine.async_llm", "vllm.other"]))
def test_hostile_messages_of_the_json_formatter(template, rid, lit, n, name):
    message = template.format(rid=rid, lit=lit, n=n).split("] ", 1)[-1]
    obj = {"asctime": "2026-11-22 10:00:00,123", "levelname": "INFO", "name": name, "message": message}
    same_line(json.dumps(obj))
    same_line(json.dumps(obj, ensure_ascii=False)[:-3])


@FUZZ
@given(st.sampled_from(REPR_TEMPLATES), literal())
def test_well_formed_lines_are_answered(template, lit):
    """vLLM's own reprs of any text take the C path (and agree)."""
    line = template.format(rid="chatcmpl-1", lit=lit, n=5)
    answered = same(line)
    if _is_repr(lit):  # repr() writes no escape the C path leaves to Python
        assert answered, line


def _is_repr(lit: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "invalid escape sequence" of a broken literal
        try:
            value = ast.literal_eval(lit)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    return isinstance(value, str) and repr(value) == lit


@FUZZ
@given(st.sampled_from([line for line in REAL_LINES if line]),
       st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 2), HOSTILE), max_size=4))
def test_mutations_of_real_lines(line, edits):
    for position, op, text in edits:
        p = position % (len(line) + 1)
        if op == 0:
            line = line[:p] + text + line[p:]
        elif op == 1:
            line = line[:p] + line[p + 1 :]
        else:
            line = line[:p] + text + line[p + len(text):]
    same(line)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_after_a_header(tail):
    for head in (RL + "Generated response ", RL + "Received request ", RL + "Request ", ENG + "Added request ",
                 ENG + "Finished request "):
        same(head + tail)


def test_parser_info_metric_names_the_active_path():
    from prometheus_client import CollectorRegistry

    from exporter.selfmetrics import SelfMetrics

    reg = CollectorRegistry()
    SelfMetrics(reg, sources=("vllm",))
    assert reg.get_sample_value("vllm_audit_parser_info", {"implementation": fast.IMPLEMENTATION}) == 1
    assert fast.IMPLEMENTATION == ("c" if _scan_mod is not None and not os.environ.get(fast.ENV) else "python")


def test_no_reference_or_memory_leaks():
    """A C extension that leaks a reference per line would grow without bound
    in a sidecar that runs for months: none may (answers and declines alike)."""
    from exporter import events as ev

    lines = REAL_LINES + RAW_LINES + [line[: len(line) // 2] for line in REAL_LINES]
    watched = (None, True, ev.OUTPUT, ev.OUTPUT_DETAILS, ev.RECEIVED, ev.DETAILS, ev.ADDED, ev.ACCESS, ev.BODY,
               "", "delta", "complete")

    def run():
        for line in lines:
            c_result(line)

    assert_no_leaks(run, watched, repeats=3)


@FUZZ
@given(st.sampled_from([line for line in REAL_LINES if line]), st.integers(0, 100_000), st.binary(max_size=12))
def test_invalid_utf8_as_the_tailer_decodes_it(line, position, junk):
    """Bytes spliced into a real line (invalid UTF-8, NUL, a cut multi-byte
    character), decoded as exporter/tail does it (errors replaced)."""
    raw = line.encode("utf-8")
    p = position % (len(raw) + 1)
    text = (raw[:p] + junk + raw[p:]).decode("utf-8", "replace")
    same(text)
    same((raw[:p]).decode("utf-8", "replace"))  # a line cut at any byte


def test_accelerator_info_names_every_stage_and_its_path():
    from prometheus_client import CollectorRegistry

    from exporter.selfmetrics import SelfMetrics
    from exporter.tail import lines
    from exporter.transparency import leaf_line

    reg = CollectorRegistry()
    SelfMetrics(reg, sources=("vllm",))
    expected = {"parse": fast.IMPLEMENTATION, "tail": lines.IMPLEMENTATION,
                "archive_encoding": leaf_line.IMPLEMENTATION}
    for stage, impl in expected.items():
        assert impl in ("c", "python")
        assert reg.get_sample_value("vllm_audit_accelerator_info", {"stage": stage, "implementation": impl}) == 1
        other = "python" if impl == "c" else "c"
        assert reg.get_sample_value("vllm_audit_accelerator_info", {"stage": stage, "implementation": other}) is None
