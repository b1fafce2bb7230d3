"""Writing to the raw log (Redis Streams), pipelined and optionally sharded."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis

from marketdata.rawmessage import RawMessage, shard_of
from redisstore.keys import raw_stream_names
from redisstore.retry import call_with_retry
from streaming.heartbeat import HeartbeatWriter


class RawLogWriter:
    """Appends raw messages to ``md:trades:raw`` (or its shards) in pipelines.

    Entries are never trimmed here: trimming is the archive's job, which must
    not drop what it has not yet written (docs/architecture.md section 6).

    A Redis outage does not lose messages: the batch is retried with backoff until
    Redis is back (or ``should_stop`` says to give up). A retry after a pipeline that
    was partly applied can write some messages twice; the raw log is at-least-once
    and both layers deduplicate by trade id.
    """

    def __init__(
        self,
        client: redis.Redis,
        shards: int = 1,
        heartbeat: HeartbeatWriter | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self._client = client
        self._should_stop = should_stop
        self._shards = max(1, shards)
        self._streams = raw_stream_names(self._shards)
        self.written = 0
        self.heartbeat = heartbeat

    def __enter__(self) -> RawLogWriter:
        if self.heartbeat is not None:
            self.heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()

    @property
    def streams(self) -> list[str]:
        """The stream names written to."""
        return list(self._streams)

    def stream_for(self, msg: RawMessage) -> str:
        """The stream (shard) a message goes to."""
        return self._streams[shard_of(msg.symbol, self._shards)]

    def write(self, messages: Iterable[RawMessage]) -> list[bytes]:
        """Append messages in one pipeline (one round trip); returns their stream ids."""
        batch = [(self.stream_for(m), m.to_fields()) for m in messages]
        if not batch:
            return []

        def send() -> list[bytes]:
            pipe = self._client.pipeline(transaction=False)
            for stream, fields in batch:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return pipe.execute()

        ids = call_with_retry(send, what="raw log write", should_stop=self._should_stop)
        n = len(batch)
        self.written += n
        if self.heartbeat is not None:
            self.heartbeat.update(
                items_in=self.written, items_out=self.written, last_source_id=ids[-1].decode()
            )
        return ids
