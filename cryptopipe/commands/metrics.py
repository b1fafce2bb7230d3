"""``cryptopipe metrics SYMBOL [--exchange E] [--format json|table]``: the latest metrics.

With them, the spreads the series is in (docs/architecture.md, "Instruments and
spreads"): in JSON a list under ``spreads``, in the table one line each.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cryptopipe.errors import CommandError
from marketdata.indicators import METRIC_FIELDS
from marketdata.parsing import normalize_exchange, normalize_symbol
from marketdata.settings import Settings
from marketdata.timeutil import format_ms
from redisstore.conn import connect_settings
from serving.metrics import (
    candles_seen,
    metrics_exchanges,
    read_metrics,
    read_spreads,
    warming_up,
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``metrics`` command."""
    p = sub.add_parser("metrics", parents=[common], help="the latest indicators of a symbol")
    p.add_argument("symbol", help="e.g. BTCUSDT")
    p.add_argument(
        "--exchange",
        default=None,
        help="exchange (default: the only one with metrics, else binance)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_metrics)


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    """Print the latest metrics."""
    symbol = normalize_symbol(args.symbol)
    if symbol is None:
        msg = f"bad symbol {args.symbol!r}: use letters and digits like BTCUSDT"
        raise CommandError(msg)
    client = connect_settings(settings)
    exchange = normalize_exchange(args.exchange) if args.exchange else None
    if exchange is None:
        found = metrics_exchanges(client, symbol)
        exchange = found[0] if len(found) == 1 else "binance"
    m = read_metrics(client, symbol, exchange)
    if m is None:
        msg = (
            f"no metrics for {symbol} on {exchange} yet: the metrics flow writes them once "
            "closed 1m candles arrive (cryptopipe stream status metrics)"
        )
        raise CommandError(msg, status=1)
    record: dict[str, Any] = {k: m.get(k) for k in METRIC_FIELDS}
    spreads = read_spreads(client, settings.spread_rules, symbol, [exchange])
    if args.format == "json":
        print(json.dumps({**record, "spreads": spreads}))
        return 0
    for k in METRIC_FIELDS:
        v = record[k]
        shown = "-" if v is None else (format_ms(v) if k == "open_time" else v)
        print(f"{k:16} {shown}")
    for s in spreads:
        print(
            f"spread           {s['a']} - {s['b']} = {s['spread']} {s['base']} in "
            f"{s['a_quote']}/{s['b_quote']} ({s['a_close']} at {format_ms(s['a_open_time'])}, "
            f"{s['b_close']} at {format_ms(s['b_open_time'])})"
        )
    seen = candles_seen(client, symbol, exchange)
    if waiting := warming_up(m, seen):
        needs = ", ".join(f"{k} needs {n}" for k, n in waiting.items())
        print(f"\nwarming up after {seen} closed 1m candles: {needs}")
    return 0
