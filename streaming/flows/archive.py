"""The archive flow: raw log -> Parquet lake, archive watermark, raw-log trimming.

Run it as ``cryptopipe stream run archive`` (which runs ``python -m bytewax.run
"streaming.flows.archive:get_flow(...)"`` with a recovery directory), or build it
with :func:`build_flow` in tests.

This module is the wiring only: configuration, a thin ``StatefulBatchLogic``,
``build_flow``, ``get_flow``. The logic is :mod:`streaming.archive`, what a batch writes
:mod:`streaming.archivestore`; input, heartbeat and stop come from
:mod:`streaming.flows.runtime`, the sink from :mod:`streaming.sinks`
(docs/architecture.md, "Inside the speed layer").

Shape::

    RedisStreamSource (one partition per raw-log stream/shard, XREAD in batches,
                       idle ticks; ends its input on SIGTERM/SIGINT)
      -> stateful_batch keyed by partition: PartitionArchiver (stream-id buckets,
         parse, watermark over what is written, trim point)
      -> FlowSink of an ArchiveStore (lake files, then watermark and progress, then
         XTRIM MINID ~; every 10 s the DLQ and late streams copied to the lake and
         trimmed, streaming.spill)

Files are cut by stream-id buckets, so a replay after a crash writes the same files
(same names, same rows) whatever bytewax's batches were; see docs/archive.md.

Stopping: SIGTERM (what the supervisor sends) or a first SIGINT ends the input, so
bytewax closes the epoch, takes a final snapshot and exits 0 within a poll interval;
the open bucket stays in the snapshot, unwritten. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from marketdata.settings import Settings, env_int
from redisstore.conn import connect
from redisstore.keys import raw_stream_names
from streaming import prom
from streaming.archive import (
    DEFAULT_BUCKET_MS,
    DEFAULT_CLOSE_MARGIN_MS,
    DEFAULT_MAX_FILE_ENTRIES,
    DEFAULT_RETENTION_MS,
    ArchiveConfig,
    ArchiveWork,
    PartitionArchiver,
)
from streaming.archivestore import ArchiveStore, archive_rejection_log
from streaming.candleagg import WindowConfig
from streaming.flows.runtime import flow_input, setup_flow_process, stop_requested
from streaming.sinks import FlowSink
from streaming.sources import DEFAULT_BATCH_SIZE, DEFAULT_POLL_S, RawBatch
from streaming.spill import SideStreamSpiller

log = logging.getLogger(__name__)

FLOW_NAME = "archive"

#: Environment variables read by :meth:`ArchiveFlowConfig.from_settings` (the CLI
#: passes only ``exit_when_idle`` and ``batch_size`` to :func:`get_flow`).
ENV_BUCKET_MS = "CRYPTOPIPE_ARCHIVE_BUCKET_MS"
ENV_RETENTION_MS = "CRYPTOPIPE_ARCHIVE_RETENTION_MS"
ENV_CLOSE_MARGIN_MS = "CRYPTOPIPE_ARCHIVE_CLOSE_MARGIN_MS"
ENV_MAX_FILE_ENTRIES = "CRYPTOPIPE_ARCHIVE_MAX_FILE_ENTRIES"


@dataclass(frozen=True)
class ArchiveFlowConfig:
    """Everything the archive flow needs; no connection is opened here.

    Attributes:
        redis_url: the Redis holding the raw log and receiving the archive keys.
        lake: the lake's root (a path or URI).
        streams: raw-log streams to read, one source partition each.
        archive: buckets, retention, lateness (see :class:`ArchiveConfig`).
        batch_size: entries per XREAD.
        poll_s: pause between reads of a caught-up stream.
        exit_when_idle: end the input after this many idle seconds, writing every
            open bucket first (replays, tests); ``None`` runs forever.
        durable: fsync lake files before they count as written.
        name: the flow's name (heartbeat).
        side_stream_maxlen: entries the DLQ and the late stream each keep in Redis
            once copied to the lake (:mod:`streaming.spill`); ``None``: not copied,
            not trimmed.
        side_stream_every_s: how often they are copied and trimmed.

    """

    redis_url: str
    lake: str
    streams: tuple[str, ...]
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_s: float = DEFAULT_POLL_S
    exit_when_idle: float | None = None
    durable: bool = True
    name: str = FLOW_NAME
    side_stream_maxlen: int | None = None
    side_stream_every_s: float = 10.0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ArchiveFlowConfig:
        """The configuration of ``settings`` and ``CRYPTOPIPE_ARCHIVE_*`` variables.

        ``overrides`` replace fields of this class, or of :class:`ArchiveConfig`
        (``bucket_ms``, ``retention_ms``, ``close_margin_ms``, ...).
        """
        archive_keys = set(ArchiveConfig.__dataclass_fields__)
        archive = ArchiveConfig(
            bucket_ms=env_int(ENV_BUCKET_MS, DEFAULT_BUCKET_MS, environ, unit="milliseconds"),
            retention_ms=env_int(
                ENV_RETENTION_MS, DEFAULT_RETENTION_MS, environ, unit="milliseconds"
            ),
            close_margin_ms=env_int(
                ENV_CLOSE_MARGIN_MS, DEFAULT_CLOSE_MARGIN_MS, environ, unit="milliseconds"
            ),
            max_file_entries=env_int(
                ENV_MAX_FILE_ENTRIES, DEFAULT_MAX_FILE_ENTRIES, environ, unit="entries"
            ),
            window=WindowConfig.from_settings(settings),
            known_symbols=settings.known_symbols,
        )
        archive = replace(
            archive, **{k: overrides.pop(k) for k in list(overrides) if k in archive_keys}
        )
        cfg = cls(
            redis_url=settings.redis_url,
            lake=settings.lake,
            streams=tuple(raw_stream_names(settings.raw_shards)),
            archive=archive,
            side_stream_maxlen=settings.side_stream_maxlen,
        )
        return replace(cfg, **overrides)


# --------------------------------------------------------------------------- logic


class _ArchiveLogic(StatefulBatchLogic[RawBatch, ArchiveWork, bytes]):
    """One partition's :class:`PartitionArchiver` inside bytewax."""

    def __init__(
        self, cfg: ArchiveFlowConfig, resume: bytes | None, should_stop: Callable[[], bool]
    ) -> None:
        self.cfg = cfg
        self.should_stop = should_stop
        self.arch = PartitionArchiver.loads(resume, cfg.archive) if resume else None

    def _archiver(self, stream: str) -> PartitionArchiver:
        if self.arch is None:
            self.arch = PartitionArchiver(stream, self.cfg.archive)
        return self.arch

    def on_batch(self, values: list[RawBatch]) -> tuple[Iterable[ArchiveWork], bool]:
        arch = self._archiver(values[0].stream)
        now = time.monotonic()
        out: list[ArchiveWork] = []
        for b in values:
            out += arch.process(b.ids, b.fields, b.tick_ms, now)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[ArchiveWork], bool]:
        # End of input: with --exit-when-idle the open bucket is written as it is (and
        # kept: a later run writes it again, whole, and drops this partial range); on
        # a stop by signal it is left to the snapshot.
        if self.arch is None:
            return [], StatefulBatchLogic.RETAIN
        return self.arch.finish(write_open=not self.should_stop()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self.arch is None:
            return b""
        started = time.perf_counter()
        self.arch.note_snapshot()
        return prom.observe_snapshot("archive", started, self.arch.dumps())


def build_flow(cfg: ArchiveFlowConfig, should_stop: Callable[[], bool] | None = None) -> Dataflow:
    """The archive dataflow for ``cfg``.

    Args:
        cfg: the configuration.
        should_stop: when it turns true the input ends (final snapshot, exit); the
            open buckets are then not written. Default:
            :func:`~streaming.flows.runtime.request_stop` / signals.

    """
    stop = should_stop or stop_requested
    flow, raw, heartbeat = flow_input(cfg, cfg.streams, stop)
    works = op.stateful_batch(
        "archive", raw, lambda resume: _ArchiveLogic(cfg, resume or None, stop)
    )
    # One summary of the rejections written, for all the process's workers.
    rejections = heartbeat.watch(archive_rejection_log(cfg.lake, cfg.name))

    def store() -> ArchiveStore:
        client = connect(cfg.redis_url)
        spiller = None
        if cfg.side_stream_maxlen is not None:
            spiller = SideStreamSpiller(
                client,
                cfg.lake,
                maxlen=cfg.side_stream_maxlen,
                every_s=cfg.side_stream_every_s,
                durable=cfg.durable,
            )
        return ArchiveStore(
            cfg.lake,
            client,
            list(cfg.streams),
            durable=cfg.durable,
            rejection_log=rejections,
            spiller=spiller,
        )

    sink: FlowSink[ArchiveWork] = FlowSink(
        "archive sink",
        store,
        on_written=heartbeat.on_written,
    )
    op.output("lake", works, sink)
    return flow


def get_flow(**overrides: Any) -> Dataflow:
    """The archive flow of the environment's settings (``python -m bytewax.run`` entry).

    Keyword arguments override :class:`ArchiveFlowConfig` fields (and
    :class:`~streaming.archive.ArchiveConfig`'s). Installs the stop handlers.
    """
    setup_flow_process(FLOW_NAME)
    return build_flow(ArchiveFlowConfig.from_settings(Settings.from_env(), **overrides))
