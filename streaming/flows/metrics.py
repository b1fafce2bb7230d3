"""The metrics flow: closed 1m candles -> indicators, anomalies, spreads.

Run it as ``cryptopipe stream run metrics``; build it with :func:`build_flow` in tests.

This module is the wiring only: configuration, a thin ``StatefulBatchLogic``,
``build_flow``, ``get_flow``. The logic is :mod:`streaming.metricsagg`, what a batch
writes :mod:`streaming.metricsstore`; input, heartbeat and stop come from
:mod:`streaming.flows.runtime`, the sink from :mod:`streaming.sinks`
(docs/architecture.md, "Inside the speed layer").

Shape::

    RedisStreamSource on md:candles:closed (the candles flow's closed-candle events)
      -> flat_map: 1m events -> (symbol, ClosedBar); an unreadable event is skipped
         and summed up in the log (streaming.rejectlog)
      -> stateful_batch keyed by symbol: one MetricsState per exchange (EMA 12/26,
         MACD, signal, RSI 14, session VWAP, anomaly flags)
      +> flat_map: each bar of a series with an instrument -> (its base currency, bar)
         -> stateful_batch keyed by base: each series' latest close, the spreads of
            the comparable pairs (marketdata.instruments: declared, or one
            instrument on two exchanges)
      -> merge -> FlowSink of a MetricsStore (one pipeline per batch, idempotent)

Stopping: SIGTERM or a first SIGINT ends the input; final snapshot, exit 0.

Idempotent against replays: a candle whose open_time is not after the last one
applied for its (exchange, symbol) does not move the state (so a duplicate event, a
re-closed candle, or events read again after a restart from a snapshot change
nothing); history and latest values are upserts keyed by open_time, anomalies are
appended once per (exchange, symbol, open_time, kind), spreads are upserts per pair.
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from marketdata.indicators import AnomalyConfig, ClosedBar
from marketdata.instruments import SpreadRules
from marketdata.settings import Settings
from redisstore.conn import connect
from redisstore.keys import CLOSED_EVENTS_STREAM
from streaming import prom
from streaming.flows.runtime import flow_input, setup_flow_process
from streaming.metricsagg import (
    SpreadState,
    apply_bars,
    apply_spread_bars,
    closed_bars,
    spread_base,
)
from streaming.metricsagg import SymbolState as _SymbolState
from streaming.metricsstore import (
    DEFAULT_HISTORY_LEN,
    DEFAULT_TTL_S,
    MetricsStore,
    MetricsWrites,
    SpreadWrites,
    Writes,
)
from streaming.rejectlog import RejectionLog
from streaming.sinks import FlowSink
from streaming.sources import DEFAULT_BATCH_SIZE, DEFAULT_POLL_S, RawBatch

FLOW_NAME = "metrics"


@dataclass(frozen=True)
class MetricsFlowConfig:
    """Everything the metrics flow needs; no connection is opened here.

    Attributes:
        redis_url: the Redis holding the closed-candle events and receiving metrics.
        stream: the closed-candle event stream.
        anomaly: anomaly thresholds.
        ttl_s: lifetime of the latest-metrics hashes after their last update.
        history_len: metrics kept per (exchange, symbol) for charts.
        batch_size: entries per XREAD.
        poll_s: pause between reads of a caught-up stream.
        exit_when_idle: end the input after this many idle seconds; ``None`` runs forever.
        name: the flow's name (heartbeat).
        spread_rules: which series' closes are compared (``CRYPTOPIPE_INSTRUMENTS``,
            ``CRYPTOPIPE_SPREADS``); by default the same instrument on two exchanges.
    """

    redis_url: str
    stream: str = CLOSED_EVENTS_STREAM
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    ttl_s: int = DEFAULT_TTL_S
    history_len: int = DEFAULT_HISTORY_LEN
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_s: float = DEFAULT_POLL_S
    exit_when_idle: float | None = None
    name: str = FLOW_NAME
    spread_rules: SpreadRules = field(default_factory=SpreadRules)


def _keyed_bars(
    rejections: RejectionLog, item: tuple[str, RawBatch]
) -> list[tuple[str, ClosedBar]]:
    """The 1m closed candles of a batch of events, keyed by symbol.

    Unreadable events are skipped and summed up in ``rejections``.
    """
    rejected: list[str] = []
    bars = closed_bars(item[1].fields, rejected)
    if rejected:
        rejections.observe(rejected)
    return [(bar.symbol, bar) for bar in bars]


def _by_base(rules: SpreadRules, item: tuple[str, ClosedBar]) -> list[tuple[str, ClosedBar]]:
    """The bar keyed by its base currency; none for a series with no instrument."""
    base = spread_base(rules, item[1])
    return [] if base is None else [(base, item[1])]


# Snapshots taken before the state moved to streaming.metricsagg name it here.
SymbolState = _SymbolState


class _MetricsLogic(StatefulBatchLogic[ClosedBar, MetricsWrites, bytes]):
    """One symbol's :class:`~streaming.metricsagg.SymbolState` inside bytewax."""

    def __init__(self, cfg: MetricsFlowConfig, resume: bytes | None) -> None:
        self.cfg = cfg
        self.state: _SymbolState = pickle.loads(resume) if resume else _SymbolState()

    def on_batch(self, values: list[ClosedBar]) -> tuple[Iterable[MetricsWrites], bool]:
        out = apply_bars(self.state, values, self.cfg.anomaly)
        return ([out] if len(out) else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        started = time.perf_counter()
        data = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        return prom.observe_snapshot("metrics", started, data)


class _SpreadLogic(StatefulBatchLogic[ClosedBar, SpreadWrites, bytes]):
    """One base currency's :class:`~streaming.metricsagg.SpreadState` inside bytewax."""

    def __init__(self, cfg: MetricsFlowConfig, resume: bytes | None) -> None:
        self.cfg = cfg
        self.state: SpreadState = pickle.loads(resume) if resume else SpreadState()

    def on_batch(self, values: list[ClosedBar]) -> tuple[Iterable[SpreadWrites], bool]:
        out = apply_spread_bars(self.state, values, self.cfg.spread_rules)
        return ([out] if len(out) else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        started = time.perf_counter()
        data = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        return prom.observe_snapshot("metrics", started, data)


def build_flow(cfg: MetricsFlowConfig) -> Dataflow:
    """The metrics dataflow for ``cfg``."""
    flow, events, heartbeat = flow_input(cfg, [cfg.stream])
    # Unreadable events stay in the stream; they are summed up at most every 10 s.
    rejections = heartbeat.watch(RejectionLog(cfg.name, kept=f"left in {cfg.stream}"))
    bars = op.flat_map("bars", events, functools.partial(_keyed_bars, rejections))
    metrics = op.stateful_batch("metrics", bars, lambda resume: _MetricsLogic(cfg, resume or None))
    by_base = op.flat_map("spread bars", bars, functools.partial(_by_base, cfg.spread_rules))
    spreads = op.stateful_batch(
        "spreads", by_base, lambda resume: _SpreadLogic(cfg, resume or None)
    )
    writes: op.Stream[tuple[str, Writes]] = op.merge("writes", metrics, spreads)
    sink = FlowSink(
        "metrics sink",
        lambda: MetricsStore(connect(cfg.redis_url), cfg.ttl_s, cfg.history_len, rejections),
        on_written=heartbeat.on_written,
    )
    op.output("redis", writes, sink)
    return flow


def get_flow(**overrides: Any) -> Dataflow:
    """The metrics flow of the environment's settings (``python -m bytewax.run`` entry)."""
    settings = Settings.from_env()
    setup_flow_process(FLOW_NAME)
    cfg = MetricsFlowConfig(redis_url=settings.redis_url, spread_rules=settings.spread_rules)
    return build_flow(replace(cfg, **overrides))
