"""The raw-log entry: a message as received, with where and when it came from.

docs/architecture.md section 6. The Redis stream entry is a flat map of byte fields; this
module turns a :class:`RawMessage` into that map and back, without Redis.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from marketdata.parsing import FORMAT_WS

F_PAYLOAD = b"payload"
F_EXCHANGE = b"exchange"
F_RECV = b"recv_ms"
F_FORMAT = b"format"
F_SYMBOL = b"symbol"


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


def shard_of(symbol: str | None, shards: int) -> int:
    """Stable shard of a symbol (adler32, never Python's salted ``hash``)."""
    if shards <= 1 or not symbol:
        return 0
    return zlib.adler32(symbol.upper().encode()) % shards
