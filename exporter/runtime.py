"""Composition root: build every component from the settings, once.

Nothing here parses or decides; it wires. Heavy optional pieces (the
tokenizer, the Loki pusher) are imported only when configured.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry

from .archive import ArchiveWriter
from .archive.layout import tree_path
from .assemble import AssembleContext
from .chain import Chain
from .checkpoint import CHECKPOINT_NAME, read_checkpoint, use_key
from exporter.durable import DirError, usable_dir
from .correlate import Correlator
from .health import Health
from .labels import ServedModels, UserLabels, user_label_key
from .learned import lookback
from .logtime import TimeResolver
from .metrics import RequestMetrics
from .pipeline import Pipeline, Sinks, Source
from .selfmetrics import SelfMetrics, TailStatsCollector
from .settings import Settings, SettingsError
from .tail import FileTailer, StdinTailer
from .transparency.tree import TreeFile


@dataclass
class Runtime:
    settings: Settings
    registry: CollectorRegistry
    users: UserLabels
    metrics: RequestMetrics
    selfm: SelfMetrics
    health: Health
    pipeline: Pipeline | None
    archive: ArchiveWriter | None
    loki: object | None = None
    scraper: object | None = None
    live: bool = True
    clock: Callable[[], float] = time.time
    ctx: AssembleContext | None = None
    # Kept across rebuilds (rebuild_pipeline): the metric store before any
    # record, the input positions a first start began at (used only while no
    # checkpoint exists), and stdin (which cannot be re-read).
    empty_metrics: dict | None = None
    start_positions: dict | None = None
    stdin_tailer: object | None = None
    served: ServedModels | None = None  # the model label's bound (learned names + --model)
    tlog: object | None = None  # TransparencyLog with --signing-key-file (kept across rebuilds)
    publishers: object | None = None  # witnesses and TSA on the log's hooks (transparency.publish)


def checkpoint_path(settings: Settings) -> Path:
    return settings.state_dir / CHECKPOINT_NAME


def _detector(settings: Settings):
    from .compliance.detect import detector
    return detector(oversized_input_tokens=settings.oversized_input_tokens)


def _policy(destination: str, prompt_mode: str, output_mode: str, key: bytes | None):
    # Only the archive keeps identity headers in full; Loki redacts them
    # whatever its prompt/output modes say, so it always needs the policy.
    if destination == "archive" and prompt_mode == "full" and output_mode == "full":
        return lambda rec: rec
    from .compliance.policy import make_policy
    return make_policy(destination, prompt_mode, output_mode, key)


def _user_label_key(settings: Settings) -> bytes | None:
    if not settings.user_label or settings.user_label_mode == "raw":
        return None
    try:
        return user_label_key(settings.hmac_key, settings.state_dir)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--user-label-mode: {exc}") from None


def build(settings: Settings, *, live: bool, clock=time.time, stdin=None) -> Runtime:
    registry = CollectorRegistry(auto_describe=True)
    for directory, flag in ((settings.archive_dir, "--archive-dir"), (settings.state_dir, "--state-dir")):
        try:
            usable_dir(directory, flag, create=True, write=True)
        except DirError as exc:
            raise SettingsError(str(exc)) from None
    users = UserLabels(settings.max_users, enabled=settings.user_label, mode=settings.user_label_mode,
                       key=_user_label_key(settings))
    metrics = RequestMetrics(registry, users=users,
                             oversized_input_tokens=settings.oversized_input_tokens,
                             pricing=settings.pricing)
    served = metrics.served = ServedModels(settings.model)
    names = settings.logs if live else tuple(f"replay:{Path(f).resolve()}" for f in settings.replay_files)
    selfm = SelfMetrics(registry, sources=tuple(names))
    health = Health(clock=clock)

    # Keyed with the archive key: without the key nobody can hand the exporter
    # offsets, in-flight requests or an archive cut of their choosing.
    use_key(checkpoint_path(settings), settings.hmac_key)
    count_tokens = None
    if settings.tokenizer is not None:
        from .tokens import TokenCounter
        counter = TokenCounter(settings.tokenizer)
        counter.load()  # fail at start-up, not on the first record
        count_tokens = counter.count
    ctx = AssembleContext(model=settings.model, instance=settings.instance,
                          max_log_len=settings.max_log_len,
                          oversized_input_tokens=settings.oversized_input_tokens,
                          count_tokens=count_tokens)
    rt = Runtime(settings=settings, registry=registry, users=users, metrics=metrics,
                 selfm=selfm, health=health, pipeline=None, archive=None, live=live,
                 clock=clock, ctx=ctx, empty_metrics=metrics.snapshot(), served=served)
    if settings.signing_key_file is not None:
        rt.tlog = build_tlog(settings, clock)
        from .transparency.logmetrics import LogCollector
        LogCollector(rt.tlog, registry)
        if settings.witnesses or settings.tsa_url:
            from .transparency.publish import attach
            rt.publishers = attach(rt.tlog, settings, registry, clock)
    elif settings.witnesses or settings.tsa_url:
        raise SettingsError(f"{'--witness' if settings.witnesses else '--tsa-url'}: needs "
                            "--signing-key-file (witnesses and timestamps are over signed checkpoints)")
    _assemble(rt, stdin=stdin)
    TailStatsCollector(lambda: rt.pipeline.sources if rt.pipeline is not None else (), registry)
    if settings.loki:
        rt.loki = build_loki(settings, registry, users, health,
                             committed=lambda: rt.pipeline.committed_archive)
        rt.loki.fold_model = served.fold  # Loki's model label is bounded as the metric's
        wake_loki_on_commit(rt)
    return rt


def wake_loki_on_commit(rt: Runtime) -> None:
    """Each commit makes records readable to the Loki pusher: it pushes them
    at once instead of at its next poll (LokiPusher.wake)."""
    rt.pipeline.after_commit.append(lambda _state: rt.loki.wake())


def rebuild_pipeline(rt: Runtime) -> Pipeline:
    """Replace ``rt.pipeline`` by one built from the last checkpoint on disk.

    The in-memory pipeline is thrown away unsaved (after an unexpected
    exception its state may be half-updated): tailers closed, the archive's
    uncommitted buffer dropped. What follows is exactly a process restart
    inside the process: the archive is cut back to the checkpointed size and
    reading resumes at the checkpointed positions with the restored
    correlator, time resolver, metric store and user labels, so the records
    after the checkpoint are re-derived byte-identically. Per-process self
    metrics keep counting (lines re-read are counted again).
    """
    old = rt.pipeline
    if old is not None:
        for src in old.sources:
            if src.tailer is not rt.stdin_tailer:
                try:
                    src.tailer.close()
                except OSError:
                    pass
        old.sinks.archive.abandon()
    _assemble(rt, rebuild=True)
    if old is not None and old.skip_keys is not None and rt.pipeline.skip_keys is None:
        # Started without a checkpoint over a non-empty archive: the records
        # archived before this process started are still to be skipped.
        rt.pipeline.skip_keys = old.skip_keys
    if rt.loki is not None:
        wake_loki_on_commit(rt)
    return rt.pipeline


def _assemble(rt: Runtime, *, stdin=None, rebuild: bool = False) -> None:
    """Archive, sources and pipeline from the checkpoint on disk (see build)."""
    settings, clock, live = rt.settings, rt.clock, rt.live
    users, metrics, selfm, health = rt.users, rt.metrics, rt.selfm, rt.health
    loaded = read_checkpoint(str(checkpoint_path(settings)))
    saved = loaded.state or {}
    archive = ArchiveWriter.open(settings.archive_dir, Chain(settings.hmac_key),
                                 saved.get("archive"), clock=clock,
                                 tree=TreeFile(tree_path(settings.archive_dir)))
    skip_keys = None
    if not saved and archive.state().get("seq", 0) > 0:
        from .archive.recovery import rebuild_from_archive, warn
        if rebuild:
            users.restore([])
            metrics.restore(rt.empty_metrics)
        skip_keys = rebuild_from_archive(settings.archive_dir, metrics.observe)
        warn(settings.archive_dir, len(skip_keys), reason=loaded.reason)
    # A rebuild puts the store back where the checkpoint (or nothing) left it,
    # in one atomic restore each: a concurrent scrape or Loki push never sees
    # an emptied store or label set in between.
    if saved.get("users") is not None:
        users.restore(saved["users"])
    elif rebuild and skip_keys is None:
        users.restore([])
    if saved.get("metrics") is not None:
        metrics.restore(saved["metrics"])
    elif rebuild and skip_keys is None:
        metrics.restore(rt.empty_metrics)

    names = settings.logs if live else tuple(f"replay:{Path(f).resolve()}" for f in settings.replay_files)
    positions = saved.get("sources") or (rt.start_positions if skip_keys is None else None) or {}
    sources: list[Source] = []
    paths = settings.logs if live else settings.replay_files
    for name, path in zip(names, paths):
        if path == "-":
            if rt.stdin_tailer is None:
                rt.stdin_tailer = StdinTailer(stdin if stdin is not None else sys.stdin.buffer)
            tailer = rt.stdin_tailer
            sh = health.add_source(name, None)
        else:
            tailer = FileTailer(path, position=positions.get(name),
                                from_start=settings.from_start or not live or skip_keys is not None)
            sh = health.add_source(name, str(path))
        sources.append(Source(name=name, tailer=tailer, health=sh))
    if not saved and rt.start_positions is None:
        rt.start_positions = {s.name: s.tailer.position() for s in sources
                              if s.tailer is not rt.stdin_tailer}

    correlator = Correlator(request_timeout=settings.request_timeout,
                            merge_grace=settings.merge_grace,
                            max_inflight=settings.max_inflight,
                            max_log_len=settings.max_log_len,
                            on_evict=lambda reason: selfm.evictions.labels(reason).inc())
    resolver = TimeResolver(settings.tz, clock)
    sinks = Sinks(metrics=metrics, archive=archive, detect=_detector(settings),
                  archive_policy=_policy("archive", settings.archive_prompt_policy,
                                         settings.archive_output_policy, settings.hmac_key))
    pipeline = Pipeline(sources=sources, correlator=correlator, resolver=resolver, sinks=sinks,
                        selfm=selfm, ctx=rt.ctx, checkpoint_path=checkpoint_path(settings),
                        users=users, live=live, clock=clock,
                        checkpoint_interval=settings.checkpoint_interval, health=health,
                        logging_prefix=settings.vllm_logging_prefix, served=rt.served)
    pipeline.restore(saved)
    if settings.prune_rotated and live:
        from .tail.prune import RotatedPruner
        tailers = {s.name: s.tailer for s in sources if isinstance(s.tailer, FileTailer)}
        pruner = RotatedPruner(tailers, deleted=selfm.rotated_deleted,
                               failures=selfm.rotated_delete_failures)
        pipeline.after_commit.append(pruner.after_commit)
        if saved.get("sources"):  # what the last run read, committed but had not deleted yet
            pruner.restore(saved)
            pruner.after_commit(saved)
    # A source that starts past its beginning without learned settings (run
    # at the end of an existing log, or a checkpoint from before they were
    # kept) looks back for vLLM's last start-up line, so the requests read
    # from here on are judged with the settings they were logged under.
    for src, path in zip(sources, paths):
        offset = int((src.tailer.position() or {}).get("offset") or 0)
        if src.learned is None and path != "-" and offset > 0:
            src.learned, src.pending = lookback(str(path), offset, logging_prefix=settings.vllm_logging_prefix)
            if src.learned is not None or src.pending is not None:
                pipeline.learned_changed(src)
    pipeline.skip_keys = skip_keys
    pipeline.tlog = rt.tlog
    if rebuild and rt.tlog is not None:
        rt.tlog.recheck()
    rt.pipeline, rt.archive = pipeline, archive


def build_tlog(settings: Settings, clock):
    from .transparency.keys import SigningKeyError
    from .transparency.log import LogError, TransparencyLog
    try:
        return TransparencyLog(settings.archive_dir, settings.signing_key_file, settings.log_origin,
                               settings.sign_interval, clock)
    except (SigningKeyError, LogError) as exc:
        raise SettingsError(str(exc)) from None


def build_loki(settings: Settings, registry, users: UserLabels, health: Health, committed=None):
    # Users must already be restored (build() does it first): a resent record
    # has to land in the same stream as before, or Loki would store it twice.
    from .loki import LokiPusher
    policy = _policy("loki", settings.loki_prompt_policy, settings.loki_output_policy,
                     settings.hmac_key)
    return LokiPusher(settings.loki, settings.archive_dir, registry,
                      label_user=users.label, policy=policy, state_dir=settings.state_dir,
                      committed=committed)
