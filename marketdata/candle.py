"""The candle as a pure fold over trades and a merge of two partial candles.

docs/architecture.md section 3. This is the reference both layers are tested against:
``fold(trades)`` for any order of arrival gives the same candle, and
``merge(fold(a), fold(b)) == fold(a + b)`` for disjoint ``a`` and ``b``.

Open and close are chosen by ``(event_time, trade_id)``, never by arrival order.
The fold assumes its trades are already deduplicated (``trade_count`` counts
distinct trades); :func:`fold_trades` deduplicates by trade key for convenience.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from marketdata.decimals import format_e8, format_e16, vwap_e8
from marketdata.interval import Interval
from marketdata.trade import Trade


@dataclass(slots=True)
class Candle:
    """OHLCV of one window ``[open_time, open_time + interval)``.

    Prices and quantities are scaled integers (1e-8 units; ``quote_volume_e16`` is in
    1e-16 units because it sums price x quantity exactly).
    """

    exchange: str
    symbol: str
    interval: Interval
    open_time: int
    open_e8: int
    high_e8: int
    low_e8: int
    close_e8: int
    volume_e8: int
    quote_volume_e16: int
    trade_count: int
    taker_buy_volume_e8: int
    # (event_time, trade_id) of the open and close trades: the fold's order key.
    first_event_time: int
    first_trade_id: int
    last_event_time: int
    last_trade_id: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(exchange, symbol, interval, open_time): the candle's identity."""
        return (self.exchange, self.symbol, self.interval.label, self.open_time)

    @property
    def close_time(self) -> int:
        """Exclusive end of the window, ms."""
        return self.open_time + self.interval.ms

    @property
    def vwap_e8(self) -> int:
        """quote_volume / volume, rounded half-even to 8 fractional digits."""
        return vwap_e8(self.quote_volume_e16, self.volume_e8)

    @classmethod
    def from_trade(cls, trade: Trade, interval: Interval) -> Candle:
        """A candle holding one trade."""
        p, q = trade.price_e8, trade.quantity_e8
        return cls(
            trade.exchange,
            trade.symbol,
            interval,
            interval.floor(trade.event_time),
            p,
            p,
            p,
            p,
            q,
            p * q,
            trade.span,
            0 if trade.is_buyer_maker else q,
            trade.event_time,
            trade.trade_id,
            trade.event_time,
            trade.trade_id + trade.span - 1,
        )

    def add(self, trade: Trade) -> None:
        """Fold one (not yet counted) trade into this candle, in place.

        An aggregate trade (``span > 1``) holds the trade ids ``trade_id ..
        last_trade_id``, all at one time and price: it opens by its first id and
        closes by its last, so the candle is that of its underlying trades.
        """
        p, q = trade.price_e8, trade.quantity_e8
        t, tid = trade.event_time, trade.trade_id
        if p > self.high_e8:
            self.high_e8 = p
        if p < self.low_e8:
            self.low_e8 = p
        if (t, tid) < (self.first_event_time, self.first_trade_id):
            self.open_e8, self.first_event_time, self.first_trade_id = p, t, tid
        last = tid + trade.span - 1
        if (t, last) > (self.last_event_time, self.last_trade_id):
            self.close_e8, self.last_event_time, self.last_trade_id = p, t, last
        self.volume_e8 += q
        self.quote_volume_e16 += p * q
        self.trade_count += trade.span
        if not trade.is_buyer_maker:
            self.taker_buy_volume_e8 += q

    def merged(self, other: Candle) -> Candle:
        """A new candle covering the trades of both (disjoint sets of trades).

        The result keeps ``self``'s interval and open_time: merging is how 1m
        candles roll up into coarser ones, and how a stream candle is combined
        with its window's late trades.
        """
        first = (
            self
            if (self.first_event_time, self.first_trade_id)
            <= (other.first_event_time, other.first_trade_id)
            else other
        )
        last = (
            self
            if (self.last_event_time, self.last_trade_id)
            >= (other.last_event_time, other.last_trade_id)
            else other
        )
        return Candle(
            exchange=self.exchange,
            symbol=self.symbol,
            interval=self.interval,
            open_time=self.open_time,
            open_e8=first.open_e8,
            high_e8=max(self.high_e8, other.high_e8),
            low_e8=min(self.low_e8, other.low_e8),
            close_e8=last.close_e8,
            volume_e8=self.volume_e8 + other.volume_e8,
            quote_volume_e16=self.quote_volume_e16 + other.quote_volume_e16,
            trade_count=self.trade_count + other.trade_count,
            taker_buy_volume_e8=self.taker_buy_volume_e8 + other.taker_buy_volume_e8,
            first_event_time=first.first_event_time,
            first_trade_id=first.first_trade_id,
            last_event_time=last.last_event_time,
            last_trade_id=last.last_trade_id,
        )

    def rolled_up(self, interval: Interval) -> Candle:
        """This candle re-keyed to the coarser ``interval`` window that holds it."""
        if interval.ms % self.interval.ms:
            msg = f"cannot roll {self.interval} up into {interval}"
            raise ValueError(msg)
        c = self.copy()
        c.interval = interval
        c.open_time = interval.floor(self.open_time)
        return c

    def copy(self) -> Candle:
        """A shallow copy (all fields are immutable values)."""
        return Candle(*(getattr(self, f) for f in self.__slots__))

    def fields(self) -> dict[str, Any]:
        """The comparable content: every candle field (docs/architecture.md section 3), exact."""
        return {
            "open": format_e8(self.open_e8),
            "high": format_e8(self.high_e8),
            "low": format_e8(self.low_e8),
            "close": format_e8(self.close_e8),
            "volume": format_e8(self.volume_e8),
            "quote_volume": format_e16(self.quote_volume_e16),
            "trade_count": self.trade_count,
            "taker_buy_volume": format_e8(self.taker_buy_volume_e8),
            "vwap": format_e8(self.vwap_e8),
            "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id,
        }

    def to_json_dict(self, *, closed: bool = True, source: str = "stream") -> dict[str, Any]:
        """The record of ``cryptopipe candles --format json`` (docs/architecture.md section 8)."""
        out: dict[str, Any] = {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "interval": self.interval.label,
            "open_time": self.open_time,
        }
        out.update(self.fields())
        out["closed"] = closed
        out["source"] = source
        return out


def dedupe(trades: Iterable[Trade]) -> list[Trade]:
    """Trades with duplicates (same exchange, symbol, trade_id) removed; first kept."""
    seen: set[tuple[str, str, int]] = set()
    out = []
    for t in trades:
        k = (t.exchange, t.symbol, t.trade_id)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def fold_trades(
    trades: Iterable[Trade], interval: Interval
) -> dict[tuple[str, str, str, int], Candle]:
    """Reference candles of ``interval`` for a set of trades (deduplicated here).

    Returns:
        Candles keyed by (exchange, symbol, interval label, open_time). Windows
        without trades have no candle.

    """
    out: dict[tuple[str, str, str, int], Candle] = {}
    for t in dedupe(trades):
        k = (t.exchange, t.symbol, interval.label, interval.floor(t.event_time))
        c = out.get(k)
        if c is None:
            out[k] = Candle.from_trade(t, interval)
        else:
            c.add(t)
    return out


def roll_up(
    candles: Iterable[Candle], interval: Interval
) -> dict[tuple[str, str, str, int], Candle]:
    """Coarser candles from finer ones (e.g. 5m from 1m); equals folding the trades."""
    out: dict[tuple[str, str, str, int], Candle] = {}
    for c in candles:
        r = c.rolled_up(interval)
        prev = out.get(r.key)
        out[r.key] = r if prev is None else prev.merged(r)
    return out
