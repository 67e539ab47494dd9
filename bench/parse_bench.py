"""Throughput of ``parse_line`` against a bare readline loop over the same file.

Usage::

    .venv/bin/python bench/parse_bench.py                 # synthetic 0.32 DEBUG mix
    .venv/bin/python bench/parse_bench.py --file LOG ...  # any log (repeatable)
    .venv/bin/python bench/parse_bench.py --compare       # C accelerator vs pure Python

``--compare`` times the same file twice in this one process, once with the
C accelerator (``exporter/parse/_scan.c``) and once with it switched off
(what ``VLLM_AUDIT_PURE_PYTHON=1`` selects), and prints both and their
ratio; without it the path the environment selects is timed.

The synthetic log is a steady-state vLLM 0.32 server with request logging at
DEBUG (the heaviest format: JSON body, details with prompt ids, INFO received,
added, per-delta output lines with DEBUG ids, access line, a stats line every
20 requests). Both loops read the same file with ``open(..., encoding="utf-8")``
and strip the newline; the figure that matters is the CPU ratio
parse-loop / bare-loop (``time.process_time``, best of ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.parse import fast, parse_line  # noqa: E402

H = "(APIServer pid=4242) {level} 11-22 10:00:{s:02d} [{file}] "
SP = (
    "SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, "
    "temperature={t}, watermarking=None, top_p=1.0, top_k=0, min_p=0.0, seed=None, stop=[], stop_token_ids=[], "
    "bad_words=[], thinking_token_budget=None, include_stop_str_in_output=False, ignore_eos=False, "
    "max_tokens={m}, min_tokens=0, logprobs=None, prompt_logprobs=None, skip_special_tokens=True, "
    "spaces_between_special_tokens=True, structured_outputs=None, extra_args=None)"
)
WORDS = "the of and to in is you that it he was for on are as with his they I at be this have from".split()


def synthetic(requests: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    out: list[str] = []
    for n in range(requests):
        s = n % 60
        rid = f"{rnd.getrandbits(64):016x}"
        user = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 400)))
        prompt = f"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ids = [rnd.randrange(150_000) for _ in range(len(prompt) // 4)]
        body = json.dumps({"messages": [{"role": "user", "content": user}], "model": "tiny", "stream": True})
        rl = H.format(level="DEBUG", s=s, file="request_logger.py:74")
        out.append(rl + f"Request {rid} JSON body: {body}")
        out.append(H.format(level="DEBUG", s=s, file="request_logger.py:55")
                   + f"Request chatcmpl-{rid} details: prompt: {prompt!r}, prompt_token_ids: {ids}, prompt_embeds shape: None.")
        out.append(H.format(level="INFO", s=s, file="request_logger.py:65")
                   + f"Received request chatcmpl-{rid}: params: {SP.format(t=0.7, m=512)}, lora_request: None.")
        out.append(H.format(level="INFO", s=s, file="async_llm.py:578") + f"Added request chatcmpl-{rid}-{n:08x}.")
        out.append(f'INFO:     127.0.0.1:{40000 + n % 20000} - "POST /v1/chat/completions HTTP/1.1" 200 OK')
        text = []
        for _ in range(rnd.randint(5, 40)):
            delta = " " + rnd.choice(WORDS)
            text.append(delta)
            out.append(H.format(level="DEBUG", s=s, file="request_logger.py:101")
                       + f"Generated response chatcmpl-{rid} (streaming delta) details: output_token_ids: [{rnd.randrange(150_000)}]")
            out.append(H.format(level="INFO", s=s, file="request_logger.py:108")
                       + f"Generated response chatcmpl-{rid} (streaming delta): output: {delta!r}, finish_reason: None")
        out.append(H.format(level="INFO", s=s, file="request_logger.py:108")
                   + f"Generated response chatcmpl-{rid} (streaming complete): output: {''.join(text)!r}, finish_reason: streaming_complete")
        if n % 20 == 0:
            out.append(H.format(level="INFO", s=s, file="loggers.py:259")
                       + "Engine 000: Avg prompt throughput: 812.3 tokens/s, Avg generation throughput: 95.1 tokens/s, "
                       "Running: 3 reqs, Waiting: 0 reqs, GPU KV cache usage: 4.1%, Prefix cache hit rate: 12.0%")
    return out


def bare(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            line.rstrip("\n")
            n += 1
    return n


def parsed(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            parse_line(line.rstrip("\n"))
            n += 1
    return n


def best(fn, path: Path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn(path)
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", action="append", type=Path, help="log file(s) instead of the synthetic mix")
    ap.add_argument("--requests", type=int, default=2000, help="synthetic requests (default 2000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="time the C accelerator and pure Python, same run")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.log"
        if args.file:
            path.write_bytes(b"".join(p.read_bytes() for p in args.file))
            label = "+".join(str(p) for p in args.file)
        else:
            path.write_text("\n".join(synthetic(args.requests)) + "\n", encoding="utf-8")
            label = f"synthetic 0.32 DEBUG mix, {args.requests} requests"
        lines = bare(path)
        mib = path.stat().st_size / 2**20
        t_bare = best(bare, path, args.rounds)
        t_parse = best(parsed, path, args.rounds)
        t_pure = None
        if args.compare:
            if fast.scan is None:
                print(f"--compare: the C accelerator is not active (parser: {fast.IMPLEMENTATION})")
                return 1
            fast.set_enabled(False)
            try:
                t_pure = best(parsed, path, args.rounds)
            finally:
                fast.set_enabled(True)
    print(f"input: {label}: {lines} lines, {mib:.1f} MiB")
    print(f"bare readline loop: {lines / t_bare:,.0f} lines/s, {mib / t_bare:,.1f} MiB/s ({t_bare:.3f} s CPU)")
    print(f"readline + parse_line [{fast.IMPLEMENTATION}]: {lines / t_parse:,.0f} lines/s, "
          f"{mib / t_parse:,.1f} MiB/s ({t_parse:.3f} s CPU)")
    print(f"ratio parse/bare: {t_parse / t_bare:.1f}x")
    if t_pure is not None:
        print(f"readline + parse_line [python]: {lines / t_pure:,.0f} lines/s, "
              f"{mib / t_pure:,.1f} MiB/s ({t_pure:.3f} s CPU)")
        print(f"ratio python/c (parse loop CPU): {t_pure / t_parse:.2f}x; "
              f"parse only, bare loop subtracted: {(t_pure - t_bare) / max(t_parse - t_bare, 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
