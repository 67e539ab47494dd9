"""Detector cost per record on realistic records (µs/record).

    .venv/bin/python bench/detect_bench.py [--records N]

Records mix: chat prompts rendered by a chat template (~1-6 KB), Chinese and
English text, a share with PII, JSON-mode outputs and tool calls. Reports
``detect`` and ``redact`` (Loki policy) cost separately.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.compliance.detect import detect  # noqa: E402
from exporter.compliance.policy import make_policy  # noqa: E402
from exporter.record import new_record  # noqa: E402

EN = ("The quarterly report shows revenue grew 12% year over year, driven by the new product line. "
      "Please summarise the key risks and list three follow-up actions for the team. ")
ZH = "请根据以下会议纪要整理出三条行动项，并说明负责人和截止日期。本季度收入同比增长百分之十二。"
PII = [" 联系我：13812345678", " mail: alice.wang@example.com", " 身份证 11010519491231002X",
       " card 4111 1111 1111 1111", " server 10.20.30.40", " key sk-proj-abcdefghijklmnopqrstuvwx0123"]
TEMPLATE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def make_records(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        body = "".join(rnd.choice((EN, ZH)) for _ in range(rnd.randint(4, 30)))
        if rnd.random() < 0.2:
            body += rnd.choice(PII)
        r = new_record()
        r.update(ts="2026-11-22T10:00:00.000Z", request_id=f"chatcmpl-{i}", status="completed",
                 prompt=TEMPLATE.format(body), prompt_tokens=len(body) // 3,
                 params={"max_tokens": 256, "temperature": 0.7, "n": 1, "json_mode": rnd.random() < 0.1})
        kind = rnd.random()
        if r["params"]["json_mode"]:
            r["output"] = '{"items": ["a", "b"], "owner": "team"}'
        elif kind < 0.05:
            r["output"] = '[tool_calls: get_weather({"city": "Beijing"})]'
        else:
            r["output"] = "".join(rnd.choice((EN, ZH)) for _ in range(rnd.randint(1, 8)))
        out.append(r)
    return out


def measure(fn, records, rounds: int) -> tuple[float, float]:
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for r in records:
            fn(r)
        per.append((time.perf_counter() - t) / len(records) * 1e6)
    return statistics.median(per), min(per)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    records = make_records(a.records)
    size = statistics.mean(len(r["prompt"]) + len(r["output"]) for r in records)
    print(f"{len(records)} records, mean prompt+output {size:.0f} chars, {a.rounds} rounds")
    for name, fn in (("detect", detect), ("redact (loki policy)", make_policy("loki"))):
        med, best = measure(fn, records, a.rounds)
        print(f"{name:22s} median {med:8.1f} µs/record   best {best:8.1f} µs/record")


if __name__ == "__main__":
    main()
