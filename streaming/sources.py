"""A bytewax source over Redis Streams: one partition per raw-log stream (or shard).

Each partition reads its stream with non-blocking ``XREAD COUNT n`` (never blocking
in ``next_batch``; it sleeps through ``next_awake`` instead) and emits each read as
one item, a :class:`RawBatch`, so that downstream work is per batch, not per entry.
Its snapshot is the id of the last entry it returned, so a resumed flow continues
right after it.

Every read is one ``MULTI``: ``XINFO STREAM``, ``TIME``, ``XREAD``, executed
atomically, which gives for free and exactly:

* trimmed-away entries: if ``max-deleted-entry-id`` is past our position, entries we
  had not read are gone; that is logged as an error, counted, and shown in the
  heartbeat (the batch layer still has them if the archive wrote them);
* the lag behind the stream's tip, in entries (``entries-added``) and ms;
* an arrival-clock reading when the stream is idle (``TIME`` before an empty
  ``XREAD``: any later entry has a larger id), emitted as a tick so that the
  candles flow can close windows of a quiet market.

While the flow has a backlog (a read came back full), the next read is sent before
the batch is handed on, on a dedicated connection, and its reply is taken on the next
call: Redis prepares it on the other core while the flow works on this one. The
position (and so the snapshot) only moves when a batch is returned; a reply that is
still on its way when the flow stops or fails is dropped with the connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from redisstore.cluster import node_connection
from redisstore.conn import connect
from redisstore.retry import OutageLog
from redisstore.streamids import parse_id
from streaming.placement import local_streams

log = logging.getLogger(__name__)

#: Entries per XREAD: large batches make per-batch work cheap per entry.
DEFAULT_BATCH_SIZE = 10_000
#: Pause between reads of an idle stream (bounds the latency it adds).
DEFAULT_POLL_S = 0.005
#: How often an idle stream emits an arrival-clock tick.
DEFAULT_TICK_S = 0.25
#: A stream ending at most this far (ms of ids) before a partition's position, with
#: fewer entries ever added than the partition read, lost its tail in a Redis crash;
#: farther, it was deleted and created again.
LOST_TAIL_MAX_MS = 60_000


@dataclass(frozen=True)
class RawBatch:
    """Entries read from one stream in one XREAD, in stream order.

    Attributes:
        stream: the stream (partition) name.
        ids: entry ids (bytes, ``ms-seq``).
        fields: each entry's fields as the flat ``[name, value, ...]`` list.
        tick_ms: set on an empty batch: Redis ``TIME`` (ms) taken when the stream
            had no entry after the partition's position.
        process: the index of the flow process that read it.

    """

    stream: str
    ids: list[bytes]
    fields: list[list[bytes]]
    tick_ms: int | None = None
    #: The flow process that read it (a batch folded elsewhere crossed processes).
    process: int = 0


@dataclass(frozen=True)
class StreamPosition:
    """A partition's resume state.

    Attributes:
        last_id: id of the last entry returned (reading resumes after it).
        read: entries of the stream's history at or before ``last_id`` (read,
            skipped or trimmed); ``entries-added - read`` is the lag.
        lost: entries that were trimmed away before this partition read them.

    """

    last_id: bytes = b"0-0"
    read: int = 0
    lost: int = 0


def _as_map(reply: Any) -> dict[bytes, Any]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=False))


def _entries(reply: Any) -> list[Any]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: entries}
        return next(iter(reply.values()))
    return reply[0][1]  # RESP2: [[stream, entries]]


class PartitionObserver:
    """Receives each partition's progress (the flow's heartbeat implements it)."""

    #: The reading flow's name, for messages.
    name: str = "reading"

    def on_read(self, stream: str, n: int, pos: StreamPosition, lag: int, lag_ms: int) -> None:
        """After each read."""

    def on_loss(self, stream: str, lost: int, detail: str) -> None:
        """Entries this partition still needed were trimmed away."""


class _RedisStreamPartition(StatefulSourcePartition[tuple[str, RawBatch], StreamPosition]):
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        resume: StreamPosition | None,
        source: RedisStreamSource,
    ) -> None:
        self.client = client
        self.stream = stream
        self.cfg = source
        self.pos = resume or StreamPosition()
        self.fresh = resume is None
        self._awake: datetime | None = None
        self._idle_since: float | None = None
        self._last_tick = 0.0
        self._outage = OutageLog(stream, log)
        self.observer = source.observer
        # A dedicated connection with at most one read in flight: while the flow works
        # on a full batch, Redis already serves the next one (on the other core).
        self._conn: Any = None
        self._inflight: bytes | None = None

    def _send(self) -> None:
        """Send the next read (one ``MULTI``) for the entries after our position."""
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection()
        conn = self._conn
        conn.send_packed_command(
            conn.pack_commands(
                [
                    ("MULTI",),
                    ("XINFO", "STREAM", self.stream),
                    ("TIME",),
                    (
                        "XREAD",
                        "COUNT",
                        self.cfg.batch_size,
                        "STREAMS",
                        self.stream,
                        self.pos.last_id,
                    ),
                    ("EXEC",),
                ]
            )
        )
        self._inflight = self.pos.last_id

    def _read(self) -> tuple[Any, Any, Any]:
        """The reply of the read in flight (sent now when none is)."""
        if self._inflight is not None and self._inflight != self.pos.last_id:
            self._drop_connection()  # the position moved: that reply is not ours
        try:
            if self._inflight is None:
                self._send()
            conn = self._conn
            assert conn is not None
            for _ in range(4):  # OK, QUEUED x 3
                conn.read_response()
            info, now, reply = conn.read_response()
        except BaseException:
            self._drop_connection()
            raise
        self._inflight = None
        if isinstance(now, Exception):
            raise now
        if isinstance(reply, Exception):
            raise reply
        return info, now, reply

    def _drop_connection(self) -> None:
        """Forget the connection and any reply still on its way (it reconnects on use)."""
        self._inflight = None
        if self._conn is not None:
            self._conn.disconnect()

    def _lost_tail(self, tip: bytes, added: int, length: int) -> bool:
        """Whether Redis lost the stream's latest entries, ones this partition had read.

        A restart after a crash with ``appendfsync everysec`` loses up to about a
        second of writes: the stream then ends before our position, with fewer
        entries ever added than we counted, its last id a moment before ours. We keep
        our position (what comes next has later ids) and say so, once: the speed
        layer holds those entries, the raw log (and the lake, unless the archive had
        read them) does not, and reconciliation shows the windows that differ. Any
        other stream ending before our position was deleted and created again.
        """
        behind_ms = parse_id(self.pos.last_id)[0] - parse_id(tip)[0]
        if not (length > 0 and added <= self.pos.read and behind_ms <= LOST_TAIL_MAX_MS):
            return False
        if added < self.pos.read:  # first seen: afterwards our count is the stream's
            detail = (
                f"Redis lost the latest entries of {self.stream} (its last id is now "
                f"{tip.decode()}, before {self.pos.last_id.decode()} which the "
                f"{self.observer.name} flow had read; {self.pos.read - added} entries): a "
                "crash before its AOF reached the disk. Continuing after "
                f"{self.pos.last_id.decode()}; reconciliation will show the windows affected"
            )
            log.error("DATA LOSS IN REDIS: %s", detail)
            self.observer.on_loss(self.stream, 0, detail)
        # Count from the stream's own numbers again, so lag and trim checks hold.
        self.pos = StreamPosition(self.pos.last_id, added, self.pos.lost)
        return True

    def _check_trim(self, info: dict[bytes, Any]) -> None:
        """Notice entries after our position that were removed before we read them.

        ``entries-added - length`` entries have left the stream (trimmed from the
        head, or deleted); ``pos.read`` counts the entries of its history up to our
        position. More gone than that means unread entries went. (Redis 7.0 does not
        move ``max-deleted-entry-id`` on XTRIM, so the counts are what tells.)
        """
        added = int(info.get(b"entries-added", 0))
        length = int(info.get(b"length", 0))
        gone = added - length
        tip = info.get(b"last-generated-id") or b"0-0"
        if parse_id(tip) < parse_id(self.pos.last_id) and self._lost_tail(tip, added, length):
            return
        if parse_id(tip) < parse_id(self.pos.last_id):
            log.error(
                "%s: the stream's last id %s is before this flow's position %s: the stream "
                "was deleted and created again; reading it from its start",
                self.stream,
                tip.decode(),
                self.pos.last_id.decode(),
            )
            self.pos = StreamPosition(b"0-0", 0, self.pos.lost)
            self.fresh = True
        if self.fresh:
            self.fresh = False
            if gone > self.pos.read:
                log.warning(
                    "%s: %d entries left the stream before this flow first read it; "
                    "starting at its first entry (the batch layer has them if archived)",
                    self.stream,
                    gone,
                )
                self.pos = StreamPosition(self.pos.last_id, gone, self.pos.lost)
            return
        mde = info.get(b"max-deleted-entry-id", b"0-0")
        if gone > self.pos.read or parse_id(mde) > parse_id(self.pos.last_id):
            lost = max(1, gone - self.pos.read)
            first = info.get(b"first-entry")
            first_id = first[0].decode() if first else "none"
            detail = (
                f"{lost} entries of {self.stream} after {self.pos.last_id.decode()} were "
                f"trimmed or deleted before the {self.observer.name} flow read them (first "
                f"entry now {first_id}); their trades are missing from the speed layer"
            )
            log.error("DATA LOSS: %s", detail)
            self.pos = StreamPosition(
                self.pos.last_id, max(gone, self.pos.read), self.pos.lost + lost
            )
            self.observer.on_loss(self.stream, lost, detail)

    def next_batch(self) -> Iterable[tuple[str, RawBatch]]:
        try:
            info, now, reply = self._read()
        except redis.ConnectionError as exc:  # TimeoutError is a ConnectionError
            self._outage.failed(exc)
            self._awake = datetime.now(UTC) + timedelta(seconds=1)
            return []
        self._outage.ok()
        entries = _entries(reply)
        has_info = not isinstance(info, Exception)
        if has_info:
            self._check_trim(_as_map(info))
        mono = time.monotonic()
        if entries:
            ids = [e[0] for e in entries]
            fields = [e[1] for e in entries]
            self.pos = StreamPosition(ids[-1], self.pos.read + len(ids), self.pos.lost)
            self._idle_since = None
            full = len(entries) >= self.cfg.batch_size
            self._awake = None if full else datetime.now(UTC) + self.cfg.poll
            self._report(info if has_info else None, len(ids))
            if full:  # more is waiting: ask for it now, read it on the next call
                try:
                    self._send()
                except redis.ConnectionError:
                    self._drop_connection()  # the next call reads again and reports
            return [(self.stream, RawBatch(self.stream, ids, fields, None, self.cfg.process))]
        # Idle.
        if self._idle_since is None:
            self._idle_since = mono
        self._awake = datetime.now(UTC) + self.cfg.poll
        if (
            self.cfg.exit_when_idle is not None
            and mono - self._idle_since >= self.cfg.exit_when_idle
        ):
            self._report(info if has_info else None, 0)
            raise StopIteration
        if mono - self._last_tick >= self.cfg.tick_s:
            self._last_tick = mono
            self._report(info if has_info else None, 0)
            tick = int(now[0]) * 1000 + int(now[1]) // 1000
            return [(self.stream, RawBatch(self.stream, [], [], tick, self.cfg.process))]
        return []

    def _report(self, info: Any, n: int) -> None:
        lag = lag_ms = 0
        if info is not None:
            m = _as_map(info)
            lag = max(0, int(m.get(b"entries-added", 0)) - self.pos.read)
            tip = m.get(b"last-generated-id")
            if tip:
                lag_ms = max(0, parse_id(tip)[0] - parse_id(self.pos.last_id)[0])
        self.observer.on_read(self.stream, n, self.pos, lag, lag_ms)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> StreamPosition:
        return self.pos

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self.client.connection_pool.release(self._conn)
            self._conn = None
        self.client.close()


class RedisStreamSource(FixedPartitionedSource[tuple[str, RawBatch], StreamPosition]):
    """Reads Redis streams in large batches; one partition per stream.

    Items are ``(stream, RawBatch)``: keyed by the stream, so a stateful step after it
    keeps one state per partition.

    Args:
        redis_url: where the streams are.
        streams: the streams to read (each one partition).
        batch_size: entries per XREAD.
        poll_s: pause between reads while a stream is caught up.
        tick_s: how often an idle stream emits an arrival-clock tick.
        exit_when_idle: end the input after this many idle seconds (replays, tests).
        observer: receives progress and data-loss reports.
        connect_fn: opens a client (tests).
        process: this process of the flow, the flow's processes and each one's
            workers: a flow of several processes reads in each only the streams its
            workers fold (:mod:`streaming.placement`).

    """

    def __init__(
        self,
        redis_url: str,
        streams: list[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_s: float = DEFAULT_POLL_S,
        tick_s: float = DEFAULT_TICK_S,
        exit_when_idle: float | None = None,
        observer: PartitionObserver | None = None,
        connect_fn: Callable[[str], redis.Redis] | None = None,
        process: tuple[int, int, int] = (0, 1, 1),
    ) -> None:
        if batch_size < 1:
            msg = "batch_size must be at least 1"
            raise ValueError(msg)
        self.redis_url = redis_url
        self.streams = list(streams)
        self.batch_size = batch_size
        self.poll = timedelta(seconds=poll_s)
        self.tick_s = tick_s
        self.exit_when_idle = exit_when_idle
        self.observer = observer or PartitionObserver()
        self.connect_fn = connect_fn
        self.process, self.processes, self.workers = process

    def list_parts(self) -> list[str]:
        """The streams this process folds (every one in a one-process flow)."""
        return local_streams(self.streams, self.process, self.processes, self.workers)

    def build_part(
        self, step_id: str, for_part: str, resume_state: StreamPosition | None
    ) -> _RedisStreamPartition:
        """Open this worker's connection and resume after ``resume_state``'s entry."""
        client = self.connect_fn(self.redis_url) if self.connect_fn else connect(self.redis_url)
        # On a Redis Cluster, a client of the node serving the stream (it follows the slot).
        client = node_connection(client, for_part)
        # Raw replies: the partition decodes the few fields it needs itself.
        for cmd in ("XREAD", "XINFO STREAM", "TIME"):
            client.response_callbacks[cmd] = lambda r, **_: r
        return _RedisStreamPartition(client, for_part, resume_state, self)
