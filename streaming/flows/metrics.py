"""The metrics flow: closed 1m candles -> indicators, anomalies, spreads (issue 4).

Run it as ``cryptopipe stream run metrics``; build it with :func:`build_flow` in tests.

Shape::

    RedisStreamSource on md:candles:closed (the candles flow's closed-candle events)
      -> flat_map: 1m events -> (symbol, ClosedBar)
      -> stateful_batch keyed by symbol: one MetricsState per exchange (EMA 12/26,
         MACD, signal, RSI 14, session VWAP, anomaly flags), latest price per exchange
         for the cross-exchange spread
      -> MetricsSink (one pipeline per batch, idempotent)

Stopping: SIGTERM or a first SIGINT ends the input; final snapshot, exit 0.

Idempotent against replays: a candle whose open_time is not after the last one
applied for its (exchange, symbol) does not move the state (so a duplicate event, a
re-closed candle, or events read again after a restart from a snapshot change
nothing); history and latest values are upserts keyed by open_time, anomalies are
appended once per (exchange, symbol, open_time, kind).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from marketdata.indicators import AnomalyConfig, ClosedBar, MetricsState, spread
from marketdata.records import candle_from_record
from marketdata.settings import Settings
from redisstore.conn import connect
from redisstore.keys import CLOSED_EVENTS_STREAM
from redisstore.retry import call_with_retry, sink_backoff
from streaming.flows.runtime import StoppableSource, flow_heartbeat, setup_flow_process
from streaming.metricsstore import DEFAULT_HISTORY_LEN, DEFAULT_TTL_S, MetricsStore, MetricsWrites
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


def closed_bars(item: tuple[str, RawBatch]) -> list[tuple[str, ClosedBar]]:
    """The 1m closed-candle events of a batch, keyed by symbol."""
    _, batch = item
    out = []
    for flat in batch.fields:
        fields = dict(zip(flat[::2], flat[1::2], strict=False))
        if fields.get(b"interval") != b"1m" or b"candle" not in fields:
            continue
        c = candle_from_record(orjson.loads(fields[b"candle"]))
        bar = ClosedBar(c.exchange, c.symbol, c.open_time, c.close_e8, c.volume_e8,
                        c.quote_volume_e16)  # fmt: skip
        out.append((c.symbol, bar))
    return out


@dataclass
class SymbolState:
    """Metrics of one symbol: per exchange, plus each exchange's latest close."""

    per_exchange: dict[str, MetricsState] = field(default_factory=dict)
    last_close: dict[str, tuple[int, int]] = field(default_factory=dict)  # open_time, close


class _MetricsLogic(StatefulBatchLogic[ClosedBar, MetricsWrites, bytes]):
    def __init__(self, cfg: MetricsFlowConfig, resume: bytes | None) -> None:
        self.cfg = cfg
        self.state: SymbolState = pickle.loads(resume) if resume else SymbolState()

    def on_batch(self, values: list[ClosedBar]) -> tuple[Iterable[MetricsWrites], bool]:
        out = MetricsWrites(values[0].symbol)
        moved = False
        for bar in values:
            st = self.state.per_exchange.get(bar.exchange)
            if st is None:
                st = self.state.per_exchange[bar.exchange] = MetricsState(anomaly=self.cfg.anomaly)
            m = st.apply(bar)
            if m is None:
                continue  # a replayed or older candle
            moved = True
            out.metrics.append(m)
            self.state.last_close[bar.exchange] = (bar.open_time, bar.close_e8)
            for kind in ("price", "volume"):
                if m[f"{kind}_anomaly"]:
                    out.anomalies.append(_anomaly(kind, m))
        if moved and len(self.state.last_close) > 1:
            at = max(t for t, _ in self.state.last_close.values())
            prices = {ex: c for ex, (_, c) in self.state.last_close.items()}
            out.spreads = [{**s, "open_time": at} for s in spread(prices)]
        return ([out] if len(out) else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def _anomaly(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "exchange": m["exchange"],
        "symbol": m["symbol"],
        "open_time": m["open_time"],
        "close": m["close"],
        "ema_26": m["ema_26"],
        "price_deviation": m["price_deviation"],
        "volume_zscore": m["volume_zscore"],
    }


class _MetricsSinkPartition(StatelessSinkPartition[tuple[str, MetricsWrites]]):
    def __init__(self, store: MetricsStore, sink: MetricsSink) -> None:
        self.store = store
        self.sink = sink

    def write_batch(self, items: list[tuple[str, MetricsWrites]]) -> None:
        batches = [w for _, w in items]
        n = call_with_retry(
            lambda: self.store.write(batches, int(time.time() * 1000)),
            what="metrics sink",
            backoff=sink_backoff(),
            give_up_s=self.sink.give_up_s,
        )
        if self.sink.on_written is not None:
            self.sink.on_written(n)

    def close(self) -> None:
        self.store.client.close()


class MetricsSink(DynamicSink[tuple[str, MetricsWrites]]):
    """Writes the metrics flow's output to Redis (see :mod:`streaming.metricsstore`)."""

    def __init__(self, cfg: MetricsFlowConfig, on_written: Any = None, give_up_s: float = 120.0):
        self.cfg = cfg
        self.on_written = on_written
        self.give_up_s = give_up_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MetricsSinkPartition:
        """This worker's connection and store."""
        store = MetricsStore(connect(self.cfg.redis_url), self.cfg.ttl_s, self.cfg.history_len)
        return _MetricsSinkPartition(store, self)


def build_flow(cfg: MetricsFlowConfig) -> Dataflow:
    """The metrics dataflow for ``cfg``."""
    heartbeat = flow_heartbeat(cfg.name, cfg.redis_url)
    flow = Dataflow(cfg.name)
    source = StoppableSource(
        cfg.redis_url,
        [cfg.stream],
        batch_size=cfg.batch_size,
        poll_s=cfg.poll_s,
        exit_when_idle=cfg.exit_when_idle,
        observer=heartbeat,
    )
    events = op.input("closed", flow, source)
    bars = op.flat_map("bars", events, closed_bars)
    metrics = op.stateful_batch("metrics", bars, lambda resume: _MetricsLogic(cfg, resume or None))
    op.output("redis", metrics, MetricsSink(cfg, on_written=heartbeat.on_written))
    return flow


def get_flow(**overrides: Any) -> Dataflow:
    """The metrics flow of the environment's settings (``python -m bytewax.run`` entry)."""
    settings = Settings.from_env()
    setup_flow_process(FLOW_NAME)
    return build_flow(replace(MetricsFlowConfig(redis_url=settings.redis_url), **overrides))
