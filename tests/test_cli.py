"""The command line as a user meets it: stdin input, readable configuration
errors (exit 2, the flag or env var named), env/flag precedence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.cli import make_parser
from exporter.settings import SettingsError, build

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"


def _run(*argv, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=60, **kw)


def test_docker_logs_pipe_into_run_log_dash(tmp_path):
    """`docker logs -f vllm | vllm-audit-exporter run --log -`"""
    archive = tmp_path / "archive"
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--log", "-", "--archive-dir", str(archive),
         "--model", "tiny", "--web.listen-address", "127.0.0.1:0", "--request-timeout", "0.5"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    proc.stdin.write(CAPTURE.read_bytes())
    proc.stdin.close()
    deadline = time.monotonic() + 30
    records: list = []
    while time.monotonic() < deadline and len(records) < 22:
        files = sorted(archive.glob("audit-*.jsonl"))
        records = [json.loads(x) for f in files for x in f.read_text().splitlines()]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
    ids = [r["request_id"] for r in records]
    assert len(ids) == 22 and len(set(ids)) == 22


@pytest.mark.parametrize("argv, env, named", [
    (["run"], {}, "--log"),
    (["run", "--log", "x.log", "--web.listen-address", "9400"], {}, "--web.listen-address"),
    (["run", "--log", "x.log"], {"VLLM_AUDIT_MAX_USERS": "many"}, "VLLM_AUDIT_MAX_USERS"),
    (["run", "--log", "x.log", "--server-timezone", "Mars/Olympus"], {}, "--server-timezone"),
    (["run", "--log", "x.log", "--loki-url", "loki:3100"], {}, "--loki-url"),
    (["run", "--log", "x.log", "--loki-prompt-policy", "scramble"], {}, "--loki-prompt-policy"),
    (["run", "--log", "x.log", "--user-label-mode", "plain"], {}, "--user-label-mode"),
    (["run", "--log", "x.log"], {"VLLM_AUDIT_USER_LABEL_MODE": "clear"}, "--user-label-mode"),
    (["run", "--log", "x.log", "--hmac-key-file", "/nonexistent/key"], {}, "--hmac-key-file"),
    (["replay", "/nonexistent/vllm.log"], {}, "no such file"),
    (["run", "--log", "x.log"], {"VLLM_AUDIT_MAX_THREAD_RESTARTS": "-1"}, "--max-thread-restarts"),
])
def test_bad_configuration_exits_2_naming_the_flag(argv, env, named):
    result = _run(*argv, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], result.stderr  # one readable line, no traceback


def test_flags_win_over_environment_and_every_flag_has_an_env_var():
    ns = make_parser().parse_args(["replay", str(CAPTURE), "--model", "from-flag"])
    env = {"VLLM_AUDIT_MODEL": "from-env", "VLLM_AUDIT_MAX_USERS": "7",
           "VLLM_AUDIT_NO_USER_LABEL": "true", "VLLM_AUDIT_LOKI_URL": "http://loki:3100"}
    s = build("replay", ns, env)
    assert (s.model, s.max_users, s.user_label) == ("from-flag", 7, False)
    assert s.loki.url == "http://loki:3100"
    assert s.user_label_mode == "pseudonymous"
    assert build("replay", ns, {"VLLM_AUDIT_USER_LABEL_MODE": "raw"}).user_label_mode == "raw"
    with pytest.raises(SettingsError, match="VLLM_AUDIT_NO_USER_LABEL"):
        build("replay", ns, {"VLLM_AUDIT_NO_USER_LABEL": "perhaps"})
    help_text = _run("run", "--help").stdout
    for flag in ("--web.listen-address", "--loki-url", "--max-users", "--from-start"):
        env_name = "VLLM_AUDIT_" + flag.lstrip("-").replace(".", "_").replace("-", "_").upper()
        assert env_name in help_text


# -- unusable archive/state directories: one line, exit 2, every subcommand ----------

@pytest.fixture
def dirs(tmp_path):
    """A regular file, a path under it, a missing path, a directory this
    process cannot write (root ignores modes: made immutable), a good one."""
    afile = tmp_path / "a-file"
    afile.write_text("not a directory\n")
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0
    try:
        (ro / "probe").write_text("")
    except OSError:
        pass
    else:  # a skip would pass CI without the check: say what the machine lacks
        pytest.fail("cannot make a directory unwritable here (as root this needs chattr +i, e2fsprogs, "
                    "on a file system that supports it)")
    yield {"FILE": afile, "UNDER": afile / "sub", "MISSING": tmp_path / "missing", "RO": ro,
           "OK": tmp_path / "ok"}
    if immutable:
        subprocess.run(["chattr", "-i", str(ro)], check=True)
    ro.chmod(0o755)


@pytest.mark.parametrize("argv, named", [
    (["run", "--log", "x.log", "--archive-dir", "FILE"], "--archive-dir"),
    (["run", "--log", "x.log", "--archive-dir", "UNDER"], "--archive-dir"),
    (["run", "--log", "x.log", "--archive-dir", "RO"], "--archive-dir"),
    (["run", "--log", "x.log", "--archive-dir", "OK", "--state-dir", "FILE"], "--state-dir"),
    (["run", "--log", "x.log", "--archive-dir", "OK", "--state-dir", "UNDER"], "--state-dir"),
    (["run", "--log", "x.log", "--archive-dir", "OK", "--state-dir", "RO"], "--state-dir"),
    (["replay", str(CAPTURE), "--archive-dir", "FILE"], "--archive-dir"),
    (["replay", str(CAPTURE), "--archive-dir", "RO"], "--archive-dir"),
    (["replay", str(CAPTURE), "--archive-dir", "OK", "--state-dir", "UNDER"], "--state-dir"),
    (["demo", "--archive-dir", "FILE", "--no-alerts"], "--archive-dir"),
    (["demo", "--archive-dir", "RO", "--no-alerts"], "--archive-dir"),
    (["verify", "FILE"], "DIR"),
    (["verify", "MISSING"], "DIR"),
    (["verify", "RO", "--state-dir", "FILE"], "--state-dir"),
    (["retention", "FILE", "--delete-after-days", "3"], "retention DIR"),
    (["retention", "MISSING", "--delete-after-days", "3"], "retention DIR"),
    (["retention", "RO", "--delete-after-days", "3"], "retention DIR"),
    (["export", "--archive-dir", "FILE", "--from", "2026-01-01", "--to", "2026-01-02"], "--archive-dir"),
    (["export", "--archive-dir", "MISSING", "--from", "2026-01-01", "--to", "2026-01-02"], "--archive-dir"),
])
def test_unusable_directory_is_one_line_and_exit_2(dirs, argv, named, capsys):
    from exporter.cli import main
    argv = [str(dirs[a]) if a in dirs else a for a in argv]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], lines


def test_directories_are_created_0750_whatever_the_umask(tmp_path):
    from exporter.cli import main
    from exporter.loki.state import DeadLetters
    for umask, name in ((0o022, "a"), (0o077, "b")):
        old = os.umask(umask)
        try:
            archive = tmp_path / name / "new" / "archive"
            assert main(["replay", str(CAPTURE), "--archive-dir", str(archive), "--model", "tiny",
                         "--no-progress", "--state-dir", str(tmp_path / name / "state" / "here")]) == 0
            DeadLetters(archive / "dead-letter", clock=lambda: 1.8e9).write([{"request_id": "x"}])
        finally:
            os.umask(old)
        for d in (tmp_path / name / "new", archive, tmp_path / name / "state",
                  tmp_path / name / "state" / "here", archive / "dead-letter"):
            assert oct(os.stat(d).st_mode & 0o777) == oct(0o750), d


def test_every_loki_setting_the_docs_advertise_is_reachable(tmp_path):
    """docs/loki.md advertises a client certificate, the job label and a
    timeout: each has a flag and a VLLM_AUDIT_* variable now."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert"), key.write_text("key")
    argv = ["replay", str(CAPTURE), "--archive-dir", str(tmp_path / "a"), "--loki-url", "https://loki:3100",
            "--loki-client-cert-file", str(cert), "--loki-timeout", "3.5"]
    env = {"VLLM_AUDIT_LOKI_CLIENT_KEY_FILE": str(key), "VLLM_AUDIT_LOKI_JOB": "vllm-audit-eu"}
    loki = build("replay", make_parser().parse_args(argv), env).loki
    assert (loki.client_cert_file, loki.client_key_file, loki.timeout_seconds, loki.job) == \
        (str(cert), str(key), 3.5, "vllm-audit-eu")
    with pytest.raises(SettingsError, match="--loki-client-cert-file: .*: no such file"):
        build("replay", make_parser().parse_args([*argv[:6], "--loki-client-cert-file", "/nope"]), {})


def test_replay_says_when_its_final_checkpoint_could_not_be_written(tmp_path, capsys, monkeypatch):
    """A checkpoint write that fails (full disk, a state that will not encode)
    is counted and retried in a long run, where /health shows it; a replay
    ends with it, so it says so, after the records it did archive."""
    from exporter import pipeline
    from exporter.checkpoint import CheckpointError
    from exporter.cli import main

    def refuse(path, state, *args, **kwargs):
        raise CheckpointError("ENOSPC", "No space left on device")
    monkeypatch.setattr(pipeline, "write_atomic", refuse)
    capture = Path(__file__).parent / "fixtures" / "vllm-0.32.0" / "debug" / "vllm.log"
    archive = tmp_path / "a"
    assert main(["replay", str(capture), "--archive-dir", str(archive), "--model", "tiny", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: the final checkpoint was not written (ENOSPC: No space left on device)" in err
    assert "every record is in the archive" in err
    assert not (archive / ".state" / "checkpoint.json").exists()
    assert len([x for p in archive.glob("audit-*.jsonl") for x in p.read_text().splitlines()]) == 22
    monkeypatch.undo()
    # The chain holds; verify warns (exit 3) that without a checkpoint a cut end cannot be ruled out.
    assert main(["verify", str(archive)]) == 3
    out = capsys.readouterr().out
    assert out.startswith("OK: 1 file(s), 22 record(s)") and "WARNING: no checkpoint" in out
    assert main(["replay", str(capture), "--archive-dir", str(archive), "--model", "tiny", "--no-progress"]) == 0
    assert "warning: the final checkpoint" not in capsys.readouterr().err
    assert len([x for p in archive.glob("audit-*.jsonl") for x in p.read_text().splitlines()]) == 22
