"""Binance's public dump formats, rendered from trades (tests build their files with these).

The layouts are those of data.binance.vision: spot files have no header and, since
2025, times in µs; USD-M futures files have a header line and times in ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from marketdata.decimals import format_e8
from marketdata.trade import Trade

UM_TRADES_HEADER = b"id,price,qty,quote_qty,time,is_buyer_maker"
UM_AGG_HEADER = (
    b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
)


#: How a trade's quote quantity is cut to 8 decimals: Binance truncates (a published
#: trade of 0.00062700 x 3.55800000 = 0.002230866 has quoteQty 0.00223086).
QUOTE_CUTS = {"truncate": ROUND_DOWN, "round": ROUND_HALF_EVEN}


def _quote(t: Trade, cut: str) -> Decimal:
    exact = Decimal(t.price_e8) * Decimal(t.quantity_e8) / Decimal(10**16)
    if cut == "exact":
        return exact
    return exact.quantize(Decimal("0.00000001"), rounding=QUOTE_CUTS[cut])


def quote_qty(t: Trade, cut: str = "truncate") -> bytes:
    """``price * qty`` cut to 8 decimals, as Binance's ``quoteQty`` column has it."""
    return f"{_quote(t, cut):.8f}".encode()


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


UM_KLINES_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    b"taker_buy_volume,taker_buy_quote_volume,ignore"
)


def klines(
    trades: Sequence[Trade],
    *,
    micros: bool = True,
    header: bool = False,
    every_minute: bool = True,
    quote: str = "truncate",
) -> bytes:
    """Binance's 1m klines of ``trades`` (one exchange and symbol), as Binance computes them.

    The quote volumes sum each trade's quote quantity: cut to 8 decimals the way
    ``quote`` says (``truncate``, as Binance does; ``round`` half-even), or ``exact``
    (the exact sum of price x quantity, written with all its digits). With
    ``every_minute``, minutes without trades between the first and last get Binance's
    empty kline (the previous close, zero volume and count).
    """
    by_minute: dict[int, list[Trade]] = {}
    for t in sorted(trades, key=lambda t: (t.event_time, t.trade_id)):
        by_minute.setdefault(t.event_time - t.event_time % 60_000, []).append(t)
    if not by_minute:
        return b""
    rows = [UM_KLINES_HEADER] if header else []
    unit = 1000 if micros else 1
    minutes = sorted(by_minute)
    span = range(minutes[0], minutes[-1] + 1, 60_000) if every_minute else minutes
    close = b""
    for m in span:
        ts = by_minute.get(m, [])
        if ts:
            prices = [t.price_e8 for t in ts]
            o, h, lo, close = (
                _e8(ts[0].price_e8),
                _e8(max(prices)),
                _e8(min(prices)),
                _e8(ts[-1].price_e8),
            )
            vol = sum(t.quantity_e8 for t in ts)
            qsum = sum((_quote(t, quote) for t in ts), Decimal(0))
            taker = [t for t in ts if not t.is_buyer_maker]
            tvol = sum(t.quantity_e8 for t in taker)
            tquote = sum((_quote(t, quote) for t in taker), Decimal(0))
            n = sum(t.span for t in ts)
        else:
            o = h = lo = close
            vol, qsum, tvol, tquote, n = 0, Decimal(0), 0, Decimal(0), 0
        rows.append(
            b"%d,%s,%s,%s,%s,%s,%d,%s,%d,%s,%s,0"
            % (
                m * unit,
                o,
                h,
                lo,
                close,
                _e8(vol),
                (m + 59_999) * unit + (999 if micros else 0),
                _quote_text(qsum),
                n,
                _e8(tvol),
                _quote_text(tquote),
            )
        )
    return b"\n".join(rows) + b"\n"


def _quote_text(v: Decimal) -> bytes:
    """8 fractional digits, or all of them when there are more (an exact sum)."""
    text = f"{v:.16f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(8, '0')}".encode()
