"""The one bytewax sink of every flow: a store's writes, retried through Redis outages.

Each flow has a *store* (:class:`streaming.candlestore.CandleStore`,
:class:`streaming.metricsstore.MetricsStore`, :class:`streaming.archivestore.ArchiveStore`)
that knows what a batch of the flow's output writes; :class:`FlowSink` is the bytewax
side, the same for all three. Each worker opens its own store (its own connection) in
``build()`` and, for every batch of items it receives:

1. ``store.stage(batches)``: work done once, before Redis (the archive's lake files;
   nothing for the others);
2. ``store.write(batches)``: the Redis writes, one pipeline. They are idempotent
   (upserts, appends that remember what they appended, values that only grow), so
   the replay that follows a recovery rewrites the same values and never adds a
   second copy, and a retry after a failure half-way through is safe. A Redis outage
   is retried with capped backoff (the flow stalls, its heartbeat goes stale,
   nothing is lost); after ``give_up_s`` the error is raised and the flow exits for
   its supervisor to restart it from its snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from redisstore.retry import call_with_retry, sink_backoff
from streaming.prom import SINK_RETRIES

W = TypeVar("W")
W_contra = TypeVar("W_contra", contravariant=True)


class SinkStore(Protocol[W_contra]):
    """What a flow's output writes, batch by batch (see the module docstring)."""

    client: redis.Redis

    def stage(self, batches: Sequence[W_contra]) -> int:
        """Work before the Redis writes, done once; the records it wrote."""
        ...

    def write(self, batches: Sequence[W_contra]) -> int:
        """The Redis writes, idempotent (retried); the records they wrote."""
        ...


class _FlowSinkPartition(StatelessSinkPartition[tuple[str, W]], Generic[W]):
    def __init__(self, store: SinkStore[W], sink: FlowSink[W]) -> None:
        self.store = store
        self.sink = sink

    def write_batch(self, items: list[tuple[str, W]]) -> None:
        batches = [w for _, w in items]
        n = self.store.stage(batches)
        n += call_with_retry(
            lambda: self.store.write(batches),
            what=self.sink.what,
            backoff=sink_backoff(),
            give_up_s=self.sink.give_up_s,
            on_retry=SINK_RETRIES.labels(self.sink.what).inc,
        )
        if self.sink.on_written is not None and n:
            self.sink.on_written(n)

    def close(self) -> None:
        finish = getattr(self.store, "finish", None)
        if finish is not None:
            finish()
        self.store.client.close()


class FlowSink(DynamicSink[tuple[str, W]]):
    """A flow's output: every worker writes through its own store, retrying outages.

    Args:
        what: names the sink in log lines (``"candle sink"``).
        open_store: builds a worker's store (and its connection); called in ``build()``.
        on_written: called with the number of records after each batch.
        give_up_s: how long a Redis outage is retried before the error is raised.

    """

    def __init__(
        self,
        what: str,
        open_store: Callable[[], SinkStore[W]],
        *,
        on_written: Callable[[int], Any] | None = None,
        give_up_s: float = 120.0,
    ) -> None:
        self.what = what
        self.open_store = open_store
        self.on_written = on_written
        self.give_up_s = give_up_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FlowSinkPartition[W]:
        """This worker's store."""
        return _FlowSinkPartition(self.open_store(), self)
