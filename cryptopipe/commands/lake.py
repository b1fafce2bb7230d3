"""``cryptopipe lake import FILE... [--format F] [--symbol S] [--exchange E]``: into the lake."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

from batch.dump_fetch import (
    DEFAULT_BASE_URL,
    FAILED,
    KINDS,
    MARKETS,
    NOT_PUBLISHED,
    SKIPPED,
    DumpFetcher,
)
from batch.dump_import import (
    DEFAULT_MAX_REJECTED_SHARE,
    ImportRejectedError,
    ImportResult,
    import_dump,
    resolve_format,
)
from batch.klines_import import import_klines
from cryptopipe.errors import CommandError
from lake.layout import Lake
from marketdata.binance_dump import FORMAT_KLINES, IMPORT_FORMATS
from marketdata.parsing import normalize_exchange, normalize_symbol
from marketdata.settings import Settings
from marketdata.timeutil import day_of_ms, now_ms, parse_day


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
        help="load Binance's public dumps (trades, aggTrades, 1m klines; csv or zip) into the lake",
        description=(
            "Validate every row and write it to the lake: trades and aggregate trades to "
            "<lake>/trades/date=D/, klines to <lake>/klines/date=D/, rejected rows with their "
            "reasons to <lake>/rejects/. What a file wrote is named by exchange, symbol, kind "
            "and file name: the spot and the USD-M dump of a day live side by side, and "
            "re-importing a file replaces only what that file wrote (the summary says how many "
            "rows). A dump named like BTCUSDT-trades-2025-03-14.csv marks that day complete, so "
            "'batch run' treats it as sealed. A file none of whose rows fit its format, or with "
            "more rejected rows than --max-rejected-share, imports nothing and fails."
        ),
    )
    imp.add_argument("files", nargs="+", metavar="FILE", type=Path)
    imp.add_argument(
        "--format",
        default=None,
        choices=IMPORT_FORMATS,
        dest="fmt",
        help=(
            "binance-trades (spot or USD-M; binance-csv is the same), binance-aggtrades or "
            "binance-klines (default: what Binance's file name says: SYMBOL-trades-D, "
            "SYMBOL-aggTrades-D, SYMBOL-1m-D; else binance-trades)"
        ),
    )
    imp.add_argument(
        "--symbol", default=None, help="the symbol of every file (default: from the file name)"
    )
    imp.add_argument(
        "--exchange",
        default="binance",
        help="exchange, a market being an exchange of its own: binance (spot), binance-um "
        "(USD-M futures); default binance",
    )
    imp.add_argument(
        "--max-rejected-share",
        type=_share,
        default=DEFAULT_MAX_REJECTED_SHARE,
        metavar="X",
        help=(
            "fail (importing nothing) when more than this share of a file's rows is rejected; "
            f"default {DEFAULT_MAX_REJECTED_SHARE} (1%%), 1 accepts any share but all"
        ),
    )
    imp.set_defaults(func=cmd_import)

    fetch = lsub.add_parser(
        "fetch",
        parents=[common],
        help="download Binance's public daily dumps (data.binance.vision), verify, import",
        description=(
            "Download each day's dump of each symbol into <home>/downloads/binance/, check it "
            "against its .CHECKSUM (sha256), skip what is already there, resume partial "
            "downloads, then import it (unless --no-import). The market sets the exchange "
            "name: spot -> binance, um (USD-M futures) -> binance-um. Exit status 1 when a "
            "day is not published or a file fails; the others are still fetched."
        ),
    )
    fetch.add_argument("symbols", nargs="+", metavar="SYMBOL")
    fetch.add_argument(
        "--market",
        default="spot",
        help="spot (default) or um (USD-M futures); COIN-M is not supported",
    )
    fetch.add_argument("--kind", choices=tuple(KINDS), default="trades")
    fetch.add_argument("--from", dest="day_from", required=True, help="first UTC day, YYYY-MM-DD")
    fetch.add_argument("--to", dest="day_to", default=None, help="last UTC day (default: --from)")
    fetch.add_argument(
        "--base-url",
        default=None,
        help=f"where the dumps are (default CRYPTOPIPE_BINANCE_DATA_URL or {DEFAULT_BASE_URL})",
    )
    fetch.add_argument("--no-import", action="store_true", help="download and verify only")
    fetch.set_defaults(func=cmd_fetch)


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


def _share(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0.0 <= x <= 1.0:
        msg = f"{text!r} is not a share between 0 and 1 (e.g. 0.01 for 1%)"
        raise argparse.ArgumentTypeError(msg)
    return x


def _summary(res: ImportResult) -> str:
    days = ", ".join(f"{d.isoformat()}: {n:,}" for d, n in sorted(res.trades_per_day.items()))
    sealed = ", ".join(d.isoformat() for d in res.sealed_days) or "none"
    what = f"{res.trades:,} trades"
    if res.trade_count != res.trades:
        what = f"{res.trades:,} aggregate trades ({res.trade_count:,} trades)"
    replaced = (
        f", replaced {res.replaced_rows:,} rows of its earlier import" if res.replaced_rows else ""
    )
    return (
        f"{res.path.name}: {res.exchange} {res.symbol}, {what}, {res.rejected:,} rejected, "
        f"{res.skipped:,} skipped{replaced} in {res.seconds:.1f} s (per day: {days or 'none'}; "
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
    failed = 0
    for path in args.files:
        fmt = resolve_format(path, args.fmt)
        progress = _Progress(path.name)
        try:
            if fmt == FORMAT_KLINES:
                line = import_klines(
                    lake,
                    path,
                    symbol=args.symbol,
                    exchange=exchange,
                    max_rejected_share=args.max_rejected_share,
                ).summary()
            else:
                line = _summary(
                    import_dump(
                        lake,
                        path,
                        fmt=fmt,
                        symbol=args.symbol,
                        exchange=exchange,
                        known_symbols=settings.known_symbols,
                        progress=progress,
                        max_rejected_share=args.max_rejected_share,
                    )
                )
        except ImportRejectedError as exc:
            if len(args.files) == 1:
                raise CommandError(str(exc)) from None
            print(f"cryptopipe: error: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        finally:
            progress.finish()
        print(line, flush=True)
    if failed:
        msg = f"{failed} of {len(args.files)} files imported nothing (see above)"
        raise CommandError(msg)
    return 0


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch each symbol's dumps for each day, then import them; a line per file."""
    if args.market == "cm":
        msg = (
            "--market cm: COIN-M futures dumps count quantities in contracts, not the base "
            "asset, which the pipeline does not support; use spot or um"
        )
        raise CommandError(msg)
    if args.market not in MARKETS:
        msg = f"--market {args.market!r}: use spot or um (USD-M futures)"
        raise CommandError(msg)
    first = parse_day(args.day_from)
    last = parse_day(args.day_to) if args.day_to else first
    today = day_of_ms(now_ms())
    if last < first:
        msg = f"--to {last} is before --from {first}"
        raise CommandError(msg)
    if last >= today:
        msg = f"--to {last}: Binance publishes a day's dump after the day ends (today is {today})"
        raise CommandError(msg)
    symbols = []
    for s in args.symbols:
        sym = normalize_symbol(s)
        if sym is None:
            msg = f"{s!r} is not a symbol (e.g. BTCUSDT)"
            raise CommandError(msg)
        symbols.append(sym)
    base = args.base_url or settings.binance_data_url
    fetcher = DumpFetcher(base, settings.home / "downloads", progress=sys.stderr.isatty())
    exchange = MARKETS[args.market][1]
    fmt = KINDS[args.kind][1]
    lake = Lake(settings.lake)
    counts: dict[str, int] = {}
    bad = 0
    days = [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]
    for sym in symbols:
        for day in days:
            out = fetcher.fetch(args.market, args.kind, sym, day)
            counts[out.status] = counts.get(out.status, 0) + 1
            label = f"{sym} {day} {args.market} {args.kind}"
            if out.status in (NOT_PUBLISHED, FAILED):
                bad += 1
                print(f"{label}: {out.status.replace('_', ' ')}: {out.detail}", flush=True)
                continue
            what = (
                "skipped, already downloaded"
                if out.status == SKIPPED
                else (
                    f"downloaded {out.bytes:,} bytes"
                    + (f" (resumed at {out.resumed_from:,})" if out.resumed_from else "")
                )
            )
            print(f"{label}: {what}, verified: {out.path}", flush=True)
            if args.no_import:
                continue
            try:
                if fmt == FORMAT_KLINES:
                    line = import_klines(lake, out.path, exchange=exchange).summary()
                else:
                    res = import_dump(
                        lake,
                        out.path,
                        fmt=fmt,
                        exchange=exchange,
                        known_symbols=settings.known_symbols,
                    )
                    line = _summary(res)
            except ValueError as exc:  # refused or too many rejected rows
                bad += 1
                counts["import_failed"] = counts.get("import_failed", 0) + 1
                print(f"{label}: import failed: {exc}", flush=True)
                continue
            print(f"  imported: {line}", flush=True)
    totals = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(counts.items()))
    print(f"fetch: {len(symbols) * len(days)} files: {totals}", flush=True)
    return 1 if bad else 0
