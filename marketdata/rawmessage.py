"""The raw-log entry: a message as received, with where and when it came from.

docs/architecture.md section 6. The Redis stream entry is a flat map of byte fields; this
module turns a :class:`RawMessage` into that map and back, without Redis.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import NamedTuple

from marketdata.parsing import FORMAT_WS, normalize_exchange
from marketdata.timeutil import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS
from marketdata.trade import Rejection

F_PAYLOAD = b"payload"
F_EXCHANGE = b"exchange"
F_RECV = b"recv_ms"
F_FORMAT = b"format"
F_SYMBOL = b"symbol"
#: The first field of a progress mark's entry (a message's first field is the payload).
F_MARK = b"mark"
#: The most fields a raw-log entry may carry. A message has at most five and a
#: progress mark three; an entry with more than this is not read at all, but
#: rejected as ``too_many_fields`` (the archive once stored counts in 16 bits, and
#: such an entry crash-looped it).
MAX_ENTRY_FIELDS = 65_535


class RawMessage(NamedTuple):
    """One message as a feed received it.

    Attributes:
        payload: the bytes exactly as received (a websocket frame, a CSV row).
        exchange: the exchange it was read from (``binance``).
        recv_ms: receive time, ms since the epoch UTC (for the simulator, the
            simulated arrival time).
        fmt: ``binance-ws`` or ``binance-csv``.
        symbol: the symbol when the payload does not carry it (CSV rows), and the
            feed's best knowledge otherwise (used for sharding only).

    """

    payload: bytes
    exchange: str
    recv_ms: int
    fmt: str = FORMAT_WS
    symbol: str | None = None

    def to_fields(self) -> dict[bytes, bytes]:
        """The Redis stream entry's fields."""
        fields = {
            F_PAYLOAD: self.payload,
            F_EXCHANGE: self.exchange.encode(),
            F_RECV: str(self.recv_ms).encode(),
        }
        if self.fmt != FORMAT_WS:
            fields[F_FORMAT] = self.fmt.encode()
        if self.symbol is not None:
            fields[F_SYMBOL] = self.symbol.encode()
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> RawMessage:
        """Decode a stream entry; missing or garbled metadata is tolerated.

        The payload is validated later, by the parser; here a missing exchange
        becomes ``""`` (rejected as ``bad_exchange``) and a bad receive time ``0``.
        """
        recv = fields.get(F_RECV, b"0")
        try:
            recv_ms = int(recv)
        except ValueError:
            recv_ms = 0
        fmt = fields.get(F_FORMAT)
        sym = fields.get(F_SYMBOL)
        return cls(
            fields.get(F_PAYLOAD, b""),
            fields.get(F_EXCHANGE, b"").decode("utf-8", "replace"),
            recv_ms,
            fmt.decode("utf-8", "replace") if fmt else FORMAT_WS,
            sym.decode("utf-8", "replace") if sym else None,
        )


class ProgressMark(NamedTuple):
    """A feed's promise: everything of ``exchange`` up to ``event_ms`` is delivered.

    Written into every raw-log partition (after the trades it covers), at least
    once a second while the feed is alive, quiet markets included; a venue's clock
    moves with its marks as with its trades (docs/architecture.md section 4). The
    entry is ``mark <event_ms> exchange <name> recv_ms <ms>``: its first field tells
    it from a message without parsing anything.

    Attributes:
        exchange: the venue (``binance``, ``binance-um``).
        event_ms: the event time (ms, UTC) up to which everything is delivered.
        recv_ms: when the feed wrote it (its receive clock).

    """

    exchange: str
    event_ms: int
    recv_ms: int

    def to_fields(self) -> dict[bytes, bytes]:
        """The Redis stream entry's fields (the mark first)."""
        return {
            F_MARK: str(self.event_ms).encode(),
            F_EXCHANGE: self.exchange.encode(),
            F_RECV: str(self.recv_ms).encode(),
        }


def parse_mark(fields: Sequence[bytes]) -> ProgressMark | Rejection:
    """A progress mark's entry (flat ``[name, value, ...]``), validated.

    A mark that cannot be read is never ignored silently: it is a
    :class:`~marketdata.trade.Rejection` (``bad_timestamp``, ``bad_exchange``) for the
    DLQ, whose payload is the entry's fields as ``name=value`` pairs.
    """
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    raw = b" ".join(k + b"=" + v for k, v in values.items())
    ex_raw = values.get(F_EXCHANGE, b"").decode("utf-8", "replace")
    ex = normalize_exchange(ex_raw)
    if ex is None:
        return Rejection(
            "bad_exchange", raw, ex_raw[:40], "progress mark: exchange name is not valid"
        )
    try:
        event_ms = int(values.get(F_MARK, b""))
    except ValueError:
        return Rejection("bad_timestamp", raw, ex, "progress mark: time is not an integer")
    if not MIN_EVENT_TIME_MS <= event_ms < MAX_EVENT_TIME_MS:
        return Rejection("bad_timestamp", raw, ex, f"progress mark {event_ms} outside 2009..2100")
    try:
        recv_ms = int(values.get(F_RECV, b"0"))
    except ValueError:
        recv_ms = 0
    return ProgressMark(ex, event_ms, recv_ms)


def too_many_fields(fields: Sequence[bytes]) -> Rejection | None:
    """A ``too_many_fields`` rejection of an entry (flat ``[name, value, ...]``) too big to read.

    The payload is the entry's ``payload`` field if it has one among its first
    fields (never the whole entry), the exchange its ``exchange`` field likewise.
    """
    n = len(fields) // 2
    if n <= MAX_ENTRY_FIELDS:
        return None
    head = dict(zip(fields[:10:2], fields[1:10:2], strict=False))
    return Rejection(
        "too_many_fields",
        head.get(F_PAYLOAD, b""),
        head.get(F_EXCHANGE, b"").decode("utf-8", "replace")[:40],
        f"raw-log entry has {n} fields (at most {MAX_ENTRY_FIELDS})",
    )


def shard_of(symbol: str | None, shards: int) -> int:
    """Stable shard of a symbol (adler32, never Python's salted ``hash``)."""
    if shards <= 1 or not symbol:
        return 0
    return zlib.adler32(symbol.upper().encode()) % shards
