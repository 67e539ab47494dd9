"""``vllm-audit-exporter demo``: everything that runs without a GPU, in one go.

Replays a real vLLM 0.32 capture bundled with the package (recorded from the
CPU build with the audit middleware on, see tests/fixtures/vllm-0.32.0/),
writes the hash-chained archive, verifies it, serves ``/metrics`` and shows
it, and — when Prometheus and Alertmanager are installed — loads the repo's
own alert rules and shows ``VllmEmptyResponses`` firing.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

from .replay import replay_into
from .settings import load as load_settings

SHOWN = ("vllm_audit_requests_total", "vllm_audit_prompt_tokens_total",
         "vllm_audit_completion_tokens_total", "vllm_audit_empty_responses_total",
         "vllm_audit_oversized_inputs_total", "vllm_audit_consecutive_empty_responses")


def bundled_capture() -> list[Path]:
    root = resources.files("exporter") / "demo_capture"
    files = [Path(str(root / name)) for name in ("vllm.log", "middleware.jsonl")]
    return [f for f in files if f.is_file()]


def serve_in_thread(app, host: str, port: int):
    import uvicorn
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"could not serve on {host}:{port}")
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, bound


def run_demo(args) -> int:
    import httpx

    from .httpapp import create_app

    files = bundled_capture()
    archive = args.archive_dir or Path(tempfile.mkdtemp(prefix="vllm-audit-demo-"))
    print(f"== 1. replaying the bundled real vLLM 0.32 capture: {', '.join(f.name for f in files)}")
    settings = load_settings("replay", [*map(str, files), "--archive-dir", str(archive), "--model", "tiny",
                                        "--no-progress"], {})
    rt, summary = replay_into(settings, quiet=True)
    print(summary.render())
    first = sorted(archive.glob("audit-*.jsonl"))
    print(f"\n== 2. archive: {archive}  ({sum(1 for f in first for _ in f.open())} records)")
    if first:
        print("first record:", first[0].open().readline().strip()[:400], "...")

    print("\n== 3. verifying the hash chain")
    from .compliance.verify import verify_main
    verify_main(str(archive))

    host, _, port = args.listen_address.rpartition(":")
    app = create_app(registry=rt.registry, health=rt.health)
    try:
        server, thread, bound = serve_in_thread(app, host or "127.0.0.1", int(port))
    except RuntimeError as exc:
        print(f"vllm-audit-exporter demo: {exc} (in use? pass --web.listen-address 127.0.0.1:0 "
              "for any free port)", file=sys.stderr)
        return 2
    url = f"http://{host or '127.0.0.1'}:{bound}"
    print(f"\n== 4. serving {url}/metrics — excerpt:")
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(SHOWN):
            print("  " + line)

    if not args.no_alerts:
        _alerts(url)
    if args.serve:
        print(f"\nserving {url}/metrics until Ctrl-C")
        try:
            while thread.is_alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    thread.join(timeout=10)
    return 0


def _alerts(exporter_url: str) -> None:
    if not (shutil.which("prometheus") and (shutil.which("alertmanager") or shutil.which("prometheus-alertmanager"))):
        print("\n== 5. (Prometheus/Alertmanager not installed: `bash tools/setup.sh --live` "
              "adds them, then this step shows VllmEmptyResponses firing)")
        return
    stack = _alert_stack()
    if stack is None:
        print("\n== 5. alert demo unavailable in this installation (it needs a checkout: tools/alert_stack.py)")
        return
    print("\n== 5. Prometheus + Alertmanager with the repo's rules (rendered for localhost):")
    stack.show_alert(exporter_url)


def _alert_stack():
    """``tools/alert_stack.py`` of the checkout this package runs from, or None."""
    path = Path(__file__).resolve().parents[1] / "tools" / "alert_stack.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("vllm_audit_alert_stack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
