"""``cryptopipe lake import FILE...`` and ``cryptopipe lake fetch SYMBOL...``: into the lake."""

from __future__ import annotations

import argparse
import sys
import zipfile
from datetime import date
from pathlib import Path

from tqdm import tqdm

from batch.dump_fetch import (
    DEFAULT_BASE_URL,
    KINDS,
    MARKETS,
    DumpFetcher,
    FetchOutcome,
    Status,
    bars_cleared,
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

    _register_fetch(lsub, common)


class _Progress:
    """A file's import progress on stderr, only when it is a terminal (tqdm)."""

    def __init__(self, name: str) -> None:
        self.bar = tqdm(desc=name, unit="B", unit_scale=True, disable=None, leave=False)

    def __call__(self, done: int, total: int, lines: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.set_postfix_str(f"{lines:,} lines", refresh=False)
        self.bar.update(done - self.bar.n)

    def finish(self) -> None:
        self.bar.close()


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
                    progress=progress,
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


# -- lake fetch ---------------------------------------------------------------------

#: ``lake fetch``'s exit status when no file failed but some day is not published.
EXIT_NOT_PUBLISHED = 3


def _register_fetch(
    lsub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    fetch = lsub.add_parser(
        "fetch",
        parents=[common],
        help="download Binance's public daily dumps (data.binance.vision), verify, import",
        description=(
            "Download each symbol's dump of each day into <home>/downloads/binance/<market>/"
            "<kind>/<SYMBOL>/, check it against its .CHECKSUM (sha256), skip what is already "
            "there and verifies, resume partial downloads, then import it into the lake "
            "(unless --no-import). The market sets the exchange name: spot -> binance, um "
            "(USD-M futures) -> binance-um. A day that is not published or a file that fails "
            "does not stop the others. Exit status: 0 all done; 1 a download, a checksum or "
            "an import failed; 3 nothing failed but some day is not published; 2 a bad "
            "argument."
        ),
    )
    fetch.add_argument("symbols", nargs="+", metavar="SYMBOL")
    fetch.add_argument(
        "--market",
        required=True,
        metavar="spot|um",
        help="spot, or um (USD-M futures); COIN-M (cm) is not supported",
    )
    fetch.add_argument("--kind", required=True, choices=tuple(KINDS))
    fetch.add_argument(
        "--from", dest="day_from", required=True, metavar="D", help="first UTC day, YYYY-MM-DD"
    )
    fetch.add_argument(
        "--to",
        dest="day_to",
        default=None,
        metavar="D",
        help="last UTC day, inclusive (default: --from)",
    )
    fetch.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"where the dumps are (default: CRYPTOPIPE_BINANCE_DATA_URL, else {DEFAULT_BASE_URL})",
    )
    fetch.add_argument("--no-import", action="store_true", help="download and verify only")
    fetch.set_defaults(func=cmd_fetch)


def import_fetched(
    kind: str,
    lake: Lake,
    path: Path,
    *,
    symbol: str,
    exchange: str,
    known_symbols: frozenset[str] | None = None,
) -> str:
    """Import one fetched file with the lake importer of its kind; its summary line.

    The one place mapping a ``--kind`` to an importer: klines to
    :func:`batch.klines_import.import_klines`, trades and aggregate trades to
    :func:`batch.dump_import.import_dump` in the kind's format.

    Raises:
        ValueError: the importer refused the file (see the importers).

    """
    fmt = KINDS[kind].fmt
    if fmt == FORMAT_KLINES:
        return import_klines(lake, path, symbol=symbol, exchange=exchange).summary()
    res = import_dump(
        lake, path, fmt=fmt, symbol=symbol, exchange=exchange, known_symbols=known_symbols
    )
    return _summary(res)


def _fetch_days(args: argparse.Namespace) -> list[date]:
    first = parse_day(args.day_from, "--from")
    last = parse_day(args.day_to, "--to") if args.day_to is not None else first
    if last < first:
        msg = f"--to {last} is before --from {first}"
        raise CommandError(msg)
    today = day_of_ms(now_ms())
    if last >= today:
        opt = "--to" if args.day_to is not None else "--from"
        when = "is today" if last == today else "is in the future"
        msg = f"{opt} {last} {when}: Binance publishes a day's dump after the day ends (UTC)"
        raise CommandError(msg)
    return [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]


def _fetch_symbols(args: argparse.Namespace, settings: Settings) -> list[str]:
    symbols: list[str] = []
    for s in args.symbols:
        sym = normalize_symbol(s)
        if sym is None:
            msg = f"{s!r} is not a symbol (e.g. BTCUSDT)"
            raise CommandError(msg)
        known = settings.known_symbols
        if not args.no_import and known is not None and sym not in known:
            msg = (
                f"{sym} is not in CRYPTOPIPE_SYMBOLS ({', '.join(sorted(known))}): its rows "
                "would all be rejected as unknown_symbol; add it, or use --no-import"
            )
            raise CommandError(msg)
        if sym not in symbols:
            symbols.append(sym)
    return symbols


def _say(line: str) -> None:
    """A line on stdout, clearing any progress bar on the terminal first."""
    with bars_cleared(sys.stdout):
        print(line, flush=True)


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _fetched_line(out: FetchOutcome) -> str:
    if out.status is Status.SKIPPED:
        return f"{out.bytes:,} bytes, sha256 verified, {out.path}"
    notes = [f"resumed at byte {n:,}" for n in out.resumed_at]
    if out.restarted:
        notes.append("downloaded again from the first byte")
    if out.replaced_stale:
        notes.append("replaced a download that no longer matched its .CHECKSUM")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"{out.bytes:,} bytes{extra}, sha256 verified, {out.path}"


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch each symbol's dump of each day, then import it; a line per file, then totals."""
    if args.market == "cm":
        msg = (
            "--market cm: COIN-M futures are not supported: their dumps count quantities in "
            "contracts of a fixed USD value, not in the base asset, so volumes and VWAPs would "
            "not mean what they mean for spot and um"
        )
        raise CommandError(msg)
    if args.market not in MARKETS:
        msg = f"--market {args.market!r}: use spot, or um (USD-M futures)"
        raise CommandError(msg)
    days = _fetch_days(args)
    symbols = _fetch_symbols(args, settings)
    base = args.base_url or settings.binance_data_url
    fetcher = DumpFetcher(
        base, settings.home / "downloads", progress=sys.stderr if sys.stderr.isatty() else None
    )
    exchange = MARKETS[args.market].exchange
    lake = Lake(settings.lake)
    counts = dict.fromkeys(Status, 0)
    imported = import_failed = 0
    for out in fetcher.fetch_all(args.market, args.kind, symbols, days):
        counts[out.status] += 1
        what = f"{out.symbol} {out.day} ({args.market} {args.kind})"
        if out.status is Status.NOT_PUBLISHED:
            _say(f"not published: {what}: {out.detail}, {out.url}")
            continue
        if out.status is Status.FAILED:
            _say(f"failed: {what}: {out.detail}")
            continue
        status = "skipped, already downloaded" if out.status is Status.SKIPPED else "downloaded"
        _say(f"{status}: {what}: {_fetched_line(out)}")
        if args.no_import:
            continue
        try:
            line = import_fetched(
                args.kind,
                lake,
                out.path,
                symbol=out.symbol,
                exchange=exchange,
                known_symbols=settings.known_symbols,
            )
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            import_failed += 1
            _say(f"import failed: {what}: {exc}")
            continue
        imported += 1
        _say(f"imported: {what}: {line}")
    files = len(symbols) * len(days)
    imports = (
        "not imported (--no-import)"
        if args.no_import
        else f"{imported} imported, {import_failed} import failed"
    )
    _say(
        f"fetch: {files} files ({_n(len(symbols), 'symbol')} x {_n(len(days), 'day')}, "
        f"{args.market} "
        f"{args.kind}): {counts[Status.DOWNLOADED]} downloaded, {counts[Status.SKIPPED]} "
        f"skipped, {counts[Status.NOT_PUBLISHED]} not published, {counts[Status.FAILED]} "
        f"failed; {imports}"
    )
    failed = counts[Status.FAILED] + import_failed
    if failed:
        msg = f"{failed} of {files} files failed (see above)"
        raise CommandError(msg, status=1)
    if counts[Status.NOT_PUBLISHED]:
        msg = f"{counts[Status.NOT_PUBLISHED]} of {files} files not published (see above)"
        raise CommandError(msg, status=EXIT_NOT_PUBLISHED)
    return 0
