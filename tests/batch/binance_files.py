"""Binance's public dump formats, rendered from trades (tests build their files with these).

The layouts are those of data.binance.vision: spot files have no header and, since
2025, times in µs; USD-M futures files have a header line and times in ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

from marketdata.decimals import format_e8
from marketdata.trade import Trade

UM_TRADES_HEADER = b"id,price,qty,quote_qty,time,is_buyer_maker"
UM_AGG_HEADER = (
    b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
)


def quote_qty(t: Trade) -> bytes:
    """``price * qty`` rounded to 8 decimals, as Binance's ``quoteQty`` column has it."""
    q = (Decimal(t.price_e8) * Decimal(t.quantity_e8) / Decimal(10**16)).quantize(
        Decimal("0.00000001"), rounding=ROUND_HALF_EVEN
    )
    return f"{q:.8f}".encode()


def _e8(v: int) -> bytes:
    # Binance writes 8 fractional digits always.
    return f"{Decimal(v) / Decimal(10**8):.8f}".encode()


def spot_trades(trades: Sequence[Trade], *, micros: bool = True, spelling: str = "True") -> bytes:
    """``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``, no header."""
    true, false = (b"True", b"False") if spelling == "True" else (b"true", b"false")
    rows = [
        b"%d,%s,%s,%s,%d,%s,%s"
        % (
            t.trade_id,
            _e8(t.price_e8),
            _e8(t.quantity_e8),
            quote_qty(t),
            t.event_time * 1000 if micros else t.event_time,
            true if t.is_buyer_maker else false,
            true,
        )
        for t in trades
    ]
    return b"\n".join(rows) + b"\n"


def um_trades(trades: Sequence[Trade]) -> bytes:
    """USD-M: the header, then ``id,price,qty,quote_qty,time,is_buyer_maker`` (ms)."""
    rows = [UM_TRADES_HEADER] + [
        b"%d,%s,%s,%s,%d,%s"
        % (
            t.trade_id,
            format_e8(t.price_e8).encode(),
            format_e8(t.quantity_e8).encode(),
            quote_qty(t),
            t.event_time,
            b"true" if t.is_buyer_maker else b"false",
        )
        for t in trades
    ]
    return b"\n".join(rows) + b"\n"


def spot_aggtrades(aggs: Sequence[Trade], first_agg_id: int = 1) -> bytes:
    """Spot: ``aggId,price,qty,firstId,lastId,time(µs),isBuyerMaker,isBestMatch``."""
    rows = [
        b"%d,%s,%s,%d,%d,%d,%s,True"
        % (
            first_agg_id + k,
            _e8(a.price_e8),
            _e8(a.quantity_e8),
            a.trade_id,
            a.last_trade_id,
            a.event_time * 1000,
            b"True" if a.is_buyer_maker else b"False",
        )
        for k, a in enumerate(aggs)
    ]
    return b"\n".join(rows) + b"\n"


def um_aggtrades(aggs: Sequence[Trade], first_agg_id: int = 1) -> bytes:
    """USD-M: the header, then 7 columns, times in ms, ``true``/``false``."""
    rows = [UM_AGG_HEADER] + [
        b"%d,%s,%s,%d,%d,%d,%s"
        % (
            first_agg_id + k,
            format_e8(a.price_e8).encode(),
            format_e8(a.quantity_e8).encode(),
            a.trade_id,
            a.last_trade_id,
            a.event_time,
            b"true" if a.is_buyer_maker else b"false",
        )
        for k, a in enumerate(aggs)
    ]
    return b"\n".join(rows) + b"\n"
