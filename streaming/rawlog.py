"""Writing to the raw log (Redis Streams), pipelined and optionally sharded."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from marketdata.rawmessage import RawMessage, raw_stream_names, shard_of
from streaming.heartbeat import HeartbeatWriter


class RawLogWriter:
    """Appends raw messages to ``md:trades:raw`` (or its shards) in pipelines.

    Entries are never trimmed here: trimming is the archive's job, which must
    not drop what it has not yet written (DESIGN.md section 6).
    """

    def __init__(
        self, client: redis.Redis, shards: int = 1, heartbeat: HeartbeatWriter | None = None
    ) -> None:
        self._client = client
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
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for msg in messages:
            pipe.xadd(self.stream_for(msg), msg.to_fields())  # type: ignore[arg-type]
            n += 1
        if not n:
            return []
        ids = pipe.execute()
        self.written += n
        if self.heartbeat is not None:
            self.heartbeat.update(
                items_in=self.written, items_out=self.written, last_source_id=ids[-1].decode()
            )
        return ids
