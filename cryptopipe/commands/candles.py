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
from marketdata.interval import INTERVAL_LABELS
from marketdata.records import SOURCES, CandleRecord
from marketdata.settings import Settings
from marketdata.timeutil import format_ms
from redisstore.conn import connect_settings
from serving.query import CandleQuery, QueryError, candles, records_json

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
    p.add_argument(
        "--follow",
        action="store_true",
        help="then print each candle as it closes, until Ctrl-C (the stream's candles)",
    )
    p.set_defaults(func=cmd_candles)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _print(records: list[CandleRecord], fmt: str, filled: bool, *, header: bool = True) -> None:
    rows = records_json(records, filled=filled)
    out = sys.stdout
    if fmt == "json":
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return
    if fmt == "csv":
        fields = [*_FIELDS, "filled"] if filled else list(_FIELDS)
        w = csv.writer(out, lineterminator="\n")
        if header:
            w.writerow(fields)
        for row in rows:
            w.writerow([_cell(row.get(f)) for f in fields])
        return
    cols = [*_TABLE, "filled"] if filled else list(_TABLE)
    cells = [cols] if header else []
    for row in rows:
        shown = dict(row, open_time=format_ms(row["open_time"]))
        cells.append([_cell(shown.get(c)) or "-" for c in cols])
    widths = [max(len(r[i]) for r in [cols, *cells]) for i in range(len(cols))]
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    if header and len(cells) == 1:
        out.write("(no candles)\n")


def cmd_candles(args: argparse.Namespace, settings: Settings) -> int:
    """Print the candles of one symbol and interval."""
    try:
        q = CandleQuery.parse(
            args.symbol,
            args.interval,
            exchange=args.exchange,
            start=args.start,
            end=args.end,
            source=args.source,
            fill=args.fill,
            prefix="--",
        )
        records = candles(q, settings, connect_settings(settings), strict=not args.follow)
    except QueryError as exc:
        raise CommandError(str(exc)) from exc
    _print(records, args.format, args.fill)
    if args.follow:
        follow(q, records, args.format, connect_settings(settings))
    return 0


def follow(q: CandleQuery, shown: list[CandleRecord], fmt: str, client: Any) -> None:
    """Print each candle of the series as it closes (polled every 0.5 s) until a signal."""
    from cryptopipe.signals import stop_event_on_signals
    from serving.stream import StreamCandleReader

    stop = stop_event_on_signals()
    reader = StreamCandleReader(client)
    done = {r.candle.key for r in shown if r.closed}
    sys.stdout.flush()
    while not stop.is_set():
        fresh = [
            r
            for r in reader.latest(q.symbol, q.interval, exchange=q.exchange, closed=5)
            if r.closed and r.candle.key not in done
        ]
        if fresh:
            done.update(r.candle.key for r in fresh)
            _print(fresh, fmt, False, header=False)
            sys.stdout.flush()
        stop.wait(0.5)
