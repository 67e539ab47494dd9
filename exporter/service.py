"""The ``run`` service minus its HTTP server: the runtime and its threads.

Threads: ``pipeline`` (tail → archive → checkpoint, plus hourly retention),
``loki`` (the pusher, with ``--loki-url``) — both under an
:class:`exporter.supervise.Supervisor`, so an unexpected exception restarts
them from their durable state instead of silently ending them, and
``--max-thread-restarts`` failures in a row without progress make the
process exit with status 1 — and ``scrape`` (``--vllm-url``).

``cmd_run`` (exporter/cli.py) starts a :class:`Service`, serves ``/metrics``
and ``/health`` until SIGTERM or until :attr:`Service.fatal` asks it to stop,
then calls :meth:`Service.shutdown` and exits with :attr:`Service.exit_code`.
Tests drive the same object in-process.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from . import PROG
from .supervise import EXIT_THREAD_FAILED, Supervisor

IDLE_PROGRESS_SECONDS = 60.0  # a restarted pipeline idle and clean this long is up again


class Service:
    def __init__(self, settings, *, rt=None, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, idle_wait: float = 0.2):
        from .runtime import build
        self.settings = settings
        self.rt = rt if rt is not None else build(settings, live=True)
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.fatal_event = threading.Event()
        self.on_fatal: Callable[[], None] = lambda: None  # cmd_run: ask the HTTP server to exit
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.idle_wait = idle_wait
        self.threads: list[threading.Thread] = []
        self.supervisors: dict[str, Supervisor] = {}

    # -- life cycle ------------------------------------------------------------
    def start(self) -> None:
        rt = self.rt
        if rt.pipeline.skip_keys is None:
            # Anchor: a rebuild (or a restart) resumes at the positions read
            # from now on, even if nothing is committed before a failure.
            rt.pipeline.commit()
        self._supervised("pipeline", self._pipeline_body, recover=self._rebuild_pipeline)
        if self.settings.vllm_url:
            from .scrape import VllmScraper
            rt.scraper = VllmScraper(self.settings.vllm_url, rt.registry)
            rt.health.scraper = rt.scraper
            self._thread("scrape", self._scrape_loop)
        if rt.loki is not None:
            self._supervised("loki", self._loki_body, recover=rt.loki.reset)
        for t in self.threads:
            t.start()

    def shutdown(self) -> None:
        """Stop the threads: the pipeline commits what it processed (if it did
        not fail), an in-flight Loki push gets 2 s (an unacknowledged batch is
        sent again on the next start and Loki deduplicates it)."""
        self.stop.set()
        deadline = time.monotonic() + 8
        for t in self.threads:
            if t.name != "loki":
                t.join(timeout=max(0.1, deadline - time.monotonic()))
        for t in self.threads:
            if t.name == "loki":
                t.join(timeout=2)
        if self.rt.loki is not None:
            self.rt.loki.close()
        if self.rt.publishers is not None:
            # The shutdown checkpoint is signed (the pipeline thread ended):
            # witnesses and the TSA get a last try at it, bounded.
            self.rt.publishers.close(timeout=3)

    @property
    def exit_code(self) -> int:
        return EXIT_THREAD_FAILED if self.fatal else 0

    # -- plumbing --------------------------------------------------------------
    def _thread(self, name: str, target) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(t)
        return t

    def _supervised(self, name: str, body, *, recover) -> Supervisor:
        rt = self.rt
        status = rt.health.add_thread(name)
        up, restarts = rt.selfm.thread(name)
        sup = Supervisor(name, body, stop=self.stop, status=status, up_gauge=up,
                         restarts_counter=restarts, recover=recover, on_give_up=self._give_up,
                         limit=self.settings.max_thread_restarts,
                         backoff_initial=self.backoff_initial, backoff_max=self.backoff_max)
        t = self._thread(name, sup.run)
        status.alive = t.is_alive
        self.supervisors[name] = sup
        return sup

    def _give_up(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)
        self.fatal_event.set()
        self.on_fatal()

    # -- the workers -------------------------------------------------------------
    def _rebuild_pipeline(self) -> None:
        from .runtime import rebuild_pipeline
        rebuild_pipeline(self.rt)

    def _pipeline_body(self, progress: Callable[[], None]) -> None:
        rt, stop = self.rt, self.stop
        pipeline = rt.pipeline
        next_retention = 0.0
        since = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_retention:
                _retention(rt)
                next_retention = time.monotonic() + 3600
            n = pipeline.step()
            if rt.loki is not None:
                rt.health.loki = rt.loki.status.report()
            if pipeline.commits or (not pipeline.dirty
                                    and time.monotonic() - since >= IDLE_PROGRESS_SECONDS):
                progress()
            if n == 0:
                stop.wait(self.idle_wait)
        # Graceful stop only: a body that raised is never committed (its state
        # may be half updated); the rebuild or the next start re-derives it.
        pipeline.commit()
        pipeline.sign_now()  # the shutdown checkpoint

    def _loki_body(self, progress: Callable[[], None]) -> None:
        self.rt.loki.run(self.stop, on_progress=progress)

    def _scrape_loop(self) -> None:
        rt = self.rt
        while not self.stop.is_set():
            rt.scraper.scrape_once()
            self.stop.wait(rt.settings.scrape_interval)


def _keep_from_day(rt) -> str | None:
    """Retention never touches a day Loki has not finished shipping (the
    pusher reads plain .jsonl files only)."""
    if rt.loki is None:
        return None
    from .archive.layout import loki_keep_from
    return loki_keep_from(rt.loki.position.file)


def _retention(rt) -> None:
    s = rt.settings
    if not (s.retention_compress_days or s.retention_delete_days):
        return
    from .compliance.retention import RetentionError, apply_retention
    try:
        for a in apply_retention(s.archive_dir, now=time.time(), compress_after_days=s.retention_compress_days,
                                 delete_after_days=s.retention_delete_days, keep_from_day=_keep_from_day(rt),
                                 key=s.hmac_key):
            if a.action == "refused":
                print(f"{PROG}: retention refused {a.path}: {a.detail}", file=sys.stderr)
    except (OSError, RetentionError) as exc:  # retention must never stop auditing
        print(f"{PROG}: retention failed: {exc}", file=sys.stderr)


# ------------------------------------------------ the command, with its HTTP server
def serve(settings) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until a worker thread gave up
    after ``--max-thread-restarts`` failed restarts (exit 1; exporter/service.py)."""
    import uvicorn

    from .httpapp import create_app

    service = Service(settings)
    rt = service.rt
    app = create_app(registry=rt.registry, health=rt.health)
    # Bounded shutdown: a scraper holding a connection open must not keep the
    # exporter alive after SIGTERM (orchestrators send SIGKILL soon after).
    config = uvicorn.Config(app, host=settings.listen_host, port=settings.listen_port,
                            log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = _graceful_server(config)

    def exit_now():
        server.should_exit = True
    service.on_fatal = exit_now
    service.start()
    if service.fatal:  # gave up before the server was up
        exit_now()
    try:
        server.run()  # returns on SIGINT/SIGTERM, or when a thread gave up
    finally:
        # The pipeline commits within a poll interval (past the deadline we exit
        # anyway: nothing uncommitted is lost, it is re-derived on the next
        # start). A Loki push in flight then gets 2 s: an unacknowledged batch is
        # simply sent again on the next start, and Loki deduplicates it.
        service.shutdown()
    return service.exit_code


def _graceful_server(config):
    """A uvicorn.Server whose SIGINT/SIGTERM only ask it to stop.

    uvicorn re-raises the signal after its own shutdown, which would end the
    process before the pipeline's final commit; here the signal just sets
    ``should_exit`` and ``run()`` returns normally.
    """
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            def ask_to_stop(signum, frame):
                self.should_exit = True
            previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)
