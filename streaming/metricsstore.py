"""The metrics flow's store: its keys and idempotent writes to Redis (docs/storage.md).

What a batch of :class:`MetricsWrites` and :class:`SpreadWrites` writes, through
:class:`streaming.sinks.FlowSink` (the logic is :mod:`streaming.metricsagg`, the wiring
:mod:`streaming.flows.metrics`; docs/architecture.md, "Inside the speed layer").
Reading is the serving package's (:mod:`serving.metrics`).

* ``md:metrics:{SYM}:<exchange>``: hash of the latest metrics (each value JSON),
  expiring ``ttl_s`` after the last update;
* ``md:metrics:{SYM}:<exchange>:history``: sorted set, score = open_time, member = the
  metrics as JSON, bounded to the newest ``history_len``: for charts;
* ``md:spread:{BASE}``: hash, field ``<a>|<b>`` = the latest spread between series a
  and b (``exchange:SYMBOL``) of one base currency, as JSON (:class:`SpreadWrites`);
* ``md:anomalies``: stream of anomaly events (one per candle and kind), appended once
  per identity, so a replay after recovery does not repeat them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from marketdata.settings import DEFAULT_APPEND_DEDUPE_MS
from redisstore.keys import ANOMALIES_STREAM, history_key, metrics_key, spread_key, written_key
from streaming.candlestore import XADD_ONCE_SCRIPT
from streaming.rejectlog import RejectionLog

ANOMALIES_MAXLEN = 100_000
DEFAULT_TTL_S = 86_400
DEFAULT_HISTORY_LEN = 1_440


@dataclass
class MetricsWrites:
    """What one step of the metrics flow writes for one symbol."""

    symbol: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.anomalies)


@dataclass
class SpreadWrites:
    """What one step of the metrics flow's spreads writes for one base currency."""

    base: str
    spreads: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spreads)


#: What the metrics flow's sink receives.
Writes = MetricsWrites | SpreadWrites


class MetricsStore:
    """Writes metrics, history, anomalies and spreads; one pipeline per call.

    Args:
        client: the Redis to write to.
        ttl_s: lifetime of the latest-metrics hashes after their last update.
        history_len: metrics kept per (exchange, symbol).
        rejection_log: the flow's log of unreadable closed-candle events, flushed
            when the flow ends (:meth:`finish`).

    """

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int = DEFAULT_TTL_S,
        history_len: int = DEFAULT_HISTORY_LEN,
        rejection_log: RejectionLog | None = None,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.history_len = history_len
        self.rejection_log = rejection_log
        self._xadd_once = client.register_script(XADD_ONCE_SCRIPT)

    def stage(self, batches: Sequence[Writes]) -> int:
        """Nothing to do before Redis (:class:`streaming.sinks.FlowSink`)."""
        return 0

    def finish(self) -> None:
        """The flow ends: log the unreadable events seen since the last line."""
        if self.rejection_log is not None:
            self.rejection_log.flush()

    def write(self, batches: Sequence[Writes], now_ms: int | None = None) -> int:
        """Write the batches in one pipeline; returns the number of records."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for b in batches:
            if isinstance(b, SpreadWrites):
                key = spread_key(b.base)
                for s in b.spreads:
                    pipe.hset(key, f"{s['a']}|{s['b']}", orjson.dumps(s))
                    n += 1
                if b.spreads:
                    pipe.expire(key, self.ttl_s)
                continue
            latest: dict[str, dict[str, Any]] = {}
            for m in b.metrics:
                hist = history_key(m["exchange"], b.symbol)
                # Same open_time, same content: ZADD of an equal member is a no-op.
                pipe.zremrangebyscore(hist, m["open_time"], m["open_time"])
                pipe.zadd(hist, {orjson.dumps(m): m["open_time"]})
                latest[m["exchange"]] = m
                n += 1
            for exchange, m in latest.items():
                key = metrics_key(exchange, b.symbol)
                pipe.hset(key, mapping={k: orjson.dumps(v) for k, v in m.items()})
                pipe.expire(key, self.ttl_s)
                pipe.zremrangebyrank(history_key(exchange, b.symbol), 0, -self.history_len - 1)
            if b.anomalies:
                # The candles store's append-once script: ARGV now, retention, maxlen,
                # fields per entry, then per entry its identity and field/value pairs.
                args: list[Any] = [
                    now_ms,
                    DEFAULT_APPEND_DEDUPE_MS,  # anomalies are rare: the default
                    ANOMALIES_MAXLEN,
                    len(b.anomalies[0]),
                ]
                for a in b.anomalies:
                    args.append(f"{a['exchange']}:{b.symbol}:{a['open_time']}:{a['kind']}")
                    for k, v in a.items():
                        args += [k, v if isinstance(v, str | int) else orjson.dumps(v)]
                self._xadd_once(
                    keys=[ANOMALIES_STREAM, written_key(ANOMALIES_STREAM)], args=args, client=pipe
                )
                n += len(b.anomalies)
        if len(pipe):
            pipe.execute()
        return n
