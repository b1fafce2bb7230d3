"""``cryptopipe lake import FILE... --format binance-csv [--symbol S]``: history into the lake."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from batch.dump_import import ImportResult, import_dump
from cryptopipe.errors import CommandError
from lake.layout import Lake
from marketdata.parsing import FORMAT_CSV, normalize_exchange
from marketdata.settings import Settings


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``lake`` command group."""
    lake = sub.add_parser(
        "lake", parents=[common], help="the Parquet lake (history without streaming)"
    )
    lsub = lake.add_subparsers(dest="lake", metavar="ACTION")
    lsub.required = True
    imp = lsub.add_parser(
        "import",
        parents=[common],
        help="load Binance daily trade dumps (csv or zip) straight into the lake",
        description=(
            "Validate every row with the domain parser and write the trades to "
            "<lake>/trades/date=D/ (rejected rows, with their reasons, to <lake>/rejects/). "
            "Re-importing a file replaces what it wrote before. A dump named like "
            "BTCUSDT-trades-2025-03-14.csv marks that day complete, so 'batch run' treats "
            "it as sealed."
        ),
    )
    imp.add_argument("files", nargs="+", metavar="FILE", type=Path)
    imp.add_argument(
        "--format",
        default=FORMAT_CSV,
        choices=(FORMAT_CSV,),
        dest="fmt",
        help="input format (Binance public trade dumps)",
    )
    imp.add_argument(
        "--symbol", default=None, help="the symbol of every file (default: from the file name)"
    )
    imp.add_argument("--exchange", default="binance", help="exchange (default binance)")
    imp.set_defaults(func=cmd_import)


class _Progress:
    """A one-line progress report on stderr, only when stderr is a terminal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, lines: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        rate = lines / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.name}: {pct:5.1f}%  {lines:,} lines  {rate:,.0f} lines/s ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _summary(res: ImportResult) -> str:
    days = ", ".join(f"{d.isoformat()}: {n:,}" for d, n in sorted(res.trades_per_day.items()))
    sealed = ", ".join(d.isoformat() for d in res.sealed_days) or "none"
    return (
        f"{res.path.name}: {res.symbol}, {res.trades:,} trades, {res.rejected:,} rejected, "
        f"{res.skipped:,} skipped in {res.seconds:.1f} s (per day: {days or 'none'}; "
        f"complete days: {sealed})"
    )


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import dumps one after the other; a summary line per file on stdout."""
    exchange = normalize_exchange(args.exchange)
    if exchange is None:
        msg = f"--exchange {args.exchange!r} is not a valid exchange name (e.g. binance)"
        raise CommandError(msg)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        msg = f"no such file: {', '.join(missing)}"
        raise CommandError(msg)
    lake = Lake(settings.lake)
    for path in args.files:
        progress = _Progress(path.name)
        try:
            res = import_dump(
                lake,
                path,
                symbol=args.symbol,
                exchange=exchange,
                known_symbols=settings.known_symbols,
                progress=progress,
            )
        finally:
            progress.finish()
        print(_summary(res), flush=True)
    return 0
