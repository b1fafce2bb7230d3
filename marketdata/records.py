"""Candles as readers return them and as stores keep them: records, sources, the reader protocol.

Pure types shared by the layers: the speed layer stores candles in Redis in the
record form (:func:`candle_record`), the serving package reads either layer and
returns :class:`CandleRecord` objects through the :class:`CandleReader` protocol,
and the command line prints their JSON (docs/architecture.md section 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from marketdata.candle import Candle
from marketdata.decimals import QUOTE_SCALE_DIGITS, SCALE_DIGITS, format_e8, format_e16
from marketdata.interval import Interval

#: The speed layer (Redis, and its copy in the lake).
SOURCE_STREAM = "stream"
#: The batch layer (the lake).
SOURCE_BATCH = "batch"
#: What a reader can be asked for: both layers merged, or one of them.
SOURCE_MERGED = "merged"
SOURCES = (SOURCE_MERGED, SOURCE_STREAM, SOURCE_BATCH)


def candle_record(c: Candle, *, closed: bool) -> dict[str, Any]:
    """The stored form: docs/architecture.md section 8's JSON plus the open/close order keys.

    ``first_event_time`` and ``last_event_time`` are kept so that a stored candle can
    be merged exactly with late trades (reconciliation) or with other candles.
    """
    rec = c.to_json_dict(closed=closed, source=SOURCE_STREAM)
    rec["first_event_time"] = c.first_event_time
    rec["last_event_time"] = c.last_event_time
    return rec


def candle_json(c: Candle, *, closed: bool) -> bytes:
    """The stored form as JSON bytes."""
    return orjson.dumps(candle_record(c, closed=closed))


def _scaled(text: str, digits: int) -> int:
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if len(frac) > digits:
        msg = f"{text!r} has more than {digits} fractional digits"
        raise ValueError(msg)
    return sign * (int(whole or "0") * 10**digits + int(frac.ljust(digits, "0") or "0"))


def candle_from_record(rec: dict[str, Any]) -> Candle:
    """A stored record back to a :class:`Candle` (exact)."""
    e8 = lambda name: _scaled(rec[name], SCALE_DIGITS)  # noqa: E731
    return Candle(
        exchange=rec["exchange"],
        symbol=rec["symbol"],
        interval=Interval.parse(rec["interval"]),
        open_time=int(rec["open_time"]),
        open_e8=e8("open"),
        high_e8=e8("high"),
        low_e8=e8("low"),
        close_e8=e8("close"),
        volume_e8=e8("volume"),
        quote_volume_e16=_scaled(rec["quote_volume"], QUOTE_SCALE_DIGITS),
        trade_count=int(rec["trade_count"]),
        taker_buy_volume_e8=e8("taker_buy_volume"),
        first_event_time=int(rec.get("first_event_time", rec["open_time"])),
        first_trade_id=int(rec["first_trade_id"]),
        last_event_time=int(rec.get("last_event_time", rec["open_time"])),
        last_trade_id=int(rec["last_trade_id"]),
    )


# ---- writes -----------------------------------------------------------------------


@dataclass(frozen=True)
class CandleRecord:
    """A candle as a reader returns it.

    Attributes:
        candle: the candle; for a filled record, the previous close at zero volume.
        closed: whether its window is closed.
        source: ``stream`` or ``batch``: the layer it came from.
        filled: a gap-filled record (no trades in the window).

    """

    candle: Candle
    closed: bool
    source: str
    filled: bool = False

    def to_json_dict(self, *, with_filled: bool = False) -> dict[str, Any]:
        """docs/architecture.md section 8's record; ``filled`` added when asked for gap filling.

        A filled record has zero volume, so its ``vwap`` and trade ids are ``null``.
        """
        if not self.filled:
            rec = self.candle.to_json_dict(closed=self.closed, source=self.source)
        else:
            c = self.candle
            rec = {
                "exchange": c.exchange,
                "symbol": c.symbol,
                "interval": c.interval.label,
                "open_time": c.open_time,
                "open": format_e8(c.open_e8),
                "high": format_e8(c.high_e8),
                "low": format_e8(c.low_e8),
                "close": format_e8(c.close_e8),
                "volume": format_e8(0),
                "quote_volume": format_e16(0),
                "trade_count": 0,
                "taker_buy_volume": format_e8(0),
                "vwap": None,
                "first_trade_id": None,
                "last_trade_id": None,
                "closed": self.closed,
                "source": self.source,
            }
        if with_filled:
            rec["filled"] = self.filled
        return rec


class CandleReader(Protocol):
    """Reads candles of one symbol and interval, ordered by (exchange, open_time)."""

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Candles with ``start <= open_time < end`` (either bound optional)."""
        ...

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The last closed candle with ``open_time < before``, if any (for gap filling)."""
        ...
