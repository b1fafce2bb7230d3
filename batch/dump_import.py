r"""``cryptopipe lake import``: Binance daily trade dumps straight into the lake.

A dump (``BTCUSDT-trades-2025-03-14.csv``, or the ``.zip`` holding it) has no
header and the columns ``trade id, price, qty, quoteQty, time, isBuyerMaker,
isBestMatch``; ``time`` is µs since 2025 and ms before.

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
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.arrow import decimal_array, rejects_table, trades_table
from lake.layout import (
    REJECTS_DIR,
    TRADES_DIR,
    Lake,
    SourceRange,
    import_marker_name,
    partition,
    write_import_marker,
)
from lake.schemas import MAX_LAKE_TRADE_ID, PRICE_TYPE, QUANTITY_TYPE, TRADES_SCHEMA
from lake.writer import AtomicParquetWriter, oversized_id_rejection
from marketdata.binance_dump import (
    covered_days,
    dump_stem,
    is_header,
    open_dump,
    row_pattern,
    symbol_from_filename,
)
from marketdata.decimals import SCALE_DIGITS
from marketdata.parsing import FORMAT_CSV, normalize_exchange, normalize_symbol, parse_message
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
#: Bytes read per block; one block of trades is one Parquet row group.
DEFAULT_BLOCK_BYTES = 32 << 20

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


def _fast(lines: pa.Array) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices of lines proven valid, and their values; the rest need the parser."""
    matched = np.flatnonzero(pc.match_substring_regex(lines, FAST_LINE).to_numpy(False))
    if not len(matched):
        return matched, {}
    subset = lines if len(matched) == len(lines) else lines.take(pa.array(matched))
    text = pc.cast(subset, pa.large_string())  # ASCII: the regex says so
    cols = pc.split_pattern(text, ",")
    trade_id = pc.cast(pc.list_element(cols, 0), pa.int64()).to_numpy()
    price = _e8_column(pc.list_element(cols, 1))
    quantity = _e8_column(pc.list_element(cols, 2))
    raw_t = pc.cast(pc.list_element(cols, 4), pa.int64()).to_numpy()
    event_time = np.where(raw_t >= MICROS_THRESHOLD, raw_t // 1000, raw_t)
    # true|True|false|False, possibly followed by the line end.
    maker = pc.starts_with(pc.utf8_lower(pc.list_element(cols, 5)), "t").to_numpy(False)
    ok = (
        (price > 0)
        & (quantity > 0)
        & (event_time >= MIN_EVENT_TIME_MS)
        & (event_time < MAX_EVENT_TIME_MS)
    )
    if not ok.all():
        keep = np.flatnonzero(ok)
        matched, trade_id, price = matched[keep], trade_id[keep], price[keep]
        quantity, event_time, maker = quantity[keep], event_time[keep], maker[keep]
    return matched, {
        "trade_id": trade_id,
        "price": price,
        "quantity": quantity,
        "event_time": event_time,
        "is_buyer_maker": maker,
    }


def _table(n: int, exchange: str, symbol: str, cols: dict[str, np.ndarray]) -> pa.Table:
    zeros = np.zeros(n, dtype=np.int32)
    return pa.Table.from_arrays(
        [
            pa.array([exchange], pa.string()).take(zeros),
            pa.array([symbol], pa.string()).take(zeros),
            pa.array(cols["trade_id"], pa.int64()),
            decimal_array(cols["price"], PRICE_TYPE),
            decimal_array(cols["quantity"], QUANTITY_TYPE),
            pa.array(cols["event_time"], pa.int64()),
            pa.array(cols["is_buyer_maker"], pa.bool_()),
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

    Returns:
        The trades (with their line numbers) and rejections, with the same outcome
        per line as ``parse_message(line, fmt="binance-csv", ...)``.

    """
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
        matched, cols = _fast(lines)
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
            raw, fmt=FORMAT_CSV, exchange=exchange, symbol=symbol, known_symbols=known_symbols
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
    lines: int = 0
    trades: int = 0
    rejected: int = 0
    skipped: int = 0
    slow: int = 0
    trades_per_day: dict[date, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    sealed_days: list[date] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _DayOut:
    writer: AtomicParquetWriter
    first: int
    last: int = 0


def import_dump(
    lake: Lake | str,
    path: Path,
    *,
    symbol: str | None = None,
    exchange: str = "binance",
    known_symbols: Collection[str] | None = None,
    progress: Progress | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    workers: int = 2,
    fast: bool = True,
    clock: Callable[[], int] = now_ms,
) -> ImportResult:
    """Import one Binance dump (csv or zip) into ``trades/`` and ``rejects/``.

    Trades of each UTC day go to ``trades/date=D/import~<stem>~<first>~<last>.parquet``
    (``first``/``last``: the first and last line numbers held). Importing the same
    file again writes the same names and removes any other file an earlier import
    of the same stem left (say, of a shorter version of the dump), so re-imports
    never double the data. When the name says which day (or month) the dump covers,
    each covered day it has trades for gets an ``_IMPORTED~<stem>.json`` marker:
    the day is complete for that symbol, which lets ``batch run`` treat it as
    sealed (see :mod:`batch.sealing`).

    Raises:
        ValueError: the symbol can be known neither from ``symbol`` nor from the
            file name, or the zip holds more than one file.
        FileNotFoundError: no such file.

    """
    started = time.monotonic()
    lk = lake if isinstance(lake, Lake) else Lake(lake)
    sym = _resolve_symbol(path, symbol)
    stem = dump_stem(path)
    result = ImportResult(path, sym)
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
                parse_block, exchange=exchange, symbol=sym, known_symbols=known_symbols, fast=fast
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
        result.files += [_commit_day(lk, stem, day, out) for day, out in sorted(days.items())]
    except BaseException:
        for out in days.values():
            out.writer.abort()
        raise
    if progress is not None:
        progress(total, total, result.lines)
    if rejects:
        result.files.append(_write_rejects(lk, path, stem, sym, rejects, result, clock))
    result.removed = _remove_stale(lk, stem, set(result.files))
    _write_markers(lk, path, stem, exchange, result, clock)
    result.seconds = time.monotonic() - started
    return result


def _resolve_symbol(path: Path, symbol: str | None) -> str:
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


def _write_rejects(
    lk: Lake,
    path: Path,
    stem: str,
    sym: str,
    rejects: list[tuple[int, Rejection]],
    result: ImportResult,
    clock: Callable[[], int],
) -> str:
    result.rejected = len(rejects)
    table = rejects_table(
        [r for _, r in rejects], stem, [str(n) for n, _ in rejects], [sym] * len(rejects)
    )
    writer = AtomicParquetWriter(lk, lk.rejects_dir(_reject_day(path, result, clock)), table.schema)
    writer.write(table)
    return writer.commit(SourceRange.rows(stem, rejects[0][0], rejects[-1][0]).file_name)


def _write_markers(
    lk: Lake, path: Path, stem: str, exchange: str, result: ImportResult, clock: Callable[[], int]
) -> None:
    covered = covered_days(path)
    if covered is None:
        return
    for day in sorted(result.trades_per_day):
        if covered[0] <= day <= covered[1]:
            info = {
                "source": path.name,
                "symbol": result.symbol,
                "exchange": exchange,
                "trades": result.trades_per_day[day],
                "imported_at_ms": clock(),
            }
            write_import_marker(lk, day, stem, info)
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
        result.trades_per_day[day] = result.trades_per_day.get(day, 0) + part.num_rows


def _commit_day(lk: Lake, stem: str, day: date, out: _DayOut) -> str:
    return out.writer.commit(SourceRange.rows(stem, out.first, out.last).file_name)


def _reject_day(path: Path, result: ImportResult, clock: Callable[[], int]) -> date:
    covered = covered_days(path)
    if covered is not None:
        return covered[0]
    if result.trades_per_day:
        return min(result.trades_per_day)
    return day_of_ms(clock())


def _remove_stale(lk: Lake, stem: str, keep: set[str]) -> list[str]:
    """Files an earlier import of the same stem left that this one did not rewrite."""
    prefix = SourceRange.rows(stem, 0, 0).prefix
    marker = import_marker_name(stem)
    removed = []
    for top in (TRADES_DIR, REJECTS_DIR):
        for day in lk.list_days(top):
            directory = lk.path(top, partition(day))
            for name in lk.list_files(directory, hidden=True):
                path = f"{directory}/{name}"
                stale = name.startswith(prefix) and path not in keep
                if stale or (top == TRADES_DIR and name == marker):
                    lk.remove(path)
                    if stale:
                        removed.append(path)
    return removed
