"""Request metrics store, label bounds, self metrics, and promtool lint."""

from __future__ import annotations

import doctest
import json
import shutil
import subprocess

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.labels import MAX_LABEL_LENGTH, OTHER, UNKNOWN, BoundedLabels, UserLabels
from exporter.metrics import RequestMetrics
from exporter.record import new_record
from exporter.scrape import VllmScraper
from exporter.selfmetrics import IGNORED_REASONS, PARSE_ERROR_REASONS, SelfMetrics


def rec(**fields) -> dict:
    r = new_record()
    r.update(model="tiny", user="alice", endpoint="chat", status="completed",
             finish_reason="stop")
    r.update(fields)
    return r


def make(users: UserLabels | None = None, **kw) -> tuple[RequestMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return RequestMetrics(registry, users=UserLabels() if users is None else users, **kw), registry


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


REQ = dict(model="tiny", user="alice", endpoint="chat", status="completed", finish_reason="stop")


# -- labels -----------------------------------------------------------------

def test_users_fold_after_limit_and_sums_stay_exact():
    m, reg = make(UserLabels(max_users=2))
    for user in ("alice", "bob", "carol", "dave", "alice"):
        m.observe(rec(user=user, prompt_tokens=10))
    assert value(reg, "vllm_audit_requests_total", **dict(REQ, user="alice")) == 2
    assert value(reg, "vllm_audit_requests_total", **dict(REQ, user=OTHER)) == 2
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny", user=OTHER) == 20
    assert value(reg, "vllm_audit_request_prompt_tokens_sum", model="tiny") == 50


def test_label_sanitising():
    users = UserLabels()
    assert users.label(None) == UNKNOWN
    assert users.label("") == UNKNOWN
    assert users.label("x" * 500) == "x" * MAX_LABEL_LENGTH
    # A lone surrogate would make the whole exposition fail to encode.
    assert users.label("bad\ud800name") == "bad?name"
    assert users.label(["unhashable"]) == "['unhashable']"
    assert users.label(42) == "42"


def test_reserved_values_take_no_slot_and_state_round_trips():
    users = UserLabels(max_users=1)
    assert [users.label(v) for v in (OTHER, UNKNOWN, "alice", "bob")] == [OTHER, UNKNOWN, "alice", OTHER]
    again = UserLabels(max_users=1)
    again.restore(json.loads(json.dumps(users.state())))
    assert again.label("bob") == OTHER and again.label("alice") == "alice"
    shrunk = BoundedLabels(limit=1)
    shrunk.restore(["a", "b"])
    assert shrunk.state() == ["a"]
    with pytest.raises(ValueError, match="list of str"):
        shrunk.restore({"a": 1})


def test_label_doctests():
    import exporter.labels
    result = doctest.testmod(exporter.labels)
    assert result.attempted >= 6 and result.failed == 0


def test_no_user_label():
    m, reg = make(UserLabels(enabled=False))
    m.observe(rec(prompt_tokens=3))
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny") == 3
    assert "user=" not in generate_latest(reg).decode()


# -- observe rules ----------------------------------------------------------

def test_full_record():
    m, reg = make()
    m.observe(rec(prompt_tokens=5, completion_tokens=3, latency_seconds=0.5, ttft_seconds=0.1,
                  empty_response=False, flags=["pii_email", "pii_email", "prompt_truncated"]))
    assert value(reg, "vllm_audit_requests_total", **REQ) == 1
    assert value(reg, "vllm_audit_completion_tokens_total", model="tiny", user="alice") == 3
    assert value(reg, "vllm_audit_user_request_duration_seconds_total", model="tiny", user="alice") == 0.5
    # le is inclusive: 0.5 lands in the 0.5 bucket, not the next one.
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", model="tiny", endpoint="chat", le="0.25") == 0
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", model="tiny", endpoint="chat", le="0.5") == 1
    assert value(reg, "vllm_audit_time_to_first_token_seconds_count", model="tiny") == 1
    assert value(reg, "vllm_audit_request_completion_tokens_bucket", model="tiny", le="+Inf") == 1
    # A flag repeated within one record counts once.
    assert value(reg, "vllm_audit_flags_total", model="tiny", flag="pii_email") == 1
    assert value(reg, "vllm_audit_flags_total", model="tiny", flag="prompt_truncated") == 1
    assert value(reg, "vllm_audit_empty_responses_total", model="tiny", user="alice") is None


def test_unknowns_and_unusable_numbers():
    m, reg = make()
    r = new_record()  # everything unknown, status "incomplete"
    r.update(prompt_tokens=True, completion_tokens=float("nan"), latency_seconds="1.5",
             ttft_seconds=float("inf"))
    m.observe(r)
    assert value(reg, "vllm_audit_requests_total", model=UNKNOWN, user=UNKNOWN, endpoint=UNKNOWN,
                 status="incomplete", finish_reason=UNKNOWN) == 1
    for name in ("vllm_audit_request_prompt_tokens_count", "vllm_audit_request_completion_tokens_count",
                 "vllm_audit_time_to_first_token_seconds_count"):
        assert value(reg, name, model=UNKNOWN) is None
    assert value(reg, "vllm_audit_request_duration_seconds_count", model=UNKNOWN, endpoint=UNKNOWN) is None


def test_negative_latency_is_clamped():
    m, reg = make()
    m.observe(rec(latency_seconds=-0.2))
    assert value(reg, "vllm_audit_request_duration_seconds_sum", model="tiny", endpoint="chat") == 0
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", model="tiny", endpoint="chat", le="0.05") == 1


def test_oversized_and_rejected():
    m, reg = make(oversized_input_tokens=100)
    m.observe(rec(prompt_tokens=100))  # at the threshold: not oversized
    m.observe(rec(prompt_tokens=101, completion_tokens=1))
    m.observe(rec(status="rejected", finish_reason=None, prompt_tokens=5000, completion_tokens=None))
    over = dict(model="tiny", user="alice")
    assert value(reg, "vllm_audit_oversized_inputs_total", **over, status="accepted") == 1
    assert value(reg, "vllm_audit_oversized_inputs_total", **over, status="rejected") == 1
    # The rejected prompt was never processed: not usage.
    assert value(reg, "vllm_audit_prompt_tokens_total", **over) == 201
    assert value(reg, "vllm_audit_request_prompt_tokens_count", model="tiny") == 2
    assert value(reg, "vllm_audit_requests_total", **dict(REQ, status="rejected", finish_reason=UNKNOWN)) == 1


def test_consecutive_empty_responses():
    m, reg = make()
    seq = [(True, "completed", 1), (True, "completed", 2), (None, "completed", 2),
           (True, "aborted", 2), (False, "aborted", 2), (True, "completed", 3),
           (False, "completed", 0)]
    for empty, status, expected in seq:
        m.observe(rec(empty_response=empty, status=status))
        assert value(reg, "vllm_audit_consecutive_empty_responses", model="tiny") == expected
    assert value(reg, "vllm_audit_empty_responses_total", model="tiny", user="alice") == 4
    m.observe(rec(model="other", empty_response=True))
    assert value(reg, "vllm_audit_consecutive_empty_responses", model="tiny") == 0


def test_model_label_is_bounded():
    m, reg = make(max_models=1)
    m.observe(rec(model="tiny"))
    m.observe(rec(model="client-made-this-up"))
    assert value(reg, "vllm_audit_requests_total", **dict(REQ, model=OTHER)) == 1


def test_families_exposed_when_empty():
    _, reg = make()
    names = {f.name for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert names == {
        "vllm_audit_requests", "vllm_audit_prompt_tokens", "vllm_audit_completion_tokens",
        "vllm_audit_request_prompt_tokens", "vllm_audit_request_completion_tokens",
        "vllm_audit_request_duration_seconds", "vllm_audit_time_to_first_token_seconds",
        "vllm_audit_user_request_duration_seconds", "vllm_audit_user_timed_requests",
        "vllm_audit_empty_responses", "vllm_audit_consecutive_empty_responses",
        "vllm_audit_oversized_inputs", "vllm_audit_flags", "vllm_audit_identity_source_requests",
        "vllm_audit_identity_invalid", "vllm_audit_engine_seconds",
        "vllm_audit_engine_requests", "vllm_audit_cost", "vllm_audit_engine_queue_seconds",
        "vllm_audit_engine_prefill_seconds", "vllm_audit_engine_decode_seconds"}


def test_identity_source_share_and_invalid_reasons():
    m, reg = make()
    for source in ("jwt", "jwt", "header", None):
        m.observe(rec(identity_source=source))
    m.observe(rec(user=None, identity={"invalid_reason": "expired"}, flags=["identity_invalid"]))
    m.observe(rec(user=None, identity={"invalid_reason": "signature"}, flags=["identity_invalid"]))
    src = "vllm_audit_identity_source_requests_total"
    assert [value(reg, src, model="tiny", source=s) for s in ("jwt", "header", "none")] == [2, 1, 3]
    assert value(reg, src, model="tiny", source="api_key") is None
    inv = "vllm_audit_identity_invalid_total"
    assert value(reg, inv, model="tiny", reason="expired") == value(reg, inv, model="tiny", reason="signature") == 1
    assert value(reg, "vllm_audit_flags_total", model="tiny", flag="identity_invalid") == 2


def test_registering_twice_fails():
    m, reg = make()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        RequestMetrics(reg, users=UserLabels())


# -- snapshot / restore -----------------------------------------------------

records_st = st.lists(st.builds(
    rec,
    user=st.sampled_from(["alice", "bob", "carol", None]),
    model=st.sampled_from(["tiny", "big", None]),
    status=st.sampled_from(["completed", "aborted", "rejected", "error"]),
    prompt_tokens=st.one_of(st.none(), st.integers(0, 300_000)),
    completion_tokens=st.one_of(st.none(), st.integers(0, 5000)),
    latency_seconds=st.one_of(st.none(), st.floats(-1, 1000)),
    ttft_seconds=st.one_of(st.none(), st.floats(0, 100)),
    empty_response=st.sampled_from([True, False, None]),
    flags=st.lists(st.sampled_from(["a", "b", "oversized_input"]), max_size=3),
), max_size=30)


@settings(max_examples=examples(60), deadline=None)
@given(records=records_st, cut=st.integers(0, 30))
def test_restore_continues_without_double_counting(records, cut):
    """Counting records[:cut], checkpointing through JSON, restarting and
    counting the rest gives exactly the exposition of an uninterrupted run."""
    whole, reg_whole = make(UserLabels(max_users=2))
    for r in records:
        whole.observe(r)
    first, _ = make(UserLabels(max_users=2))
    for r in records[:cut]:
        first.observe(r)
    snap = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second, reg_second = make(UserLabels(max_users=2))
    second.restore(snap)
    for r in records[cut:]:
        second.observe(r)
    assert generate_latest(reg_second) == generate_latest(reg_whole)
    assert second.snapshot() == whole.snapshot()


def test_restore_across_config_changes():
    with_users, _ = make()
    with_users.observe(rec(user="alice", prompt_tokens=3, latency_seconds=0.07))
    with_users.observe(rec(user="bob", prompt_tokens=4, latency_seconds=0.3))
    snap = with_users.snapshot()
    # --no-user-label now: per-user series are summed away.
    no_users, reg = make(UserLabels(enabled=False))
    no_users.restore(snap)
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny") == 7
    # ...and back: the pre-change total is attributed to __other__.
    back, reg = make()
    back.restore(no_users.snapshot())
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny", user=OTHER) == 7
    # Changed buckets: counts move to the first new bucket >= the old bound.
    snap["histograms"]["vllm_audit_request_duration_seconds"]["buckets"] = [0.08, 0.3]
    snap["histograms"]["vllm_audit_request_duration_seconds"]["series"] = [
        ["tiny", "chat", [1, 1, 0], 0.37]]
    moved, reg = make()
    moved.restore(snap)
    dur = dict(model="tiny", endpoint="chat")
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", **dur, le="0.05") == 0
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", **dur, le="0.1") == 1
    assert value(reg, "vllm_audit_request_duration_seconds_bucket", **dur, le="0.5") == 2
    assert value(reg, "vllm_audit_request_duration_seconds_sum", **dur) == 0.37


def test_restore_rejects_unknown_version_and_damage():
    m, reg = make()
    with pytest.raises(ValueError, match="snapshot version"):
        m.restore({"v": 99})
    m.observe(rec(prompt_tokens=3))
    before = m.snapshot()
    damaged = json.loads(json.dumps(before))
    damaged["labels"]["user"] = ["mallory"]
    damaged["counters"]["vllm_audit_prompt_tokens_total"]["series"] = [["tiny"]]  # no value
    with pytest.raises(ValueError, match="damaged metrics snapshot"):
        m.restore(damaged)
    assert m.snapshot() == before  # all or nothing
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny", user="alice") == 3


# -- self metrics -----------------------------------------------------------

def test_self_metrics_preinitialised():
    reg = CollectorRegistry()
    sm = SelfMetrics(reg, sources=("vllm", "middleware"))
    for reason in IGNORED_REASONS:
        assert value(reg, "vllm_audit_log_lines_ignored_total", reason=reason) == 0
    for reason in PARSE_ERROR_REASONS:
        assert value(reg, "vllm_audit_parse_errors_total", reason=reason) == 0
    assert value(reg, "vllm_audit_evictions_total", reason="timeout") == 0
    assert value(reg, "vllm_audit_log_file_up", source="middleware") == 0
    assert value(reg, "vllm_audit_build_info", version=__import__("exporter").__version__) == 1
    src = sm.source("vllm")
    src.lines.inc(3)
    assert sm.source("vllm") is src
    assert value(reg, "vllm_audit_log_lines_total", source="vllm") == 3
    sm.checkpoint_written(1_790_000_000.0)
    sm.checkpoint_failed()
    assert value(reg, "vllm_audit_last_checkpoint_timestamp_seconds") == 1_790_000_000.0
    assert value(reg, "vllm_audit_checkpoint_writes_total") == 1
    assert value(reg, "vllm_audit_checkpoint_write_failures_total") == 1


# -- promtool ---------------------------------------------------------------

def full_exposition() -> bytes:
    """Every family this work package exposes, with samples."""
    reg = CollectorRegistry()
    m = RequestMetrics(reg, users=UserLabels(), oversized_input_tokens=10)
    m.observe(rec(prompt_tokens=50, completion_tokens=3, latency_seconds=1.0, ttft_seconds=0.2,
                  empty_response=True, flags=["oversized_input"]))
    SelfMetrics(reg, sources=("vllm",))
    body = "# TYPE vllm:request_success counter\nvllm:request_success_total 3\n"
    client = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, text=body)))
    VllmScraper("http://vllm:8000", reg, client=client).scrape_once()
    return generate_latest(reg)


def test_promtool_check_metrics():
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install -y prometheus (CI installs it)"
    text = full_exposition()
    assert b"vllm_audit_vllm_requests_finished 3.0" in text
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout.decode() + done.stderr.decode())


# -- personal data never becomes a label by accident (issue #18, item 4) ----------

PERSONAL_USERS = ("li.na@example.com", "１３８１２３４５６７８", "+1 415 555 2671", "11010519491231002X")


def test_user_label_is_pseudonymous_by_default():
    users = UserLabels(key=b"k")
    shown = [users.label(u) for u in PERSONAL_USERS]
    assert all(s.startswith("u:") and len(s) == 18 for s in shown) and len(set(shown)) == len(shown)
    assert UserLabels(key=b"k").label(PERSONAL_USERS[0]) == shown[0]  # keyed: stable for one key
    assert UserLabels(key=b"other").label(PERSONAL_USERS[0]) != shown[0]
    # Names and ids that are not personal data stay readable on dashboards.
    assert [users.label(u) for u in ("alice", "key:065127ff61eb98eb", "team-7")] == \
        ["alice", "key:065127ff61eb98eb", "team-7"]


def test_user_label_modes_raw_and_hashed():
    assert [UserLabels(mode="raw").label(u) for u in PERSONAL_USERS] == list(PERSONAL_USERS)
    hashed = UserLabels(mode="hashed", key=b"k")
    assert hashed.label("alice").startswith("u:")
    assert hashed.label(PERSONAL_USERS[0]) == UserLabels(key=b"k").label(PERSONAL_USERS[0])
    assert hashed.label("key:065127ff61eb98eb") == "key:065127ff61eb98eb"  # already a pseudonym
    with pytest.raises(ValueError, match="user label mode"):
        UserLabels(mode="plain")


def test_restore_does_not_revive_raw_personal_labels():
    # A checkpoint written by an older build (or under --user-label-mode raw)
    # holds raw e-mail labels; restored now they merge into the pseudonym.
    old, _ = make(UserLabels(mode="raw"))
    for _ in range(2):
        old.observe(rec(user="li.na@example.com", prompt_tokens=3))
    old.observe(rec(user="alice", prompt_tokens=1))
    snap = json.loads(json.dumps(old.snapshot()))
    users = UserLabels(key=b"k")
    new, reg = make(users)
    users.restore(snap["labels"]["user"])
    new.restore(snap)
    new.observe(rec(user="li.na@example.com", prompt_tokens=3))
    text = generate_latest(reg).decode()
    pseudonym = users.label("li.na@example.com")
    assert "li.na@example.com" not in text and "example.com" not in json.dumps(new.snapshot())
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny", user=pseudonym) == 9
    assert value(reg, "vllm_audit_prompt_tokens_total", model="tiny", user="alice") == 1
    assert users.state() == [pseudonym, "alice"]


def test_other_label_dimensions_fold_personal_values():
    m, reg = make()
    m.observe(rec(model="bob@example.com"))  # a client can send any model name
    assert "bob@example.com" not in generate_latest(reg).decode()
    assert value(reg, "vllm_audit_requests_total", **dict(REQ, model=OTHER)) == 1
    restored, reg2 = make()
    snap = m.snapshot()
    snap["labels"]["model"] = ["bob@example.com"]
    restored.restore(snap)
    assert "bob@example.com" not in generate_latest(reg2).decode()


def test_user_label_key_is_kept_private_or_derived(tmp_path):
    from exporter.labels import USER_LABEL_KEY_FILE, user_label_key
    first = user_label_key(None, tmp_path)
    assert user_label_key(None, tmp_path) == first and len(first) == 32
    path = tmp_path / USER_LABEL_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    derived = user_label_key(b"archive-key", tmp_path / "elsewhere")
    assert derived == user_label_key(b"archive-key", tmp_path) != first
    assert not (tmp_path / "elsewhere").exists()
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="not a user-label key"):
        user_label_key(None, tmp_path)


_FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
_local = st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=20).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum())
personal_values = st.one_of(
    # Addresses as people have them (st.emails() also makes "*@A.AC": valid, never seen).
    st.builds(lambda local, host: f"{local}@{host}", _local, st.emails().map(lambda e: e.rsplit("@", 1)[1])),
    st.builds(lambda p, n: f"1{p}{n:09d}", st.sampled_from("3456789"), st.integers(0, 999_999_999)),
    st.builds(lambda n: f"+{n}", st.integers(10**8, 10**14)),
).flatmap(lambda v: st.sampled_from([v, v.translate(_FULL_WIDTH), f"user {v}", f"{v} (admin)"]))


@settings(max_examples=examples(200), deadline=None)
@given(personal_values)
def test_no_label_dimension_shows_a_generated_personal_value(value):
    users, model = UserLabels(key=b"k"), BoundedLabels(limit=10)
    shown = (users.label(value), model.label(value))
    assert value[:MAX_LABEL_LENGTH] not in shown and shown[1] == OTHER, (value, shown)
    assert shown[0].startswith("u:")


def test_per_user_mean_latency_counts_only_requests_with_a_latency():
    """The users dashboard divided the latency sum by requests_total, which
    also counts records whose latency is null: the mean read low."""
    from exporter.record import new_record
    m, reg = make()
    for lat in (2.0, None, 4.0, None):
        r = new_record()
        r.update(model="tiny", user="alice", endpoint="chat", status="completed", latency_seconds=lat)
        m.observe(r)
    text = generate_latest(reg).decode()
    assert 'vllm_audit_user_timed_requests_total{model="tiny",user="alice"} 2.0' in text
    assert 'vllm_audit_user_request_duration_seconds_total{model="tiny",user="alice"} 6.0' in text
    assert 'vllm_audit_requests_total{' in text  # 4 requests: dividing by it gave 1.5 s, not 3 s
