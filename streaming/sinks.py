"""bytewax sinks writing to Redis: one pipeline per batch, idempotent.

Each worker opens its own connection in ``build()`` and writes every batch of items
it receives in one pipeline (:class:`streaming.candlestore.CandleStore`). What is
written is idempotent (upserts, and stream appends that remember what they
appended), so the replay that follows a recovery rewrites the same values and never
adds a second copy. A Redis outage is retried with capped backoff (the flow stalls,
its heartbeat goes stale, nothing is lost); after ``give_up_s`` the error is raised
and the flow exits for its supervisor to restart it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from redisstore.conn import connect
from redisstore.retry import call_with_retry, sink_backoff
from streaming.candlestore import CandleStore, CandleWrites


class _CandleSinkPartition(StatelessSinkPartition[tuple[str, CandleWrites]]):
    def __init__(self, store: CandleStore, sink: CandleSink) -> None:
        self.store = store
        self.sink = sink

    def write_batch(self, items: list[tuple[str, CandleWrites]]) -> None:
        batches = [w for _, w in items]
        # The pipeline is idempotent (upserts and append-once), so a retry after a
        # failure half-way through rewrites the same values.
        n = call_with_retry(
            lambda: self.store.write(batches),
            what="candle sink",
            backoff=sink_backoff(),
            give_up_s=self.sink.give_up_s,
        )
        if self.sink.on_written is not None:
            self.sink.on_written(n)

    def close(self) -> None:
        self.store.client.close()


class CandleSink(DynamicSink[tuple[str, CandleWrites]]):
    """Writes the candles flow's output (closed and live candles, late, DLQ, counters).

    Args:
        redis_url: where to write.
        flow: the flow's name (for its counter keys).
        on_written: called with the number of records after each write.
        give_up_s: how long a Redis outage is retried before the error is raised.

    """

    def __init__(
        self,
        redis_url: str,
        flow: str = "candles",
        *,
        on_written: Callable[[int], Any] | None = None,
        give_up_s: float = 120.0,
    ) -> None:
        self.redis_url = redis_url
        self.flow = flow
        self.on_written = on_written
        self.give_up_s = give_up_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CandleSinkPartition:
        """This worker's connection and store."""
        return _CandleSinkPartition(CandleStore(connect(self.redis_url), self.flow), self)
