"""``cryptopipe reconcile --date D [--against stream|klines] [--exchange E] [--format F]``."""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import Any

from batch.reconcile import (
    BatchNotRunError,
    NoKlinesError,
    StreamCandlesTrimmedError,
    reconcile_day,
    reconcile_klines_day,
)
from cryptopipe.errors import CommandError
from lake.published import NotPublishableError, publish
from marketdata.binance_klines import OUTCOMES as KLINE_OUTCOMES
from marketdata.parsing import normalize_exchange
from marketdata.reconcile import OUTCOMES
from marketdata.settings import Settings
from marketdata.timeutil import format_ms, parse_day
from redisstore.conn import connect_settings


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``reconcile`` command."""
    p = sub.add_parser(
        "reconcile", parents=[common], help="prove the stream's candles equal the batch's"
    )
    p.add_argument("--date", required=True, help="the UTC day, YYYY-MM-DD")
    p.add_argument(
        "--against",
        choices=("stream", "klines"),
        default="stream",
        help="stream: the speed layer's candles (default); klines: the exchange's own 1m "
        "candles imported with 'lake import' (needs no Redis)",
    )
    p.add_argument(
        "--exchange",
        default=None,
        help="with --against klines: only this exchange's klines (default: every exchange "
        "with klines that day)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--worst", type=int, default=20, help="rows of the worst differences to show")
    p.add_argument(
        "--fail-on-unexplained",
        action="store_true",
        help="exit 1 when any difference is unexplained (for scripts)",
    )
    p.add_argument(
        "--accept-batch",
        action="store_true",
        help="serve the day from the batch even with unexplained differences (you read the "
        "report and hold the batch right, e.g. the stream lost data); recorded in the lake",
    )
    p.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Reconcile one day and print the outcome."""
    day = parse_day(args.date, "--date")
    if args.accept_batch and args.against == "klines":
        msg = "--accept-batch goes with --against stream (klines decide nothing readers get)"
        raise CommandError(msg)
    if args.against == "klines":
        return _against_klines(args, settings, day)
    if args.exchange is not None:
        msg = "--exchange goes with --against klines (stream reconciliation covers every venue)"
        raise CommandError(msg)
    try:
        result, summary = reconcile_day(settings, day, connect_settings(settings), worst=args.worst)
    except (BatchNotRunError, StreamCandlesTrimmedError) as exc:
        raise CommandError(str(exc)) from None
    # Readers get the batch candles of the day only once they reconcile (lake.published).
    refused = _publish(settings, day, summary, accept=args.accept_batch)
    summary["served_from"] = "stream" if refused else "batch"
    if args.format == "json":
        print(json.dumps(summary))
    else:
        counts = "  ".join(f"{o}={summary['counts'][o]}" for o in OUTCOMES)
        print(f"{day}: {counts}")
        print(
            f"stream candles {summary['stream_candles']}, batch candles "
            f"{summary['batch_candles']}, late trades {summary['late_trades']}"
        )
        for d in summary["worst"]:
            if d["outcome"] == "explained_by_late":
                continue
            print(
                f"  {d['outcome']:18} {d['exchange']}:{d['symbol']} {d['interval']:>3} "
                f"{format_ms(d['open_time'])} differs in {','.join(d['differing']) or '-'} "
                f"quote gap {d['quote_volume_gap']}"
            )
        print(
            "OK: every difference is explained"
            if result.ok
            else f"UNEXPLAINED: {result.unexplained} (report in the lake)"
        )
        if refused:
            print(f"readers keep the stream's candles of {day}: {refused}")
        else:
            print(f"readers now get the batch candles of {day}")
    return 1 if args.fail_on_unexplained and not result.ok else 0


def _publish(settings: Settings, day: date, summary: dict[str, Any], *, accept: bool) -> str | None:
    """Serve ``day`` from the batch if the reconciliation allows it; else say why not."""
    try:
        publish(settings, day, summary, accept=accept)
    except NotPublishableError as exc:
        return str(exc)
    return None


def _against_klines(args: argparse.Namespace, settings: Settings, day: date) -> int:
    exchange = None
    if args.exchange is not None:
        exchange = normalize_exchange(args.exchange)
        if exchange is None:
            msg = f"--exchange {args.exchange!r} is not a valid exchange name (e.g. binance)"
            raise CommandError(msg)
    try:
        result, summary = reconcile_klines_day(settings, day, exchange=exchange, worst=args.worst)
    except (BatchNotRunError, NoKlinesError) as exc:
        raise CommandError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(summary))
    else:
        counts = "  ".join(f"{o}={summary[o]}" for o in KLINE_OUTCOMES)
        print(f"{day} against klines: {counts}  (empty minutes {summary['empty_klines']})")
        print(f"exchanges: {', '.join(summary['exchanges'])}")
        print(f"rule: {summary['quote_volume_rule']}")
        print(f"rule: {summary['taker_buy_quote_volume_rule']}")
        if summary["symbols_without_klines"]:
            print(f"not compared (no klines): {', '.join(summary['symbols_without_klines'])}")
        if summary["symbols_without_candles"]:
            print(
                "klines but no batch candles (import their trades and re-run the batch): "
                + ", ".join(summary["symbols_without_candles"])
            )
        for d in summary["worst"]:
            print(
                f"  {d['outcome']:17} {d['exchange']}:{d['symbol']} {format_ms(d['open_time'])} "
                f"differs in {','.join(d['differing']) or '-'}"
            )
        print(
            "OK: every minute matches the exchange's klines"
            if result.ok
            else f"DIFFERENT: {len(result.differences)} minutes (report in the lake)"
        )
    return 1 if args.fail_on_unexplained and not result.ok else 0
