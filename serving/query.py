"""The candle query both ``cryptopipe candles`` and the HTTP API answer (one place).

:func:`candles` takes the parameters as a user gives them (strings), checks them, and
returns the records; a bad parameter is a :class:`QueryError` whose message says what
to give instead (an unknown symbol names the symbols there are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from marketdata.interval import INTERVAL_LABELS, Interval
from marketdata.parsing import normalize_exchange, normalize_symbol
from marketdata.records import SOURCES, CandleRecord
from marketdata.settings import Settings
from marketdata.timeutil import parse_time
from redisstore.conn import text
from redisstore.keys import SYMBOLS_KEY
from serving.gaps import fill_gaps
from serving.merged import reader_for
from serving.stream import closed_until


class QueryError(ValueError):
    """A parameter of a query is wrong; the message says what to give instead."""


class UnknownSymbolError(QueryError):
    """Nothing has candles of the symbol; the message names the symbols there are."""


@dataclass(frozen=True)
class CandleQuery:
    """A checked candle query."""

    symbol: str
    interval: Interval
    exchange: str | None = None
    start: int | None = None
    end: int | None = None
    source: str = "merged"
    fill: bool = False

    @classmethod
    def parse(
        cls,
        symbol: str | None,
        interval: str | None,
        *,
        exchange: str | None = None,
        start: str | None = None,
        end: str | None = None,
        source: str | None = None,
        fill: bool = False,
        prefix: str = "",
    ) -> CandleQuery:
        """Check the parameters as given (strings); raise :class:`QueryError`.

        ``prefix`` goes before parameter names in messages (``--`` for the command line).
        """
        if not symbol:
            msg = "symbol is required, e.g. BTCUSDT"
            raise QueryError(msg)
        sym = normalize_symbol(symbol)
        if sym is None:
            msg = f"bad symbol {symbol!r}: use letters and digits, e.g. BTCUSDT"
            raise QueryError(msg)
        if not interval:
            msg = f"{prefix}interval is required: one of {', '.join(INTERVAL_LABELS)}"
            raise QueryError(msg)
        if interval not in INTERVAL_LABELS:
            msg = f"bad {prefix}interval {interval!r}: one of {', '.join(INTERVAL_LABELS)}"
            raise QueryError(msg)
        ex = None
        if exchange:
            ex = normalize_exchange(exchange)
            if ex is None:
                msg = f"bad {prefix}exchange {exchange!r}: use a lower-case name, e.g. binance"
                raise QueryError(msg)
        src = source or "merged"
        if src not in SOURCES:
            msg = f"bad {prefix}source {src!r}: one of {', '.join(SOURCES)}"
            raise QueryError(msg)
        try:
            t0 = parse_time(start, f"{prefix}start") if start else None
            t1 = parse_time(end, f"{prefix}end") if end else None
        except ValueError as exc:
            raise QueryError(str(exc)) from exc
        if t0 is not None and t1 is not None and t1 <= t0:
            msg = (
                f"{prefix}end must be after {prefix}start ({prefix}start is inclusive, "
                f"{prefix}end exclusive)"
            )
            raise QueryError(msg)
        return cls(sym, Interval.parse(interval), ex, t0, t1, src, fill)


def known_series(client: redis.Redis) -> list[tuple[str, str]]:
    """Every (exchange, symbol) the stream has candles of, sorted."""
    out = []
    for member in client.smembers(SYMBOLS_KEY):
        exchange, _, symbol = text(member).partition(":")
        out.append((exchange, symbol))
    return sorted(out)


def unknown_symbol_message(symbol: str, client: redis.Redis) -> str:
    """``no candles of X``, and which symbols the speed layer has."""
    symbols = sorted({s for _, s in known_series(client)})
    there = ", ".join(symbols) if symbols else "none yet (is a feed running?)"
    return f"no candles of {symbol}: the symbols with stream candles are {there}"


def candles(
    q: CandleQuery, settings: Settings, client: redis.Redis, *, strict: bool = False
) -> list[CandleRecord]:
    """The records of ``q``, in open-time order (every exchange's, unless one is asked).

    With ``strict``, a symbol nothing knows (no candles in Redis, none in this range)
    is an :class:`UnknownSymbolError` naming the symbols there are.
    """
    reader = reader_for(q.source, settings, client)
    records = reader.read(q.symbol, q.interval, exchange=q.exchange, start=q.start, end=q.end)
    if strict and not records and q.symbol not in {s for _, s in known_series(client)}:
        raise UnknownSymbolError(unknown_symbol_message(q.symbol, client))
    if q.fill:
        exchanges = sorted(
            {r.candle.exchange for r in records} | ({q.exchange} if q.exchange else set())
        )
        previous: dict[str, CandleRecord | None] = {}
        if q.start is not None:
            previous = {ex: reader.previous(q.symbol, q.interval, ex, q.start) for ex in exchanges}
        records = fill_gaps(
            records,
            q.interval,
            start=q.start,
            end=q.end,
            previous=previous,
            closed_until_ms=closed_until(client, settings, q.symbol),
        )
    return records


def records_json(records: list[CandleRecord], *, filled: bool) -> list[dict[str, Any]]:
    """The JSON objects ``cryptopipe candles --format json`` prints, one per record."""
    return [r.to_json_dict(with_filled=filled) for r in records]
