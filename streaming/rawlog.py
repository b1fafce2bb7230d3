"""Writing to the raw log (Redis Streams), pipelined and optionally sharded.

Two ways in, writing the same entries (:meth:`RawMessage.to_fields`, marks after the
messages they cover):

* :meth:`RawLogWriter.write`: messages and progress marks, one redis-py pipeline per
  call, the stream ids returned (the live feeds, the simulator, a paced replay);
* :meth:`RawLogWriter.write_chunk`: a chunk of payloads of one exchange and format
  (a replay at ``--speed max``): its ``XADD`` commands packed by hand in one buffer
  (:class:`PayloadChunk`), sent on one connection of the client's pool, with the
  next chunk sent before the previous one's replies are read, so Redis appends one
  chunk while this process prepares the next (docs/storage.md, *Feed replay*). A
  Redis Cluster client has no connection pool of its own (its nodes have): there a
  chunk goes through a non-transactional pipeline like :meth:`~RawLogWriter.write`,
  which sends each ``XADD`` to the node of its stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, cast

import hiredis
import redis

from marketdata.parsing import FORMAT_WS
from marketdata.rawmessage import F_PAYLOAD, ProgressMark, RawMessage, shard_of
from redisstore.keys import raw_stream_names
from redisstore.retry import call_with_retry
from streaming.heartbeat import HeartbeatWriter
from streaming.prom import FEED_WRITTEN, count_feed


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_xadd(stream: str, fields: dict[bytes, bytes]) -> bytes:
    """``XADD <stream> * <field> <value> ...`` in RESP: the bytes redis-py sends for it."""
    parts = [
        b"*%d\r\n" % (3 + 2 * len(fields)),
        _bulk(b"XADD"),
        _bulk(stream.encode()),
        _bulk(b"*"),
    ]
    for name, value in fields.items():
        parts += (_bulk(name), _bulk(value))
    return b"".join(parts)


class _Lengths(dict[int, bytes]):
    r"""``n`` -> ``b"<n>\r\n"``, a bulk string's length line (kept for lengths below 64 KiB)."""

    def __missing__(self, n: int) -> bytes:
        line = b"%d\r\n" % n
        if n < 65_536:
            self[n] = line
        return line


_LENGTH = _Lengths()
#: What precedes a payload's length in its XADD: the command's start up to the payload's ``$``.
_PAYLOAD_START = _bulk(F_PAYLOAD) + b"$"


def _framing(
    stream: str, exchange: str, recv_ms: int, fmt: str, symbol: str | None
) -> tuple[bytes, bytes]:
    """The XADD of a message around its payload: the bytes before its length, and after it.

    Taken from :func:`pack_xadd` of the message's own fields (with an empty payload),
    so an entry written this way has exactly the fields of :meth:`RawMessage.to_fields`.
    """
    packed = pack_xadd(stream, RawMessage(b"", exchange, recv_ms, fmt, symbol).to_fields())
    cut = packed.index(_PAYLOAD_START) + len(_PAYLOAD_START)
    assert packed[cut : cut + 3] == b"0\r\n"
    return packed[:cut], packed[cut + 3 :]


class PayloadChunk(NamedTuple):
    """Messages of one exchange and format, received at one time: what a replay writes at once.

    Attributes:
        payloads: the messages' bytes, in order.
        exchange: the exchange of all of them.
        recv_ms: their receive time (when the feed wrote them).
        fmt: their format (``binance-ws``, ``binance-csv``, ...).
        symbols: each payload's symbol (``None``: none known), or one for all.

    """

    payloads: list[bytes]
    exchange: str
    recv_ms: int
    fmt: str = FORMAT_WS
    symbols: list[str | None] | str | None = None

    def messages(self) -> list[RawMessage]:
        """The chunk as raw messages."""
        syms = self.symbols
        if isinstance(syms, list):
            return [
                RawMessage(p, self.exchange, self.recv_ms, self.fmt, s)
                for p, s in zip(self.payloads, syms, strict=True)
            ]
        return [RawMessage(p, self.exchange, self.recv_ms, self.fmt, syms) for p in self.payloads]

    def pack(self, stream_of: Callable[[str | None], str]) -> bytes:
        """Every payload's ``XADD``, in order, in RESP (``stream_of``: a symbol's stream)."""
        length = _LENGTH
        syms = self.symbols
        if not isinstance(syms, list):
            head, tail = _framing(stream_of(syms), self.exchange, self.recv_ms, self.fmt, syms)
            if not self.payloads:
                return b""
            return head + (tail + head).join([length[len(p)] + p for p in self.payloads]) + tail
        frames = {
            s: _framing(stream_of(s), self.exchange, self.recv_ms, self.fmt, s) for s in set(syms)
        }
        parts: list[bytes] = []
        for p, s in zip(self.payloads, syms, strict=True):
            head, tail = frames[s]
            parts += (head, length[len(p)], p, tail)
        return b"".join(parts)


def reply_error(message: str) -> redis.RedisError:
    """The exception redis-py raises for an error reply: the transient ones as such.

    ``LOADING`` (a restarted Redis reading its data) and a full client table are
    ``redis.ConnectionError``s there, so :func:`~redisstore.retry.call_with_retry`
    waits them out; any other error reply is a ``redis.ResponseError``.
    """
    if message.startswith("LOADING"):
        return redis.BusyLoadingError(message)
    if message == "ERR max number of clients reached":
        return redis.ConnectionError(message)
    return redis.ResponseError(message)


class _Replies:
    """The replies to the chunks sent on one connection, read off its socket by hiredis.

    redis-py's ``read_response`` takes about 1 µs of Python per reply, as much as
    packing and sending the command; this reads the socket a MiB at a time and takes
    the replies off a hiredis reader, about 0.2 µs each (docs/storage.md, *Feed
    replay*). Only for a connection nothing else reads from (the writer's own); a
    connection without a socket of its own falls back to ``read_response``.
    """

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self._buffer = bytearray(1 << 20)

    def read(self, conn: Any, n: int) -> bytes:
        """The last of ``n`` replies; the first error reply raised once all ``n`` are read."""
        sock: Any = getattr(conn, "_sock", _NO_SOCKET)
        if sock is _NO_SOCKET:
            read = conn.read_response  # raises the error replies itself
            for _ in range(n - 1):
                read()
            return cast(bytes, read())
        if sock is None:
            raise redis.ConnectionError("raw log connection closed")
        reader, buffer = self._reader, self._buffer
        gets = reader.gets
        last: Any = None
        error: _ReplyError | None = None
        got = 0
        while got < n:
            reply = gets()
            if reply is False:
                try:
                    size = sock.recv_into(buffer)
                except TimeoutError as exc:  # socket.timeout
                    raise redis.TimeoutError(f"Timeout reading raw log replies: {exc}") from exc
                except OSError as exc:
                    raise redis.ConnectionError(f"Error reading raw log replies: {exc}") from exc
                if not size:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(cast(bytes, buffer), 0, size)  # hiredis takes any buffer
                continue
            got += 1
            if type(reply) is _ReplyError and error is None:
                error = reply
            last = reply
        if error is not None:
            raise reply_error(str(error))
        return cast(bytes, last)


class _ReplyError(Exception):
    """An error reply as hiredis returns it (turned into redis-py's by :func:`reply_error`)."""


_NO_SOCKET = object()


class _Sent:
    """A chunk's commands on their way: the buffer, how many replies, what it holds."""

    __slots__ = ("buf", "marks", "messages", "replies", "sent")

    def __init__(self, buf: bytes, replies: int, messages: int, marks: int) -> None:
        self.buf = buf
        self.replies = replies
        self.messages = messages
        self.marks = marks
        self.sent = False


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
        # write_chunk's connection and the chunks sent on it whose replies are unread.
        # A cluster client (no pool of its own) writes chunks through write() instead.
        self._chunked = isinstance(client, redis.Redis)
        self._conn: Any = None
        self._replies: _Replies | None = None
        self._inflight: deque[_Sent] = deque()

    def __enter__(self) -> RawLogWriter:
        if self.heartbeat is not None:
            self.heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            self._release()
            if self.heartbeat is not None:
                self.heartbeat.stop()

    @property
    def streams(self) -> list[str]:
        """The stream names written to."""
        return list(self._streams)

    def stream_for(self, msg: RawMessage) -> str:
        """The stream (shard) a message goes to."""
        return self._streams[shard_of(msg.symbol, self._shards)]

    def stream_of(self, symbol: str | None) -> str:
        """The stream (shard) of a symbol's messages."""
        return self._streams[shard_of(symbol, self._shards)]

    def write(
        self, messages: Iterable[RawMessage], marks: Sequence[ProgressMark] = ()
    ) -> list[bytes]:
        """Append messages, then progress marks, in one pipeline (one round trip).

        A mark goes to every stream (shard), after the messages: each partition's
        clock of the venue then moves past the trades the mark covers. Returns the
        stream ids of the messages.
        """
        self.flush()  # chunks sent before go first
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
        self._count(n, len(marks), ids[-1])
        return ids[:n]

    def write_chunk(self, chunk: PayloadChunk, marks: Sequence[ProgressMark] = ()) -> None:
        """Append a chunk's messages, then progress marks (every stream), like :meth:`write`.

        The chunk is sent at once and counted (``written``, the heartbeat, the feed's
        metric) when Redis has confirmed it: while the next chunk is on its way, or
        at :meth:`flush` (also at the end of ``with``, and before any :meth:`write`).
        A Redis outage resends, with backoff, every chunk not yet confirmed: at least
        once, as :meth:`write`.
        """
        if not self._chunked:
            self.write(chunk.messages(), marks)
            return
        buf = chunk.pack(self.stream_of)
        if marks:
            buf += b"".join(
                pack_xadd(stream, mark.to_fields()) for mark in marks for stream in self._streams
            )
        n = len(chunk.payloads)
        replies = n + len(marks) * len(self._streams)
        if not replies:
            return
        self._inflight.append(_Sent(buf, replies, n, len(marks)))
        call_with_retry(self._pump, what="raw log write", should_stop=self._should_stop)

    def flush(self) -> None:
        """Wait until Redis has confirmed every chunk sent by :meth:`write_chunk`."""
        if self._inflight:
            call_with_retry(
                lambda: self._pump(keep=0), what="raw log write", should_stop=self._should_stop
            )

    def mark(self, exchange: str, event_ms: int, recv_ms: int) -> None:
        """Write one progress mark of ``exchange`` (see :class:`ProgressMark`)."""
        self.write((), [ProgressMark(exchange, event_ms, recv_ms)])

    def _count(self, messages: int, marks: int, last_id: bytes) -> None:
        self.written += messages
        self.marks_written += marks
        count_feed(FEED_WRITTEN, messages)
        if self.heartbeat is not None:
            self.heartbeat.update(
                items_in=self.written, items_out=self.written, last_source_id=last_id.decode()
            )

    def _pump(self, keep: int = 1) -> None:
        """Send the chunks not sent yet; read replies until at most ``keep`` chunks await theirs.

        Any error drops the connection (with whatever replies were still on it) and
        marks every unconfirmed chunk to be sent again on the next call.
        """
        try:
            if self._conn is None:
                self._conn = self._client.connection_pool.get_connection()
            if self._replies is None:
                self._replies = _Replies()
            conn, replies = self._conn, self._replies
            for sent in self._inflight:
                if not sent.sent:
                    # No health check: its PING's reply would queue behind our replies.
                    conn.send_packed_command([sent.buf], check_health=False)
                    sent.sent = True
            while len(self._inflight) > keep:
                sent = self._inflight[0]
                last = replies.read(conn, sent.replies)
                self._inflight.popleft()
                self._count(sent.messages, sent.marks, last)
        except BaseException:
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        """Disconnect (unread replies go with it): every chunk in flight is to be sent again."""
        for sent in self._inflight:
            sent.sent = False
        self._replies = None  # whatever it held belonged to the old connection
        if self._conn is not None:
            self._conn.disconnect()

    def _release(self) -> None:
        """Give the chunks' connection back to the client's pool."""
        if self._conn is not None:
            if self._inflight:
                self._drop_connection()
            self._client.connection_pool.release(self._conn)
            self._conn = None
