r"""``cryptopipe lake import``: Binance's trade and aggregate trade dumps into the lake.

A dump (``BTCUSDT-trades-2025-03-14.csv``, or the ``.zip`` holding it) has the
columns ``trade id, price, qty, quoteQty, time, isBuyerMaker[, isBestMatch]``
(USD-M futures after a header line); ``time`` is µs since 2025 and ms before. An
aggregate trade dump (``BTCUSDT-aggTrades-2025-03-14``, format
``binance-aggtrades``) has ``agg id, price, qty, first id, last id, time,
isBuyerMaker[, isBestMatch]``; each row is stored as one trade of ``span = last -
first + 1`` (see :class:`marketdata.trade.Trade`). Klines go elsewhere
(:mod:`batch.klines_import`).

What one import of one file writes is named by its :class:`lake.layout.ImportSource`
(exchange, symbol, kind, file stem): imports of the spot and the USD-M dump of one
day, or of two ``trades.csv`` of different symbols, live side by side, and
re-importing a file replaces exactly what that file wrote before (the result says
how many rows). An import whose rows are all rejected, or more than
``max_rejected_share`` of them, commits no trades (:class:`ImportRejectedError`);
a file whose content is in another format than the one asked for is refused
before anything is written (:class:`ImportFormatError`), naming the format it
looks like.

Every line gets exactly the outcome :func:`marketdata.parsing.parse_message` gives
it (format ``binance-csv``), but most lines never reach Python: a whole block of
lines is matched by one RE2 expression (:data:`FAST_LINE`) that only admits lines
whose every column is in the parser's accepted form with no room for doubt (ASCII
digits, no whitespace, no signs or exponents, at most 8 fractional digits, integer
parts short enough to be in range), and their values are converted and
range-checked column by column with the parser's rules. Any other line, and any
matched line that fails a range check, goes through ``parse_message`` itself, so
rejections carry the parser's exact reason. Lines are split the way
``cryptopipe feed replay`` splits them: on ``\n``, trailing ``\r``/``\n``
removed, blank lines and a header line skipped.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake.arrow import decimal_array, rejects_table, trades_table
from lake.layout import (
    REJECTS_DIR,
    TRADES_DIR,
    ImportSource,
    Lake,
    SourceRange,
    import_marker_name,
    partition,
    write_import_marker,
)
from lake.schemas import MAX_LAKE_TRADE_ID, PRICE_TYPE, QUANTITY_TYPE, TRADES_SCHEMA
from lake.writer import AtomicParquetWriter, oversized_id_rejection
from marketdata.binance_dump import (
    FORMAT_AGGTRADES,
    FORMAT_KLINES,
    FORMAT_TRADES,
    FORMAT_TRADES_ALIAS,
    KIND_OF_FORMAT,
    coin_m_reason,
    covered_days,
    dump_stem,
    format_from_filename,
    is_header,
    open_dump,
    row_pattern,
    sniff,
    symbol_from_filename,
)
from marketdata.decimals import SCALE_DIGITS
from marketdata.parsing import (
    FORMAT_AGG_CSV,
    FORMAT_CSV,
    normalize_exchange,
    normalize_symbol,
    parse_message,
)
from marketdata.timeutil import (
    DAY_MS,
    MAX_EVENT_TIME_MS,
    MICROS_THRESHOLD,
    MIN_EVENT_TIME_MS,
    day_of_ms,
    now_ms,
)
from marketdata.trade import Rejection, Trade

#: A line the fast path takes: a row of :mod:`marketdata.binance_dump`'s grammar (the
#: speed layer's fast path accepts the same rows), then a trailing ``\r`` run and the
#: ``\n`` as the line end.
FAST_LINE = "^" + row_pattern(capture=False, exact_fraction=False) + r"\r*\n?$"
#: The same for aggregate trade rows.
FAST_AGG_LINE = "^" + row_pattern(capture=False, exact_fraction=False, aggregate=True) + r"\r*\n?$"
#: Bytes read per block; one block of trades is one Parquet row group.
DEFAULT_BLOCK_BYTES = 32 << 20
#: Largest share of rejected rows an import accepts unless told otherwise.
DEFAULT_MAX_REJECTED_SHARE = 0.01
#: Rejections an error message shows as examples.
EXAMPLES = 3


class ImportFormatError(ValueError):
    """The file is not in the format asked for (or in one the pipeline refuses)."""


class ImportRejectedError(ValueError):
    """Too many rows were rejected: no trades were committed.

    Attributes:
        result: what the import found (counts, reasons, examples).

    """

    def __init__(self, message: str, result: ImportResult) -> None:
        super().__init__(message)
        self.result = result


Progress = Callable[[int, int, int], None]  # (bytes done, bytes total, lines done)


# --------------------------------------------------------------------------- parsing


@dataclass
class ParsedBlock:
    """The outcome of a block of lines.

    ``trades`` has :data:`TRADES_SCHEMA` plus a ``line`` column (1-based line
    numbers), in line order; ``rejections`` pairs each rejection with its line.
    """

    trades: pa.Table
    lines: int = 0
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)
    skipped: int = 0
    slow: int = 0


def _lines_array(data: bytes) -> pa.Array:
    """Lines of ``data`` (each keeping its line feed) as a binary array, without copying."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))
    # 64-bit offsets: a block holding a single line longer than 2 GiB stays one line.
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    return pa.Array.from_buffers(
        pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


_POW10 = np.array([10**k for k in range(SCALE_DIGITS + 1)], dtype=np.int64)


def _e8_column(text: pa.Array) -> np.ndarray:
    # ``[0-9]{1,10}(\.[0-9]{1,8})?`` (the regex guarantees it): the digits without the
    # dot, times 10^(8 - fractional digits). At most 18 digits: fits int64.
    dot = pc.find_substring(text, ".").to_numpy()
    length = pc.utf8_length(text).to_numpy()
    frac = np.where(dot >= 0, length - dot - 1, 0)
    digits = pc.cast(pc.replace_substring(text, ".", ""), pa.int64()).to_numpy()
    return digits * _POW10[SCALE_DIGITS - frac]


def _fast(lines: pa.Array, *, aggregate: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices of lines proven valid, and their values; the rest need the parser."""
    pattern = FAST_AGG_LINE if aggregate else FAST_LINE
    matched = np.flatnonzero(pc.match_substring_regex(lines, pattern).to_numpy(False))
    if not len(matched):
        return matched, {}
    subset = lines if len(matched) == len(lines) else lines.take(pa.array(matched))
    text = pc.cast(subset, pa.large_string())  # ASCII: the regex says so
    cols = pc.split_pattern(text, ",")
    # Column positions: trades ``id,p,q,quote,time,maker``; aggregates
    # ``agg id,p,q,first,last,time,maker``.
    id_col, time_col, maker_col = (3, 5, 6) if aggregate else (0, 4, 5)
    trade_id = pc.cast(pc.list_element(cols, id_col), pa.int64()).to_numpy()
    price = _e8_column(pc.list_element(cols, 1))
    quantity = _e8_column(pc.list_element(cols, 2))
    raw_t = pc.cast(pc.list_element(cols, time_col), pa.int64()).to_numpy()
    event_time = np.where(raw_t >= MICROS_THRESHOLD, raw_t // 1000, raw_t)
    # true|True|false|False, possibly followed by the line end.
    maker = pc.starts_with(pc.utf8_lower(pc.list_element(cols, maker_col)), "t").to_numpy(False)
    ok = (
        (price > 0)
        & (quantity > 0)
        & (event_time >= MIN_EVENT_TIME_MS)
        & (event_time < MAX_EVENT_TIME_MS)
    )
    out = {
        "trade_id": trade_id,
        "price": price,
        "quantity": quantity,
        "event_time": event_time,
        "is_buyer_maker": maker,
    }
    if aggregate:
        last = pc.cast(pc.list_element(cols, 4), pa.int64()).to_numpy()
        out["span"] = last - trade_id + 1
        ok &= last >= trade_id  # the parser rejects the others with their reason
    if not ok.all():
        keep = np.flatnonzero(ok)
        matched = matched[keep]
        out = {k: v[keep] for k, v in out.items()}
    return matched, out


def _table(n: int, exchange: str, symbol: str, cols: dict[str, np.ndarray]) -> pa.Table:
    zeros = np.zeros(n, dtype=np.int32)
    span = cols.get("span")
    return pa.Table.from_arrays(
        [
            pa.array([exchange], pa.string()).take(zeros),
            pa.array([symbol], pa.string()).take(zeros),
            pa.array(cols["trade_id"], pa.int64()),
            decimal_array(cols["price"], PRICE_TYPE),
            decimal_array(cols["quantity"], QUANTITY_TYPE),
            pa.array(cols["event_time"], pa.int64()),
            pa.array(cols["is_buyer_maker"], pa.bool_()),
            pa.nulls(n, pa.int64()) if span is None else pa.array(span, pa.int64()),
        ],
        schema=TRADES_SCHEMA,
    )


def parse_block(
    data: bytes,
    first_line: int,
    *,
    exchange: str,
    symbol: str,
    known_symbols: Collection[str] | None = None,
    fast: bool = True,
    fmt: str = FORMAT_TRADES,
) -> ParsedBlock:
    """Parse whole lines of a dump (``data`` ends at a line end or at the file's end).

    Args:
        data: the lines' bytes.
        first_line: the 1-based line number of the first line in the file.
        exchange: the exchange of the dump (``binance``).
        symbol: the dump's symbol.
        known_symbols: as for :func:`parse_message`.
        fast: use the vectorised path; ``False`` sends every line to the parser
            (the reference the tests compare with).
        fmt: ``binance-trades`` (or ``binance-csv``) or ``binance-aggtrades``.

    Returns:
        The trades (with their line numbers) and rejections, with the same outcome
        per line as ``parse_message(line, fmt=..., ...)`` (``binance-csv`` or
        ``binance-aggtrades``).

    """
    aggregate = fmt == FORMAT_AGGTRADES
    parser_fmt = FORMAT_AGG_CSV if aggregate else FORMAT_CSV
    lines = _lines_array(data)
    n = len(lines)
    sym = normalize_symbol(symbol)
    ex = normalize_exchange(exchange)
    usable = (
        fast
        and sym is not None
        and ex is not None
        and (known_symbols is None or sym in known_symbols)
    )
    if usable:
        matched, cols = _fast(lines, aggregate=aggregate)
    else:
        matched, cols = np.empty(0, dtype=np.int64), {}
    rest = np.ones(n, dtype=bool)
    rest[matched] = False
    slow_trades: list[Trade] = []
    slow_lines: list[int] = []
    out = ParsedBlock(pa.table({}), n)
    for i in np.flatnonzero(rest).tolist():
        raw = lines[i].as_py().rstrip(b"\r\n")
        lineno = first_line + i
        if not raw.strip() or is_header(lineno, raw):
            out.skipped += 1  # a blank line, or a header line: not data
            continue
        out.slow += 1
        res = parse_message(
            raw, fmt=parser_fmt, exchange=exchange, symbol=symbol, known_symbols=known_symbols
        )
        if isinstance(res, Rejection):
            out.rejections.append((lineno, res))
        elif res.trade_id > MAX_LAKE_TRADE_ID:
            out.rejections.append((lineno, oversized_id_rejection(res)._replace(payload=raw)))
        else:
            slow_trades.append(res)
            slow_lines.append(lineno)
    table = _table(len(matched), ex or "", sym or "", cols) if len(matched) else None
    line_col = matched + first_line
    if slow_trades:
        extra = trades_table(slow_trades)
        table = extra if table is None else pa.concat_tables([table, extra])
        line_col = np.concatenate((line_col, np.array(slow_lines, dtype=np.int64)))
        order = np.argsort(line_col, kind="stable")
        table, line_col = table.take(order), line_col[order]
    if table is None:
        table = TRADES_SCHEMA.empty_table()
    out.trades = table.append_column("line", pa.array(line_col, pa.int64()))
    return out


# --------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    """What importing one dump did."""

    path: Path
    symbol: str
    exchange: str = "binance"
    fmt: str = FORMAT_TRADES
    lines: int = 0
    #: Rows stored (an aggregate trade is one row).
    trades: int = 0
    #: The exchange's trades those rows stand for (``trades`` but for aggregates).
    trade_count: int = 0
    rejected: int = 0
    skipped: int = 0
    slow: int = 0
    trades_per_day: dict[date, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    sealed_days: list[date] = field(default_factory=list)
    #: Files of an earlier import of the same file that this one replaced or removed.
    removed: list[str] = field(default_factory=list)
    #: Trade rows those earlier files held.
    replaced_rows: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    #: The first rejections: (line number, reason, the line).
    examples: list[tuple[int, str, bytes]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rejected_share(self) -> float:
        """Rejected rows over data rows (0 when there are none)."""
        total = self.trades + self.rejected
        return self.rejected / total if total else 0.0


@dataclass
class _DayOut:
    writer: AtomicParquetWriter
    first: int
    last: int = 0


def resolve_format(path: Path, fmt: str | None) -> str:
    """The format to import ``path`` in: ``fmt``, else what Binance's file name says.

    Raises:
        ImportFormatError: the name says another kind than ``fmt`` (an
            ``-aggTrades-`` file as ``binance-trades``, say).

    """
    named = format_from_filename(path)
    if fmt is None:
        return named or FORMAT_TRADES
    want = FORMAT_TRADES if fmt == FORMAT_TRADES_ALIAS else fmt
    if named is not None and named != want:
        msg = (
            f"{path.name} is named like a {named} dump, not {want}: pass --format {named} "
            "(or leave --format out: the name tells)"
        )
        raise ImportFormatError(msg)
    return want


def check_content(path: Path, fmt: str, lines: int = 20) -> None:
    """Refuse a file whose first lines are in another format than ``fmt``, or COIN-M.

    Raises:
        ImportFormatError: with the format the content looks like.

    """
    f, _ = open_dump(path)
    with f:
        head = [f.readline() for _ in range(lines)]
    why = coin_m_reason(path, head[0] if head else b"")
    if why:
        raise ImportFormatError(why)
    looks = sniff(head)
    if looks == "coin-m":
        raise ImportFormatError(coin_m_reason(path, b"base_qty") or "COIN-M")
    if looks is not None and looks != fmt:
        msg = f"{path.name} does not look like {fmt}: it looks like {looks}"
        raise ImportFormatError(f"{msg}; pass --format {looks}")


def import_dump(
    lake: Lake | str,
    path: Path,
    *,
    fmt: str | None = None,
    symbol: str | None = None,
    exchange: str = "binance",
    known_symbols: Collection[str] | None = None,
    progress: Progress | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int = 2,
    fast: bool = True,
    max_rejected_share: float = DEFAULT_MAX_REJECTED_SHARE,
    clock: Callable[[], int] = now_ms,
) -> ImportResult:
    """Import one Binance trade or aggregate trade dump (csv or zip) into the lake.

    Trades of each UTC day go to ``trades/date=D/import~<source>~<first>~<last>.parquet``
    where ``source`` is the file's :class:`ImportSource` (exchange, symbol, kind,
    stem) and ``first``/``last`` the first and last line numbers held. Importing the
    same file again writes the same names and removes any other file an earlier
    import of the same source left (say, of a shorter version of the dump), so
    re-imports never double the data; other exchanges', symbols' and files' imports
    are never touched. When the name says which day (or month) the dump covers,
    each covered day it has trades for gets an ``_IMPORTED~<source>.json`` marker:
    the day is complete for that symbol, which lets ``batch run`` treat it as
    sealed (see :mod:`batch.sealing`).

    Args:
        lake: the lake.
        path: the dump.
        fmt: ``binance-trades`` (or ``binance-csv``) or ``binance-aggtrades``;
            default: what the file's name says, else ``binance-trades``.
        symbol: the symbol; default: from the file's name.
        exchange: the exchange (a market is an exchange name: ``binance-um``).
        known_symbols: when given, any other symbol is rejected.
        progress: called with (bytes done, bytes total, lines done).
        block_bytes: bytes parsed per block.
        workers: blocks parsed in parallel.
        fast: use the vectorised parser.
        max_rejected_share: more rejected rows than this share (of data rows), or
            all of them, commits nothing and raises :class:`ImportRejectedError`.
        clock: now, ms.

    Raises:
        ValueError: the symbol can be known neither from ``symbol`` nor from the
            file name, or the zip holds more than one file.
        ImportFormatError: the content or the name is of another format.
        ImportRejectedError: too many rows rejected (the rejects are kept).
        FileNotFoundError: no such file.

    """
    started = time.monotonic()
    lk = lake if isinstance(lake, Lake) else Lake(lake)
    form = resolve_format(path, fmt)
    if form == FORMAT_KLINES:
        msg = f"{path.name}: klines are imported by batch.klines_import, not as trades"
        raise ImportFormatError(msg)
    source = import_source(path, form, symbol, exchange)
    sym, ex = source.symbol, source.exchange
    result = ImportResult(path, sym, ex, form)
    days: dict[date, _DayOut] = {}
    rejects: list[tuple[int, Rejection]] = []
    f, total = open_dump(path)
    next_line = 1
    try:
        with f, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # Blocks are parsed in parallel (the Arrow kernels release the GIL) and
            # written in order, with at most ``workers`` blocks in flight.
            pending: deque[Future[ParsedBlock]] = deque()
            parse = partial(
                parse_block,
                exchange=ex,
                symbol=sym,
                known_symbols=known_symbols,
                fast=fast,
                fmt=form,
            )
            for data, done in _blocks(f, block_bytes):
                pending.append(pool.submit(parse, data, next_line))
                next_line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                while len(pending) > workers or (pending and pending[0].done()):
                    _take_block(lk, pending.popleft().result(), days, rejects, result)
                    if progress is not None:
                        progress(done, total, result.lines)
            while pending:
                _take_block(lk, pending.popleft().result(), days, rejects, result)
        _count_rejections(rejects, result)
        why = refusal(path.name, form, result.trades, rejects, max_rejected_share)
        if why is not None:
            raise ImportRejectedError(why, result)
        # What an earlier import of this file left is counted before it is replaced.
        earlier = earlier_files(lk, source)
        result.replaced_rows = sum(data_rows(lk, p) for p in earlier)
        result.files += [_commit_day(lk, source, out) for _, out in sorted(days.items())]
    except BaseException as exc:
        for out in days.values():
            out.writer.abort()
        if isinstance(exc, ImportRejectedError) and rejects:
            # Nothing is imported, but the reasons are kept to look at.
            write_rejects(lk, path, source, rejects, result.trades_per_day, clock)
        raise
    if progress is not None:
        progress(total, total, result.lines)
    if rejects:
        result.files.append(write_rejects(lk, path, source, rejects, result.trades_per_day, clock))
    result.removed = _remove_stale(lk, source, earlier, set(result.files))
    _write_markers(lk, path, source, result, clock)
    result.seconds = time.monotonic() - started
    return result


def _count_rejections(rejects: list[tuple[int, Rejection]], result: ImportResult) -> None:
    result.rejected = len(rejects)
    result.reasons = Counter(r.reason for _, r in rejects)
    result.examples = [(n, r.reason, r.payload[:200]) for n, r in rejects[:EXAMPLES]]


def refusal(
    name: str, fmt: str, kept: int, rejects: list[tuple[int, Rejection]], max_share: float
) -> str | None:
    """Why an import of ``kept`` rows and these rejections must not be committed, or ``None``.

    All rows rejected, or more than ``max_share`` of them: the message has the reason
    counts and the first :data:`EXAMPLES` rejections (line number, reason, the line).
    """
    if not rejects:
        return None
    counts = Counter(r.reason for _, r in rejects)
    reasons = ", ".join(f"{r} {n:,}" for r, n in counts.most_common())
    examples = "; ".join(
        f"line {n}: {r.reason} {r.payload[:200].decode('utf-8', 'replace')!r}"
        for n, r in rejects[:EXAMPLES]
    )
    total = kept + len(rejects)
    if not kept:
        return (
            f"{name}: none of its {len(rejects):,} rows could be read as {fmt} "
            f"({reasons}); e.g. {examples}. Nothing imported; the rows and reasons are in "
            "the lake's rejects/."
        )
    share = len(rejects) / total
    if share > max_share:
        return (
            f"{name}: {len(rejects):,} of {total:,} rows rejected "
            f"({share:.2%} > {max_share:.2%}: {reasons}); e.g. {examples}. "
            "Nothing imported; the rows and reasons are in the lake's rejects/. Pass "
            "--max-rejected-share to accept more."
        )
    return None


def import_source(path: Path, fmt: str, symbol: str | None, exchange: str) -> ImportSource:
    """What importing ``path`` in ``fmt`` writes: its content checked, symbol and exchange known.

    Raises:
        ImportFormatError: the content is in another format (or COIN-M).
        ValueError: no symbol, or a bad exchange name.

    """
    check_content(path, fmt)
    sym = resolve_symbol(path, symbol)
    ex = normalize_exchange(exchange)
    if ex is None:
        msg = f"--exchange {exchange!r} is not a valid exchange name (e.g. binance)"
        raise ValueError(msg)
    return ImportSource(ex, sym, KIND_OF_FORMAT[fmt], dump_stem(path))


def resolve_symbol(path: Path, symbol: str | None) -> str:
    """``symbol`` normalized, else the symbol Binance's file name says; else ``ValueError``."""
    if symbol is not None:
        sym = normalize_symbol(symbol)
        if sym is None:
            msg = f"--symbol {symbol!r} is not a symbol (2 to 30 letters or digits, e.g. BTCUSDT)"
            raise ValueError(msg)
        return sym
    sym = symbol_from_filename(path)
    if sym is None:
        msg = (
            f"{path}: cannot tell the symbol from the file name; pass --symbol "
            "(Binance names dumps like BTCUSDT-trades-2025-03-14.csv)"
        )
        raise ValueError(msg)
    return sym


def write_rejects(
    lk: Lake,
    path: Path,
    source: ImportSource,
    rejects: list[tuple[int, Rejection]],
    days: Iterable[date],
    clock: Callable[[], int],
) -> str:
    """An import's rejected rows (line number, reason, bytes) into ``rejects/``.

    The day partition: the first day the file's name covers, else the earliest of
    ``days`` (the days it had rows for), else today.
    """
    table = rejects_table(
        [r for _, r in rejects],
        source.stem,
        [str(n) for n, _ in rejects],
        [source.symbol] * len(rejects),
    )
    covered = covered_days(path)
    found = sorted(days)
    day = covered[0] if covered else found[0] if found else day_of_ms(clock())
    writer = AtomicParquetWriter(lk, lk.rejects_dir(day), table.schema)
    writer.write(table)
    return writer.commit(source.rows(rejects[0][0], rejects[-1][0]).file_name)


def _write_markers(
    lk: Lake, path: Path, source: ImportSource, result: ImportResult, clock: Callable[[], int]
) -> None:
    covered = covered_days(path)
    if covered is None:
        return
    for day in sorted(result.trades_per_day):
        if covered[0] <= day <= covered[1]:
            info = {
                "source": path.name,
                "symbol": result.symbol,
                "exchange": source.exchange,
                "kind": source.kind,
                "trades": result.trades_per_day[day],
                "imported_at_ms": clock(),
            }
            write_import_marker(lk, day, source.name, info)
            result.sealed_days.append(day)


def _blocks(f: IO[bytes], block_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines (the file's last may lack its line feed), and bytes read so far."""
    done = 0
    leftover = b""
    while True:
        chunk = f.read(block_bytes)
        done += len(chunk)
        if not chunk:
            if leftover:
                yield leftover, done
            return
        data = leftover + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            leftover = data
            continue
        leftover = data[cut:]
        yield data[:cut], done


def _take_block(
    lk: Lake,
    block: ParsedBlock,
    days: dict[date, _DayOut],
    rejects: list[tuple[int, Rejection]],
    result: ImportResult,
) -> None:
    result.lines += block.lines
    result.skipped += block.skipped
    result.slow += block.slow
    rejects.extend(block.rejections)
    _write_days(lk, block.trades, days, result)


def _write_days(lk: Lake, table: pa.Table, days: dict[date, _DayOut], result: ImportResult) -> None:
    if not table.num_rows:
        return
    t = table.column("event_time").to_numpy()
    day_no = t // DAY_MS
    lines = table.column("line").to_numpy()
    data = table.drop_columns(["line"])
    first_day = int(day_no[0])
    groups = [first_day] if (day_no == first_day).all() else np.unique(day_no).tolist()
    for d in groups:
        if len(groups) == 1:
            part, part_lines = data, lines
        else:
            mask = day_no == d
            part, part_lines = data.filter(pa.array(mask)), lines[mask]
        day = day_of_ms(int(d) * DAY_MS)
        out = days.get(day)
        if out is None:
            out = days[day] = _DayOut(
                AtomicParquetWriter(lk, lk.trades_dir(day), TRADES_SCHEMA, index_trade_keys=True),
                int(part_lines[0]),
            )
        out.writer.write(part)
        out.last = int(part_lines[-1])
        result.trades += part.num_rows
        span = part.column("span")
        result.trade_count += part.num_rows + (
            int(pc.sum(span).as_py() or 0) - (part.num_rows - span.null_count)
        )
        result.trades_per_day[day] = result.trades_per_day.get(day, 0) + part.num_rows


def _commit_day(lk: Lake, source: ImportSource, out: _DayOut) -> str:
    return out.writer.commit(source.rows(out.first, out.last).file_name)


def _legacy_match(lk: Lake, path: str, source: ImportSource) -> bool:
    """Whether a file named by an older version (source = the stem alone) is this source's.

    Those names did not tell the exchange, symbol or kind apart; the file's own
    rows do (trades and rejects both have ``exchange`` and ``symbol`` columns).
    """
    if source.kind != "trades":
        return False  # aggregate trades had no import before sources were named
    try:
        table = pq.read_table(path, columns=["exchange", "symbol"], filesystem=lk.fs)
    except (OSError, pa.ArrowInvalid):
        return False
    if not table.num_rows:
        return False
    ex = pc.unique(table.column("exchange")).to_pylist()
    sy = pc.unique(table.column("symbol")).to_pylist()
    return ex == [source.exchange] and sy == [source.symbol]


def earlier_files(
    lk: Lake, source: ImportSource, tops: tuple[str, ...] = (TRADES_DIR, REJECTS_DIR)
) -> list[str]:
    """Files an earlier import of this same source wrote under ``tops`` (every day)."""
    prefix = source.prefix
    legacy = SourceRange.rows(source.stem, 0, 0).prefix
    found = []
    for top in tops:
        for day in lk.list_days(top):
            directory = lk.path(top, partition(day))
            for name in lk.list_files(directory):
                p = f"{directory}/{name}"
                if name.startswith(prefix) or (
                    name.startswith(legacy) and _legacy_match(lk, p, source)
                ):
                    found.append(p)
    return found


def data_rows(lk: Lake, path: str) -> int:
    """Rows of a trade or klines file (rejects count none)."""
    if f"/{REJECTS_DIR}/" in path:
        return 0
    try:
        return int(pq.read_metadata(path, filesystem=lk.fs).num_rows)
    except (OSError, pa.ArrowInvalid):
        return 0


def _remove_stale(lk: Lake, source: ImportSource, earlier: list[str], keep: set[str]) -> list[str]:
    """Remove what an earlier import of the same source left and this one did not rewrite.

    Returns:
        The earlier files, replaced (same name) or removed.

    """
    for p in earlier:
        if p not in keep:
            lk.remove(p)
    # The earlier import's day markers (this import writes its own afterwards); an
    # import from before sources were named left its marker under the stem alone.
    gone = {import_marker_name(source.name)}
    legacy = SourceRange.rows(source.stem, 0, 0).prefix
    if any(p.rpartition("/")[2].startswith(legacy) for p in earlier):
        gone.add(import_marker_name(source.stem))
    for day in lk.list_days(TRADES_DIR):
        directory = lk.trades_dir(day)
        for name in lk.list_files(directory, hidden=True):
            if name in gone:
                lk.remove(f"{directory}/{name}")
    return earlier
