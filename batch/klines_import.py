"""``cryptopipe lake import --format binance-klines``: Binance's 1m klines into ``klines/``.

A kline dump is small (1,440 rows a day per symbol), so every row goes through
:func:`marketdata.binance_klines.parse_kline_row`; no fast path is needed. Rows go
to ``klines/date=D/import~<source>~<first line>~<last line>.parquet`` by the UTC day
of their open time, rejected rows to ``rejects/`` with their reason, like trade
imports (:mod:`batch.dump_import`), under the same rules: what a file wrote is named
by its :class:`lake.layout.ImportSource` (kind ``klines``), a re-import replaces only
that, a file of another format is refused naming the one it looks like, and too many
rejected rows import nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from batch.dump_import import (
    DEFAULT_MAX_REJECTED_SHARE,
    ImportFormatError,
    ImportRejectedError,
    ImportResult,
    Progress,
    data_rows,
    earlier_files,
    import_source,
    refusal,
    write_rejects,
)
from lake.klines import klines_table
from lake.layout import KLINES_DIR, REJECTS_DIR, Lake
from lake.schemas import KLINES_SCHEMA
from lake.writer import AtomicParquetWriter
from marketdata.binance_dump import (
    FORMAT_KLINES,
    is_header,
    kline_interval_from_filename,
    open_dump,
)
from marketdata.binance_klines import Kline, parse_kline_row
from marketdata.timeutil import day_of_ms, now_ms
from marketdata.trade import Rejection

#: Lines between two progress calls.
PROGRESS_EVERY = 10_000


@dataclass
class KlinesImportResult:
    """What importing one kline dump did."""

    path: Path
    symbol: str
    exchange: str
    lines: int = 0
    klines: int = 0
    rejected: int = 0
    skipped: int = 0
    per_day: dict[date, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced_rows: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the command's output."""
        days = ", ".join(f"{d.isoformat()}: {n:,}" for d, n in sorted(self.per_day.items()))
        replaced = (
            f", replaced {self.replaced_rows:,} rows of its earlier import"
            if self.replaced_rows
            else ""
        )
        return (
            f"{self.path.name}: {self.exchange} {self.symbol}, {self.klines:,} klines (1m), "
            f"{self.rejected:,} rejected, {self.skipped:,} skipped{replaced} in "
            f"{self.seconds:.1f} s (per day: {days or 'none'})"
        )


def import_klines(
    lake: Lake | str,
    path: Path,
    *,
    symbol: str | None = None,
    exchange: str = "binance",
    max_rejected_share: float = DEFAULT_MAX_REJECTED_SHARE,
    clock: Callable[[], int] = now_ms,
    progress: Progress | None = None,
) -> KlinesImportResult:
    """Import one Binance 1m kline dump (csv or zip) into ``klines/``.

    Klines of each UTC day (of their open time) go to
    ``klines/date=D/import~<source>~<first line>~<last line>.parquet``, where
    ``source`` is the file's :class:`ImportSource` (exchange, symbol, ``klines``,
    stem); rejected rows to ``rejects/`` with their reasons. Importing the same file
    again replaces what its earlier import wrote (``replaced_rows`` says how many
    klines), and nothing else.

    Args:
        lake: the lake.
        path: the dump (``SYMBOL-1m-YYYY-MM-DD.csv`` or ``.zip``, or any name with
            ``symbol``).
        symbol: the symbol; default: from the file's name.
        exchange: the exchange (a market is an exchange name: ``binance-um``).
        max_rejected_share: more rejected rows than this share, or all of them,
            imports nothing and raises :class:`ImportRejectedError`.
        clock: now, ms (the day of a rejects file when nothing else tells).
        progress: called with (bytes done, bytes total, lines done).

    Raises:
        ImportFormatError: the name says another interval than 1m, or the content
            is in another format.
        ImportRejectedError: all rows, or more than ``max_rejected_share``, rejected.
        ValueError: no symbol, or a bad exchange name.
        FileNotFoundError: no such file.

    """
    started = time.monotonic()
    lk = lake if isinstance(lake, Lake) else Lake(lake)
    interval = kline_interval_from_filename(path)
    if interval is not None and interval != "1m":
        msg = (
            f"{path.name} holds {interval} klines: only 1m klines are imported (they are "
            "compared with the batch's 1m candles); fetch the SYMBOL-1m-DAY files"
        )
        raise ImportFormatError(msg)
    source = import_source(path, FORMAT_KLINES, symbol, exchange)
    sym, ex = source.symbol, source.exchange
    result = KlinesImportResult(path, sym, ex)
    by_day: dict[date, list[tuple[int, Kline]]] = {}
    rejects: list[tuple[int, Rejection]] = []
    f, total = open_dump(path)
    done = 0
    with f:
        for lineno, raw in enumerate(f, 1):
            result.lines += 1
            done += len(raw)
            if progress is not None and lineno % PROGRESS_EVERY == 0:
                progress(done, total, lineno)
            line = raw.rstrip(b"\r\n")
            if not line.strip() or is_header(lineno, line):
                result.skipped += 1
                continue
            res = parse_kline_row(line, exchange=ex, symbol=sym)
            if isinstance(res, Rejection):
                rejects.append((lineno, res))
            else:
                by_day.setdefault(day_of_ms(res.open_time), []).append((lineno, res))
    if progress is not None:
        progress(total, total, result.lines)
    result.klines = sum(len(v) for v in by_day.values())
    result.rejected = len(rejects)
    result.reasons = Counter(r.reason for _, r in rejects)
    why = refusal(path.name, FORMAT_KLINES, result.klines, rejects, max_rejected_share)
    if why is not None and set(result.reasons) == {"bad_kline:close_time"}:
        why += (
            " Every rejected row closes more than 59.999 s after it opens: klines of "
            "another interval than 1m? Only 1m klines are imported."
        )
    if why is not None:
        if rejects:
            write_rejects(lk, path, source, rejects, by_day, clock)
        shim = ImportResult(path, sym, ex, FORMAT_KLINES, rejected=result.rejected)
        shim.reasons = result.reasons
        raise ImportRejectedError(why, shim)
    earlier = earlier_files(lk, source, (KLINES_DIR, REJECTS_DIR))
    result.replaced_rows = sum(data_rows(lk, p) for p in earlier)
    for day, rows in sorted(by_day.items()):
        writer = AtomicParquetWriter(lk, lk.klines_dir(day), KLINES_SCHEMA)
        writer.write(klines_table([k for _, k in rows]))
        result.files.append(writer.commit(source.rows(rows[0][0], rows[-1][0]).file_name))
        result.per_day[day] = len(rows)
    if rejects:
        result.files.append(write_rejects(lk, path, source, rejects, by_day, clock))
    kept = set(result.files)
    for p in earlier:
        if p not in kept:
            lk.remove(p)
    result.removed = earlier
    result.seconds = time.monotonic() - started
    return result
