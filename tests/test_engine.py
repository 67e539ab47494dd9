"""Engine time per request: the share clock, the engine line, its parsing,
correlation into ``record.engine``, the engine metrics and the cost."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter import events as ev
from exporter.assemble import AssembleContext, build_record
from exporter.correlate import Correlator
from exporter.cost import PricingError, parse_pricing
from exporter.labels import UserLabels
from exporter.metrics import RequestMetrics
from exporter.parse import parse_line
from exporter.record import ENGINE_FIELDS
from exporter.statlogger.line import FIELDS, dropped, render, status_line
from exporter.statlogger.share import ShareClock


# -- share clock -----------------------------------------------------------------

def test_a_request_alone_gets_its_whole_inference_time():
    c = ShareClock()
    for t in (10.0, 10.5, 11.0, 12.0):
        c.step(t, 1)
    assert c.share(10.0, 12.0) == pytest.approx(2.0)
    assert c.share(10.25, 11.0) == pytest.approx(0.75)  # inside a segment: interpolated


def test_batched_requests_split_each_step_and_add_up_to_busy_time():
    c = ShareClock()
    c.step(0.0, 0)
    c.step(1.0, 1)   # [0,1]: A alone
    c.step(3.0, 2)   # [1,3]: A and B
    c.step(4.0, 1)   # [3,4]: B alone
    a, b = c.share(0.0, 3.0), c.share(1.0, 4.0)
    assert a == pytest.approx(1.0 + 1.0)
    assert b == pytest.approx(1.0 + 1.0)
    assert a + b == pytest.approx(4.0)  # the engine was busy 4 s


def test_idle_time_is_never_charged():
    c = ShareClock()
    c.step(0.0, 1)
    c.step(1.0, 1)
    c.step(50.0, 0)  # idle from 1 to 50 (the batch after a finished request)
    c.step(51.0, 1)
    assert c.share(50.0, 51.0) == pytest.approx(1.0)
    assert c.share(0.0, 1.0) == pytest.approx(1.0)


def test_unknown_batch_size_makes_overlapping_shares_unknown():
    c = ShareClock()
    c.step(0.0, 1)
    c.step(1.0, None)  # scheduler stats went to another API server
    c.step(2.0, 1)
    assert c.share(0.5, 2.0) is None
    assert c.share(1.0, 2.0) == pytest.approx(1.0)


def test_before_the_oldest_sample_is_unknown_not_zero():
    c = ShareClock(max_samples=3)
    for i, batch in enumerate((1, 2, 3, 4, 5)):  # every step a new rate: one sample each
        c.step(float(i), batch)
    assert c.share(0.0, 4.0) is None
    assert c.share(3.0, 4.0) == pytest.approx(1 / 5)


def test_same_batch_size_keeps_one_sample():
    c = ShareClock()
    for i in range(1000):
        c.step(float(i), 4)
    assert len(c.samples) == 2
    assert c.share(10.0, 510.0) == pytest.approx(125.0)


# -- the engine line -------------------------------------------------------------

def item(rid="chatcmpl-abc", **over):
    v = dict(request_id=rid, finished_wall=1_790_000_000.5, e2e=0.5, finish_reason="stop",
             prompt_tokens=7, generation_tokens=12, cached_tokens=0, preemptions=0, queue=0.01,
             prefill=0.05, decode=0.4, inference=0.45, share=0.2, devices=1, engine_index=0)
    v.update(over)
    return ("engine", tuple(v[k] for k in FIELDS))


def engine_text(**over) -> str:
    return json.dumps(render(item(**over)))


def test_rendered_line_parses_into_an_engine_event():
    event = parse_line(engine_text())
    assert event.kind == ev.ENGINE and event.request_id == "chatcmpl-abc"
    line = event.data["engine"]
    assert line["arrived_at"] == "2026-09-21T14:13:20.000Z" and line["finished_at"].endswith("20.500Z")
    assert line["share_seconds"] == 0.2 and line["devices"] == 1
    assert "problems" not in event.data


@pytest.mark.parametrize("field,bad", [("share_seconds", "0.2"), ("queue_seconds", -1.0),
                                       ("cached_tokens", 1.5), ("devices", 0), ("preemptions", True),
                                       ("decode_seconds", float("nan")),
                                       ("share_seconds", 10 ** 400)],  # beyond any float: not an OverflowError
                         ids=lambda v: v if isinstance(v, str) else type(v).__name__ + ("-huge" if v == 10 ** 400 else ""))
def test_a_field_of_the_wrong_type_is_dropped_and_counted(field, bad):
    obj = render(item())
    obj[field] = bad
    event = parse_line(json.dumps(obj))
    assert event.data["engine"][field] is None
    assert event.data["problems"] == ["engine_invalid_field"]


@pytest.mark.parametrize("text", ['{"type":"vllm_audit_engine","request_id":7}',
                                  '{"type":"vllm_audit_engine"',
                                  '{"type":"vllm_audit_engine_status","problems":{"dropped":-1}}',
                                  '{"type":"vllm_audit_engine_status","problems":[]}'])
def test_unusable_lines_are_malformed_engine(text):
    assert parse_line(text).reason == "malformed_engine"


def test_status_line_problem_reasons_are_bounded():
    event = parse_line(json.dumps(status_line(1.0, {"no_request_id": 2, "x" * 500: 1})))
    assert event.kind == ev.ENGINE_STATUS
    assert event.data["problems"] == {"no_request_id": 2, "other": 1}
    assert parse_line(json.dumps(dropped(3, 1.0))).data["problems"] == {"dropped": 3}


# -- correlation and the record ---------------------------------------------------

def mw_line(rid: str, received="2026-09-21T14:13:20.010Z", finished="2026-09-21T14:13:20.600Z") -> str:
    return json.dumps({"type": "vllm_audit_middleware", "v": 1, "request_id": rid,
                       "response_id": f"chatcmpl-{rid}", "received_at": received,
                       "finished_at": finished, "endpoint": "chat", "status": "completed",
                       "status_code": 200, "model": "tiny", "user": "ana",
                       "usage": {"prompt_tokens": 7, "completion_tokens": 12}})


def feed(corr: Correlator, *texts: str) -> None:
    from exporter.record import parse_ts
    for text in texts:
        event = parse_line(text)
        line = event.data.get("engine") or event.data.get("line")
        corr.feed(event, parse_ts(line.get("finished_at")))


def records(corr: Correlator) -> list[dict]:
    return [r for r in (build_record(e, AssembleContext(), middleware_seen=corr.middleware_seen)
                        for e in corr.drain()) if r is not None]


@pytest.mark.parametrize("engine_first", [True, False])
def test_engine_line_joins_the_middleware_record_in_either_order(engine_first):
    corr = Correlator()
    texts = [engine_text(rid="chatcmpl-abc"), mw_line("abc")]
    feed(corr, *(texts if engine_first else texts[::-1]))
    [rec] = records(corr)
    assert rec["engine"] == {k: render(item())[k] for k in ENGINE_FIELDS}
    assert rec["sources"] == ["middleware", "engine"]


def test_engine_line_alone_makes_no_record():
    corr = Correlator()
    feed(corr, engine_text())
    assert records(corr) == []


def test_record_without_engine_line_has_engine_null():
    corr = Correlator()
    feed(corr, mw_line("abc"))
    [rec] = records(corr)
    assert rec["engine"] is None and "engine" not in rec["sources"]


def test_n_gt_1_siblings_are_merged():
    corr = Correlator()
    feed(corr, engine_text(share=0.2, decode=0.4, cached_tokens=3),
         engine_text(share=0.3, decode=0.5, cached_tokens=3), mw_line("abc"))
    [rec] = records(corr)
    assert rec["engine"]["share_seconds"] == pytest.approx(0.5)
    assert rec["engine"]["decode_seconds"] == 0.5 and rec["engine"]["cached_tokens"] == 6


def test_a_late_engine_line_is_counted_not_a_second_record():
    evicted = []
    corr = Correlator(on_evict=evicted.append)
    feed(corr, mw_line("abc"))
    assert len(records(corr)) == 1
    feed(corr, engine_text())
    assert records(corr) == [] and evicted == ["late_event"]


def test_reused_id_engine_line_starts_the_next_request():
    corr = Correlator()
    feed(corr, mw_line("abc"))
    assert len(records(corr)) == 1
    later = 1_790_000_100.5
    feed(corr, engine_text(finished_wall=later),
         mw_line("abc", received="2026-09-21T14:15:00.010Z", finished="2026-09-21T14:15:00.600Z"))
    [rec] = records(corr)
    assert rec["engine"] is not None and rec["ts"].startswith("2026-09-21T14:15:00")


def test_checkpointed_entry_from_before_engine_data_still_builds():
    corr = Correlator()
    feed(corr, mw_line("abc"))
    state = json.loads(json.dumps(corr.state()))
    for entry in state["inflight"].values():
        del entry["engine"]  # a checkpoint written by a build without engine data
    again = Correlator()
    again.restore(state)
    feed(again, engine_text())
    [rec] = records(again)
    assert rec["engine"]["share_seconds"] == 0.2


# -- metrics and cost ---------------------------------------------------------------

def rec_with(user, share, model="tiny", devices=1, **eng):
    engine = dict.fromkeys(ENGINE_FIELDS)
    engine.update(share_seconds=share, devices=devices, queue_seconds=0.01, prefill_seconds=0.02,
                  decode_seconds=0.3, **eng)
    return {"model": model, "user": user, "endpoint": "chat", "status": "completed",
            "finish_reason": "stop", "flags": [], "engine": engine}


def exposition(recs, pricing=None) -> str:
    reg = CollectorRegistry()
    m = RequestMetrics(reg, users=UserLabels(10, mode="raw"), pricing=pricing)
    for r in recs:
        m.observe(r)
    return generate_latest(reg).decode()


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_engine_seconds_and_cost_per_user_are_the_sums_over_records():
    pricing = parse_pricing(2.0, ["big=7.2"])
    recs = [rec_with("ana", 0.5), rec_with("ana", 0.25), rec_with("ben", 1.0, model="big", devices=4),
            rec_with("ben", None), {**rec_with("ana", 1.0), "engine": None}]
    text = exposition(recs, pricing)
    assert sample(text, 'vllm_audit_engine_seconds_total{model="tiny",user="ana"}') == 0.75
    assert sample(text, 'vllm_audit_engine_requests_total{model="tiny",user="ana"}') == 2
    assert sample(text, 'vllm_audit_engine_seconds_total{model="big",user="ben"}') == 1.0
    assert math.isclose(sample(text, 'vllm_audit_cost_total{model="tiny",user="ana"}'), 0.75 * 2.0 / 3600)
    assert math.isclose(sample(text, 'vllm_audit_cost_total{model="big",user="ben"}'), 1.0 * 4 * 7.2 / 3600)
    assert sample(text, 'vllm_audit_engine_seconds_total{model="tiny",user="ben"}') is None
    assert sample(text, 'vllm_audit_engine_queue_seconds_count{model="tiny"}') == 3  # ana twice, ben once


def test_without_a_price_there_is_no_cost_series():
    text = exposition([rec_with("ana", 0.5)])
    assert "vllm_audit_cost_total{" not in text
    assert sample(text, 'vllm_audit_engine_seconds_total{model="tiny",user="ana"}') == 0.5


@pytest.mark.parametrize("default,overrides,message", [
    ("-1", [], "--gpu-hour-price"), ("nan", [], "--gpu-hour-price"), (None, ["tiny"], "MODEL=PRICE"),
    (None, ["tiny=abc"], "--gpu-hour-price-model tiny"), (None, ["a=1", "a=2"], "given twice")])
def test_bad_prices_are_refused(default, overrides, message):
    with pytest.raises(PricingError, match=message):
        parse_pricing(default, overrides)


def test_price_flags_and_env(tmp_path):
    from exporter.settings import SettingsError, load
    (tmp_path / "x").touch()
    s = load("replay", [str(tmp_path / "x"), "--gpu-hour-price", "2.5"],
             {"VLLM_AUDIT_GPU_HOUR_PRICE_MODEL": "a=1, org/b:c=3"})
    assert s.pricing.price("a") == 1.0 and s.pricing.price("org/b:c") == 3.0 and s.pricing.price("z") == 2.5
    with pytest.raises(SettingsError, match="--gpu-hour-price"):
        load("replay", [str(tmp_path / "x")], {"VLLM_AUDIT_GPU_HOUR_PRICE": "-2"})
    # compose passes unset variables as "": no price, no error
    empty = load("replay", [str(tmp_path / "x")], {"VLLM_AUDIT_GPU_HOUR_PRICE": "",
                                                    "VLLM_AUDIT_GPU_HOUR_PRICE_MODEL": ""})
    assert not empty.pricing.enabled


def test_csv_export_puts_engine_seconds_and_cost_next_to_tokens():
    import csv
    import io
    from exporter.compliance.export import write_records
    from exporter.record import new_record
    rec = new_record() | {"model": "tiny", "prompt_tokens": 7, "completion_tokens": 12,
                          "engine": rec_with("ana", 0.5)["engine"]}
    out = io.StringIO()
    write_records([rec, new_record()], out, "csv", False, parse_pricing(3.6, []))
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    head = rows[0]
    at = head.index("completion_tokens")
    assert head[at + 1:at + 3] == ["engine_seconds", "cost"]
    assert rows[1][at + 1] == "0.5" and float(rows[1][at + 2]) == pytest.approx(0.0005)
    assert rows[2][at + 1] == "" and rows[2][at + 2] == ""  # unknown, never 0


# -- a real capture: vLLM 0.32 CPU + the plugin (tools/record_fixtures.py --setup engine) -----

def test_real_capture_replays_into_records_with_engine_shares(tmp_path):
    from pathlib import Path
    from exporter.cli import make_parser
    from exporter.replay import replay_into
    from exporter.settings import build as build_settings
    capture = Path(__file__).resolve().parent / "fixtures" / "vllm-0.32.0" / "engine"
    argv = ["replay", str(capture / "vllm.log"), str(capture / "engine.jsonl"), "--archive-dir",
            str(tmp_path / "archive"), "--model", "tiny", "--no-progress", "--gpu-hour-price", "3.6"]
    rt, _ = replay_into(build_settings("replay", make_parser().parse_args(argv), {}), quiet=True)
    recs = [json.loads(x) for f in sorted((tmp_path / "archive").glob("audit-*.jsonl"))
            for x in f.read_text().splitlines()]
    responses = [json.loads(x) for x in (capture / "responses.jsonl").read_text().splitlines()]
    served = [r["response_id"] for r in responses if r["status"] == 200]
    from exporter.correlate import base_id  # the response says cmpl-X, the log cmpl-X-0
    assert len(served) == 15
    assert sorted(base_id(r["request_id"])[0] for r in recs) == sorted(base_id(x)[0] for x in served)
    assert all(r["engine"] is not None and r["engine"]["share_seconds"] > 0 for r in recs)
    # the six concurrent chats were batched: their shares sum to less than their inference times
    recs_all, recs = recs, [r for r in recs if r["user"] in ("alice", "bob", "carol")
                             and r["prompt"] and "Request " in r["prompt"]]
    assert len(recs) == 6
    assert sum(r["engine"]["share_seconds"] for r in recs) < sum(r["engine"]["inference_seconds"] for r in recs)
    text = generate_latest(rt.registry).decode()
    for user in ("alice", "bob", "carol"):
        mine = [r for r in recs_all if r["user"] == user]
        want = sum(r["engine"]["share_seconds"] for r in mine)
        assert math.isclose(sample(text, f'vllm_audit_engine_seconds_total{{model="tiny",user="{user}"}}'), want)
        assert math.isclose(sample(text, f'vllm_audit_cost_total{{model="tiny",user="{user}"}}'), want * 3.6 / 3600)


def test_plugin_side_modules_import_only_the_standard_library():
    """share.py and line.py run inside vLLM's process (plugin.py adds vLLM itself)."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, json; before = set(sys.modules); import exporter.statlogger.share, "
            "exporter.statlogger.line, exporter.middleware.writer; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout
    loaded = json.loads(out)
    assert "exporter.statlogger.share" in loaded
    assert [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names
            and m.split(".")[0] != "exporter"] == []


def test_every_field_of_the_engine_lines_with_an_odd_value_never_stops_the_replay(tmp_path, capsys):
    """The real engine capture (vLLM's log and the plugin's lines) replayed
    once per odd value: each engine line with one of its fields replaced
    (a field per line, in turn), and the status line's problem count and
    start object too. A status count beyond any float once made the self
    metric's inc() raise OverflowError and stop the replay. Now every
    request is still exactly one record and the archive verifies."""
    from pathlib import Path

    from oddvalues import paths, with_path
    from tests.real_captures import replay
    from exporter.cli import main
    capture = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "engine"
    lines = [json.loads(x) for x in (capture / "engine.jsonl").read_text().splitlines()]
    status = next(x for x in lines if x["type"] == "vllm_audit_engine_status")
    engine = [x for x in lines if x["type"] == "vllm_audit_engine"]
    fields = [k for k in engine[0] if k not in ("type", "v", "request_id")]
    want = [r["request_id"] for r in replay(tmp_path / "ref", [capture / "vllm.log", capture / "engine.jsonl"])]
    assert len(want) >= 10 and len(engine) >= 10
    odd = [None, True, -1, 10 ** 400, -10 ** 400, 1e308, float("nan"), float("inf"), "", "\ud800", [], {},
           json.loads("[" * 400 + "]" * 400)]
    for n, value in enumerate(odd):
        changed = [with_path(x, (fields[(i + n) % len(fields)],), value) for i, x in enumerate(engine)]
        odd_status = [with_path(status, p, value) for p in paths(status) if p and p != ("type",)]
        odd_status.append(dict(status, problems={"finished_missing": value}))
        text = "".join(json.dumps(x) + "\n" for x in [status, *odd_status, *changed])
        (tmp_path / f"engine{n}.jsonl").write_text(text)
        run = tmp_path / f"run{n}"
        records = replay(run, [capture / "vllm.log", tmp_path / f"engine{n}.jsonl"])
        assert [r["request_id"] for r in records] == want, value
        capsys.readouterr()
        assert main(["verify", str(run / "archive")]) == 0, value
