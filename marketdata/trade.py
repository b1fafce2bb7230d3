"""The trade: the one fact both layers are built from (docs/architecture.md section 2)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from marketdata.decimals import e8_to_decimal, format_e8, parse_e8


class Trade(NamedTuple):
    """One validated trade.

    Attributes:
        exchange: lower case, e.g. ``"binance"``.
        symbol: upper case, e.g. ``"BTCUSDT"``.
        trade_id: per (exchange, symbol), as given by the exchange.
        price_e8: price in units of 1e-8 (exact; ``> 0``).
        quantity_e8: quantity in units of 1e-8 (exact; ``> 0``).
        event_time: the exchange's trade time, ms since the epoch, UTC.
        is_buyer_maker: Binance ``m``; ``False`` means the taker bought.
        span: how many of the exchange's trades this one stands for: 1, or for an
            aggregate trade (Binance ``aggTrade``: trades of one taker order at one
            price and time) ``last - first + 1``, its trade ids being ``trade_id``
            (the first) to :attr:`last_trade_id`. Candles count ``span`` trades, so
            an aggregate's candles equal those of the trades it aggregates.

    """

    exchange: str
    symbol: str
    trade_id: int
    price_e8: int
    quantity_e8: int
    event_time: int
    is_buyer_maker: bool
    span: int = 1

    @property
    def last_trade_id(self) -> int:
        """The last of the exchange's trade ids this trade stands for."""
        return self.trade_id + self.span - 1

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity of the trade: duplicates share it."""
        return (self.exchange, self.symbol, self.trade_id)

    @property
    def price(self) -> Decimal:
        """Exact price."""
        return e8_to_decimal(self.price_e8)

    @property
    def quantity(self) -> Decimal:
        """Exact quantity."""
        return e8_to_decimal(self.quantity_e8)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-friendly form, decimals as strings (``span`` only when it is not 1)."""
        out: dict[str, Any] = {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "trade_id": self.trade_id,
            "price": format_e8(self.price_e8),
            "quantity": format_e8(self.quantity_e8),
            "event_time": self.event_time,
            "is_buyer_maker": self.is_buyer_maker,
        }
        if self.span != 1:
            out["span"] = self.span
        return out

    def to_fields(self) -> dict[str, Any]:
        """The trade as fields of a Redis stream entry (the late stream).

        :meth:`to_json_dict`'s fields in its order, but the maker flag as ``"true"`` or
        ``"false"`` (a stream holds no booleans); :meth:`from_fields` reads them back.
        """
        fields = self.to_json_dict()
        fields["is_buyer_maker"] = "true" if self.is_buyer_maker else "false"
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Trade:
        """A trade from a stream entry's fields as Redis returns them (see :meth:`to_fields`)."""
        return cls(
            exchange=fields[b"exchange"].decode(),
            symbol=fields[b"symbol"].decode(),
            trade_id=int(fields[b"trade_id"]),
            price_e8=parse_e8(fields[b"price"].decode()),
            quantity_e8=parse_e8(fields[b"quantity"].decode()),
            event_time=int(fields[b"event_time"]),
            is_buyer_maker=fields[b"is_buyer_maker"] == b"true",
            span=int(fields.get(b"span", 1)),
        )


def aggregate(trades: Iterable[Trade]) -> list[Trade]:
    """Trades as Binance aggregates them (``aggTrade``), in the given order.

    Consecutive trades of one exchange and symbol with consecutive ids and the same
    time, price and side become one trade whose ``span`` counts them and whose
    quantity is their sum. Binance aggregates the fills of one taker order; trades
    that qualify here but came from two orders stay apart there, which changes no
    candle. Tests and the bench build aggregate-trade files with it.
    """
    out: list[Trade] = []
    for t in trades:
        if out:
            a = out[-1]
            if (a.exchange, a.symbol, a.event_time, a.price_e8, a.is_buyer_maker) == (
                t.exchange,
                t.symbol,
                t.event_time,
                t.price_e8,
                t.is_buyer_maker,
            ) and t.trade_id == a.last_trade_id + 1:
                qty = a.quantity_e8 + t.quantity_e8
                out[-1] = a._replace(quantity_e8=qty, span=a.span + t.span)
                continue
        out.append(t)
    return out


class Rejection(NamedTuple):
    """A message that failed validation: never dropped, always explained.

    Attributes:
        reason: machine-readable code, e.g. ``"bad_number:price"`` (docs/architecture.md section 2).
        payload: the raw payload as received (bytes, possibly not UTF-8).
        exchange: the exchange the feed said it came from.
        detail: a short human-readable explanation.

    """

    reason: str
    payload: bytes
    exchange: str
    detail: str = ""
