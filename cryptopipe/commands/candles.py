"""``cryptopipe candles SYMBOL --interval I ...``: read candles back (docs/architecture.md 8).

``--format json`` prints one object per line with the fields of docs/architecture.md section 3
plus ``symbol``, ``interval``, ``open_time`` (ms), ``closed`` and ``source``;
decimals are strings. ``--start`` is inclusive and ``--end`` exclusive, both on
``open_time``; times are ISO 8601 in UTC, or seconds, ms or µs since the epoch
(:func:`marketdata.timeutil.parse_time`, every command's rule).
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

import orjson

from cryptopipe.errors import CommandError
from marketdata.interval import INTERVAL_LABELS, Interval
from marketdata.parsing import normalize_exchange, normalize_symbol
from marketdata.records import SOURCES, CandleRecord
from marketdata.settings import Settings
from marketdata.timeutil import format_ms, parse_time
from redisstore.conn import connect_settings
from serving.gaps import fill_gaps
from serving.merged import reader_for
from serving.stream import closed_until

_FIELDS = (
    "exchange",
    "symbol",
    "interval",
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "taker_buy_volume",
    "vwap",
    "first_trade_id",
    "last_trade_id",
    "closed",
    "source",
)
_TABLE = (
    "open_time",
    "exchange",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "vwap",
    "closed",
    "source",
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``candles`` command."""
    p = sub.add_parser("candles", parents=[common], help="read candles of a symbol")
    p.add_argument("symbol", help="e.g. BTCUSDT")
    p.add_argument("--interval", "-i", required=True, choices=INTERVAL_LABELS)
    p.add_argument(
        "--start", help="first open_time, inclusive (ISO 8601 UTC, or s, ms or µs since the epoch)"
    )
    p.add_argument(
        "--end", help="last open_time, exclusive (ISO 8601 UTC, or s, ms or µs since the epoch)"
    )
    p.add_argument("--exchange", help="one exchange (default: every exchange with candles)")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="merged",
        help="merged (default: batch for sealed days, stream otherwise), stream, batch",
    )
    p.add_argument(
        "--fill",
        action="store_true",
        help="fill empty windows (previous close, zero volume, marked filled)",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_candles)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _print(records: list[CandleRecord], fmt: str, filled: bool) -> None:
    rows = [r.to_json_dict(with_filled=filled) for r in records]
    out = sys.stdout
    if fmt == "json":
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return
    if fmt == "csv":
        fields = [*_FIELDS, "filled"] if filled else list(_FIELDS)
        w = csv.writer(out, lineterminator="\n")
        w.writerow(fields)
        for row in rows:
            w.writerow([_cell(row.get(f)) for f in fields])
        return
    cols = [*_TABLE, "filled"] if filled else list(_TABLE)
    cells = [cols]
    for row in rows:
        shown = dict(row, open_time=format_ms(row["open_time"]))
        cells.append([_cell(shown.get(c)) or "-" for c in cols])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    if len(cells) == 1:
        out.write("(no candles)\n")


def cmd_candles(args: argparse.Namespace, settings: Settings) -> int:
    """Print the candles of one symbol and interval."""
    symbol = normalize_symbol(args.symbol)
    if symbol is None:
        msg = f"bad symbol {args.symbol!r}: use letters and digits, e.g. BTCUSDT"
        raise CommandError(msg)
    exchange = None
    if args.exchange is not None:
        exchange = normalize_exchange(args.exchange)
        if exchange is None:
            msg = f"bad exchange {args.exchange!r}: use a lower-case name, e.g. binance"
            raise CommandError(msg)
    interval = Interval.parse(args.interval)
    start = parse_time(args.start, "--start") if args.start else None
    end = parse_time(args.end, "--end") if args.end else None
    if start is not None and end is not None and end <= start:
        msg = "--end must be after --start (--start is inclusive, --end exclusive)"
        raise CommandError(msg)
    client = connect_settings(settings)
    reader = reader_for(args.source, settings, client)
    records = reader.read(symbol, interval, exchange=exchange, start=start, end=end)
    if args.fill:
        exchanges = sorted(
            {r.candle.exchange for r in records} | ({exchange} if exchange else set())
        )
        previous: dict[str, CandleRecord | None] = {}
        if start is not None:
            previous = {ex: reader.previous(symbol, interval, ex, start) for ex in exchanges}
        records = fill_gaps(
            records,
            interval,
            start=start,
            end=end,
            previous=previous,
            closed_until_ms=closed_until(client, settings, symbol),
        )
    _print(records, args.format, args.fill)
    return 0
