"""The candles flow: raw log -> closed and live candles, late trades, DLQ.

Run it as ``cryptopipe stream run candles`` (which runs ``python -m bytewax.run
"streaming.flows.candles:get_flow(...)"`` with a recovery directory), or build it
with :func:`build_flow` in tests.

This module is the wiring only: configuration, a thin ``StatefulBatchLogic``,
``build_flow``, ``get_flow``. The logic is :mod:`streaming.candleagg`, what a batch
writes :mod:`streaming.candlestore`; input, heartbeat and stop come from
:mod:`streaming.flows.runtime`, the sink from :mod:`streaming.sinks`
(docs/architecture.md, "Inside the speed layer").

Shape::

    RedisStreamSource (one partition per raw-log stream/shard, XREAD in batches)
      -> stateful_batch keyed by partition: ShardAggregator (parse, dedupe,
         event-time windows, late trades, live candles at most once a second)
      -> FlowSink of a CandleStore (one pipeline per batch, idempotent)

Stopping: SIGTERM (what the supervisor sends) or a first SIGINT ends the input; the
flow takes a final snapshot and exits 0 within a poll interval. Open windows stay
in the snapshot, unwritten (only ``--exit-when-idle`` writes them as closed).

Windowing is our own, on ``stateful_batch``, not bytewax's ``EventClock``: that
clock advances its watermark by wall-clock time, across a resume too, so a restart
after downtime longer than the allowed lateness would turn the backlog that arrived
meanwhile into late trades. Ours is driven by event times and arrival times found in
the data (:mod:`streaming.candleagg`), so a replay decides exactly what the first
run decided.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from marketdata.settings import (
    DEFAULT_APPEND_DEDUPE_MS,
    DEFAULT_CANDLE_RETENTION_MS,
    DEFAULT_CLOSED_EVENTS_MAXLEN,
    Settings,
)
from redisstore.conn import connect
from redisstore.keys import raw_stream_names
from streaming import prom
from streaming.candleagg import ShardAggregator, WindowConfig
from streaming.candlestore import CandleStore, CandleWrites
from streaming.flows.runtime import flow_input, setup_flow_process, stop_requested, this_process
from streaming.rejectlog import RejectionLog
from streaming.sinks import FlowSink
from streaming.sources import DEFAULT_BATCH_SIZE, DEFAULT_POLL_S, RawBatch

FLOW_NAME = "candles"


@dataclass(frozen=True)
class CandlesFlowConfig:
    """Everything the candles flow needs; no connection is opened here.

    Attributes:
        redis_url: the Redis holding the raw log and receiving candles.
        streams: raw-log streams to read, one source partition each.
        window: lateness, hold, cap on times ahead, dedupe retention.
        known_symbols: when set, other symbols are rejected (``unknown_symbol``).
        batch_size: entries per XREAD.
        poll_s: pause between reads of a caught-up stream.
        live_interval_s: at most one live-candle update per (exchange, symbol) per this.
        exit_when_idle: end the input after this many idle seconds, closing every
            open window first (replays, tests, benchmarks); ``None`` runs forever.
        name: the flow's name (heartbeat and counter keys).
        candle_retention_ms: closed candles kept in Redis behind the newest of their
            key (:class:`streaming.candlestore.CandleStore`; ``0`` keeps all).
        closed_events_maxlen: closed-candle events kept for the metrics flow.
        append_dedupe_ms: how long stream appends remember their identities.

    """

    redis_url: str
    streams: tuple[str, ...]
    window: WindowConfig = field(default_factory=WindowConfig)
    known_symbols: frozenset[str] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_s: float = DEFAULT_POLL_S
    live_interval_s: float = 1.0
    exit_when_idle: float | None = None
    name: str = FLOW_NAME
    candle_retention_ms: int = DEFAULT_CANDLE_RETENTION_MS
    closed_events_maxlen: int = DEFAULT_CLOSED_EVENTS_MAXLEN
    append_dedupe_ms: int = DEFAULT_APPEND_DEDUPE_MS

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CandlesFlowConfig:
        """The configuration of ``settings`` (Redis, shards, lateness, symbols)."""
        window_keys = {"hold_ms", "max_ahead_ms", "dedupe_retention_ms"}
        window = WindowConfig.from_settings(
            settings, **{k: overrides.pop(k) for k in list(overrides) if k in window_keys}
        )
        cfg = cls(
            redis_url=settings.redis_url,
            streams=tuple(raw_stream_names(settings.raw_shards)),
            window=window,
            known_symbols=settings.known_symbols,
            candle_retention_ms=settings.candle_retention_ms,
            closed_events_maxlen=settings.closed_events_maxlen,
            append_dedupe_ms=settings.append_dedupe_ms,
        )
        return replace(cfg, **overrides)


class _CandlesLogic(StatefulBatchLogic[RawBatch, CandleWrites, bytes]):
    """One partition's aggregator inside bytewax, plus live-candle throttling."""

    def __init__(
        self,
        cfg: CandlesFlowConfig,
        resume: bytes | None,
        should_stop: Callable[[], bool] = stop_requested,
    ) -> None:
        self.cfg = cfg
        self.should_stop = should_stop
        self.agg: ShardAggregator | None = pickle.loads(resume) if resume else None
        self._dirty: set[tuple[str, str]] = set()
        self._last_live = -1e18
        self._next_live: float | None = None
        self.process = this_process()

    def _aggregator(self, stream: str) -> ShardAggregator:
        if self.agg is None:
            self.agg = ShardAggregator(stream, self.cfg.window, self.cfg.known_symbols)
        return self.agg

    def on_batch(self, values: list[RawBatch]) -> tuple[Iterable[CandleWrites], bool]:
        agg = self._aggregator(values[0].stream)
        writes = CandleWrites(agg.stream)
        for b in values:
            if b.process != self.process:  # never, when placement holds: counted if it does
                agg._count("batches_from_other_processes")
            out = agg.process(b.ids, b.fields, b.tick_ms)
            writes.closed += out.closed
            writes.late += out.late
            writes.rejects += out.rejects
            writes.entries += len(b.ids)
            self._dirty |= out.touched
        writes.live = self._live(time.monotonic())
        writes.counters = self._counters(agg)
        return [writes], StatefulBatchLogic.RETAIN

    def _counters(self, agg: ShardAggregator) -> dict[str, int | str]:
        out: dict[str, int | str] = dict(agg.counters)
        out["watermark"] = agg.watermark
        out["last_id"] = agg.last_id.decode() if agg.last_id else ""
        return out

    def _live(self, now: float) -> list[Any]:
        """Live candles of the pairs that changed, at most once per interval for all.

        One publication per ``live_interval_s`` covering every changed pair keeps each
        key at most about once a second, with one pass over the open windows.
        """
        if not self._dirty or self.agg is None:
            self._next_live = None
            return []
        due = self._last_live + self.cfg.live_interval_s
        if now < due:
            self._next_live = due
            return []
        candles = self.agg.live_candles(self._dirty)
        self._dirty = set()
        self._last_live = now
        self._next_live = None
        return candles

    def on_notify(self) -> tuple[Iterable[CandleWrites], bool]:
        live = self._live(time.monotonic())
        if not live or self.agg is None:
            return [], StatefulBatchLogic.RETAIN
        return [CandleWrites(self.agg.stream, live=live)], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._next_live is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=max(0.0, self._next_live - time.monotonic()))

    def on_eof(self) -> tuple[Iterable[CandleWrites], bool]:
        # End of input by --exit-when-idle: every open window is written as closed.
        # The state is kept as it is, so a later run continues those windows and
        # rewrites them when they really close. On a stop by signal they are left to
        # the snapshot: they have not closed.
        if self.agg is None or self.should_stop():
            return [], StatefulBatchLogic.RETAIN
        writes = CandleWrites(self.agg.stream, closed=self.agg.flush_all())
        writes.counters = self._counters(self.agg)
        return [writes], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self.agg is None:
            return b""
        started = time.perf_counter()
        # No compaction here: a set pickles faster than it compacts (process() does it).
        data = pickle.dumps(self.agg, protocol=pickle.HIGHEST_PROTOCOL)
        return prom.observe_snapshot("candles", started, data)


def build_flow(cfg: CandlesFlowConfig, should_stop: Callable[[], bool] | None = None) -> Dataflow:
    """The candles dataflow for ``cfg``.

    Args:
        cfg: the configuration.
        should_stop: when it turns true the input ends (final snapshot, exit), open
            windows unwritten. Default: :func:`~streaming.flows.runtime.request_stop`
            and the signals of :func:`~streaming.flows.runtime.install_stop_handlers`.

    """
    stop = should_stop or stop_requested
    flow, raw, heartbeat = flow_input(cfg, cfg.streams, stop)
    candles = op.stateful_batch(
        "candles", raw, lambda resume: _CandlesLogic(cfg, resume or None, stop)
    )
    # One summary of rejections and late trades for all the process's workers.
    rejections = heartbeat.watch(RejectionLog(cfg.name))
    sink = FlowSink(
        "candle sink",
        lambda: CandleStore(
            connect(cfg.redis_url),
            cfg.name,
            rejections,
            retention_ms=cfg.candle_retention_ms,
            closed_events_maxlen=cfg.closed_events_maxlen,
            dedupe_ms=cfg.append_dedupe_ms,
            lateness_ms=cfg.window.lateness_ms,
        ),
        on_written=heartbeat.on_written,
    )
    op.output("redis", candles, sink)
    return flow


def get_flow(**overrides: Any) -> Dataflow:
    """The candles flow of the environment's settings (``python -m bytewax.run`` entry).

    Keyword arguments override :class:`CandlesFlowConfig` fields (and the window's
    ``hold_ms``, ``max_ahead_ms``, ``dedupe_retention_ms``); the hold and the cap come
    from ``CRYPTOPIPE_HOLD_MS`` and ``CRYPTOPIPE_MAX_AHEAD_MS`` (:class:`Settings`).
    """
    setup_flow_process(FLOW_NAME)
    return build_flow(CandlesFlowConfig.from_settings(Settings.from_env(), **overrides))
