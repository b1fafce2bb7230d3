"""``cryptopipe reconcile --date D [--format json|table] [--fail-on-unexplained]``."""

from __future__ import annotations

import argparse
import json

from batch.reconcile import BatchNotRunError, reconcile_day
from cryptopipe.errors import CommandError
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
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--worst", type=int, default=20, help="rows of the worst differences to show")
    p.add_argument(
        "--fail-on-unexplained",
        action="store_true",
        help="exit 1 when any difference is unexplained (for scripts)",
    )
    p.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """Reconcile one day and print the outcome."""
    day = parse_day(args.date)
    try:
        result, summary = reconcile_day(settings, day, connect_settings(settings), worst=args.worst)
    except BatchNotRunError as exc:
        raise CommandError(str(exc)) from None
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
    return 1 if args.fail_on_unexplained and not result.ok else 0
