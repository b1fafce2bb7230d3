"""Writing to the raw log (Redis Streams), pipelined and optionally sharded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import redis

from marketdata.rawmessage import ProgressMark, RawMessage, shard_of
from redisstore.keys import raw_stream_names
from redisstore.retry import call_with_retry
from streaming.heartbeat import HeartbeatWriter
from streaming.prom import FEED_WRITTEN, count_feed


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
        self.marks_written = 0
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

    def write(
        self, messages: Iterable[RawMessage], marks: Sequence[ProgressMark] = ()
    ) -> list[bytes]:
        """Append messages, then progress marks, in one pipeline (one round trip).

        A mark goes to every stream (shard), after the messages: each partition's
        clock of the venue then moves past the trades the mark covers. Returns the
        stream ids of the messages.
        """
        batch: list[tuple[str, dict[bytes, bytes]]] = [
            (self.stream_for(m), m.to_fields()) for m in messages
        ]
        n = len(batch)
        for mark in marks:
            fields = mark.to_fields()
            batch += [(stream, fields) for stream in self._streams]
        if not batch:
            return []

        def send() -> list[bytes]:
            pipe = self._client.pipeline(transaction=False)
            for stream, fields in batch:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return pipe.execute()

        ids = call_with_retry(send, what="raw log write", should_stop=self._should_stop)
        self.written += n
        self.marks_written += len(marks)
        count_feed(FEED_WRITTEN, n)
        if self.heartbeat is not None:
            self.heartbeat.update(
                items_in=self.written, items_out=self.written, last_source_id=ids[-1].decode()
            )
        return ids[:n]

    def mark(self, exchange: str, event_ms: int, recv_ms: int) -> None:
        """Write one progress mark of ``exchange`` (see :class:`ProgressMark`)."""
        self.write((), [ProgressMark(exchange, event_ms, recv_ms)])
