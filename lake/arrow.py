"""Exact conversions between the domain's scaled integers and Arrow tables.

Decimal columns are built from the unscaled integers directly (the 16-byte words
laid out by hand, no ``Decimal`` objects, no rounding) and read back the same way:
this is the speed path of the archive flow and the lake readers, and exactness is
the point (docs/batch.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa

from lake.schemas import (
    CANDLE_SCHEMA,
    PRICE_TYPE,
    QUANTITY_TYPE,
    QUOTE_TYPE,
    REJECTS_SCHEMA,
    TRADES_SCHEMA,
    VOLUME_TYPE,
)
from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.timeutil import DAY_MS, day_of_ms
from marketdata.trade import Rejection, Trade

if sys.byteorder != "little":  # pragma: no cover - Arrow decimals are little-endian words here
    msg = "lake.arrow builds Arrow decimal buffers by hand and needs a little-endian machine"
    raise ImportError(msg)

_CANDLE_INTS = (
    "open_time",
    "trade_count",
    "first_event_time",
    "first_trade_id",
    "last_event_time",
    "last_trade_id",
)
_CANDLE_DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")


def decimal_array(values: np.ndarray | Sequence[int], typ: pa.DataType) -> pa.Array:
    """Arrow decimals from scaled integers (``price_e8`` -> ``decimal(18, 8)``), exactly.

    The integers are the decimals' unscaled values: no arithmetic, no rounding, and
    no ``Decimal`` objects (the 16-byte words are laid out directly).
    """
    n = len(values)
    words = np.empty((n, 2), dtype=np.int64)
    try:
        v = np.asarray(values, dtype=np.int64)
    except OverflowError:
        # Beyond int64 (quantities can reach 10^20 units): split each one in Python.
        lo = [x & 0xFFFF_FFFF_FFFF_FFFF for x in values]
        words[:, 0] = np.array(lo, dtype=np.uint64).view(np.int64)
        words[:, 1] = np.array([x >> 64 for x in values], dtype=np.int64)
    else:
        words[:, 0] = v
        words[:, 1] = v >> 63  # sign extension
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(words)])


def decimal_unscaled(arr: pa.Array | pa.ChunkedArray) -> list[int]:
    """The unscaled integers of a decimal128 array (``decimal(18, 8)`` -> ``price_e8``)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    if not pa.types.is_decimal128(arr.type):
        msg = f"expected a decimal128 column, got {arr.type}"
        raise TypeError(msg)
    if arr.null_count:
        msg = "decimal column has nulls"
        raise ValueError(msg)
    n = len(arr)
    if n == 0:
        return []
    buf = arr.buffers()[1]
    words = np.frombuffer(buf, dtype=np.int64, count=2 * (arr.offset + n))[2 * arr.offset :]
    words = words.reshape(n, 2)
    lo, hi = words[:, 0], words[:, 1]
    if np.array_equal(hi, lo >> 63):
        return lo.tolist()
    ulo = lo.view(np.uint64)
    return [(int(h) << 64) | int(u) for h, u in zip(hi.tolist(), ulo.tolist(), strict=True)]


# --------------------------------------------------------------------------- tables


def trades_table(trades: Sequence[Trade]) -> pa.Table:
    """Trades as a table of :data:`TRADES_SCHEMA` (ids must fit int64)."""
    cols = list(zip(*trades, strict=True)) if trades else [()] * 8
    spans = {k: t.span for k, t in enumerate(trades) if t.span != 1}
    return trades_table_from_columns(*cols[:7], spans=spans)


def trades_table_from_columns(
    exchange: Sequence[str],
    symbol: Sequence[str],
    trade_id: Sequence[int],
    price_e8: Sequence[int],
    quantity_e8: Sequence[int],
    event_time: Sequence[int],
    is_buyer_maker: Sequence[bool],
    *,
    spans: Mapping[int, int] | None = None,
) -> pa.Table:
    """A table of :data:`TRADES_SCHEMA` from the :class:`Trade` fields as columns.

    No ``Trade`` object is made: the archive flow builds its files from parsed
    columns this way (ids must fit int64). ``spans`` maps row -> span for the
    aggregate trades; every other row's span is NULL (one trade).
    """
    n = len(trade_id)
    if spans:
        span_list: list[int | None] = [None] * n
        for k, v in spans.items():
            span_list[k] = v
        span_col = pa.array(span_list, pa.int64())
    else:
        span_col = pa.nulls(n, pa.int64())
    return pa.Table.from_arrays(
        [
            pa.array(exchange, pa.string()),
            pa.array(symbol, pa.string()),
            pa.array(trade_id, pa.int64()),
            decimal_array(list(price_e8), PRICE_TYPE),
            decimal_array(list(quantity_e8), QUANTITY_TYPE),
            pa.array(event_time, pa.int64()),
            pa.array(is_buyer_maker, pa.bool_()),
            span_col,
        ],
        schema=TRADES_SCHEMA,
    )


def split_by_day(table: pa.Table) -> dict[date, pa.Table]:
    """A trades table's rows by the UTC day of their event time, in row order."""
    if not table.num_rows:
        return {}
    days = table.column("event_time").to_numpy() // DAY_MS
    lo, hi = int(days.min()), int(days.max())
    if lo == hi:
        return {day_of_ms(lo * DAY_MS): table}
    return {day_of_ms(int(k) * DAY_MS): table.filter(pa.array(days == k)) for k in np.unique(days)}


def trades_from_table(table: pa.Table) -> list[Trade]:
    """Rows of a :data:`TRADES_SCHEMA` table back as :class:`Trade` (exact)."""
    cols = [
        table.column("exchange").to_pylist(),
        table.column("symbol").to_pylist(),
        table.column("trade_id").to_pylist(),
        decimal_unscaled(table.column("price")),
        decimal_unscaled(table.column("quantity")),
        table.column("event_time").to_pylist(),
        table.column("is_buyer_maker").to_pylist(),
    ]
    if "span" in table.column_names and table.column("span").null_count < table.num_rows:
        cols.append([1 if v is None else v for v in table.column("span").to_pylist()])
    else:
        cols.append([1] * table.num_rows)
    return [Trade(*row) for row in zip(*cols, strict=True)]


def rejects_table(
    rejections: Sequence[Rejection],
    source: str,
    source_ids: Sequence[str],
    symbols: Sequence[str | None] | None = None,
) -> pa.Table:
    """Rejections as a table of :data:`REJECTS_SCHEMA`."""
    n = len(rejections)
    return pa.Table.from_arrays(
        [
            pa.array([source] * n, pa.string()),
            pa.array(list(source_ids), pa.string()),
            pa.array([r.exchange for r in rejections], pa.string()),
            pa.array(list(symbols) if symbols is not None else [None] * n, pa.string()),
            pa.array([r.reason for r in rejections], pa.string()),
            pa.array([r.detail for r in rejections], pa.string()),
            pa.array([bytes(r.payload) for r in rejections], pa.binary()),
        ],
        schema=REJECTS_SCHEMA,
    )


def candles_table(candles: Iterable[Candle]) -> pa.Table:
    """Candles (of one interval) as a table of :data:`CANDLE_SCHEMA`, sorted by key."""
    cs = sorted(candles, key=lambda c: c.key)
    col = lambda f: [getattr(c, f) for c in cs]  # noqa: E731
    return pa.Table.from_arrays(
        [
            pa.array(col("exchange"), pa.string()),
            pa.array(col("symbol"), pa.string()),
            pa.array(col("open_time"), pa.int64()),
            decimal_array(col("open_e8"), PRICE_TYPE),
            decimal_array(col("high_e8"), PRICE_TYPE),
            decimal_array(col("low_e8"), PRICE_TYPE),
            decimal_array(col("close_e8"), PRICE_TYPE),
            decimal_array(col("volume_e8"), VOLUME_TYPE),
            decimal_array(col("quote_volume_e16"), QUOTE_TYPE),
            pa.array(col("trade_count"), pa.int64()),
            decimal_array(col("taker_buy_volume_e8"), VOLUME_TYPE),
            decimal_array(col("vwap_e8"), PRICE_TYPE),
            pa.array(col("first_trade_id"), pa.int64()),
            pa.array(col("last_trade_id"), pa.int64()),
            pa.array(col("first_event_time"), pa.int64()),
            pa.array(col("last_event_time"), pa.int64()),
        ],
        schema=CANDLE_SCHEMA,
    )


def candles_from_table(table: pa.Table, interval: Interval) -> list[Candle]:
    """Rows of the candles schema as :class:`Candle` objects, exactly."""
    cols: dict[str, list[Any]] = {c: table.column(c).to_pylist() for c in _CANDLE_INTS}
    cols.update({c: decimal_unscaled(table.column(c)) for c in _CANDLE_DECIMALS})
    exchanges = table.column("exchange").to_pylist()
    symbols = table.column("symbol").to_pylist()
    return [
        Candle(
            exchange=exchanges[i],
            symbol=symbols[i],
            interval=interval,
            open_time=cols["open_time"][i],
            open_e8=cols["open"][i],
            high_e8=cols["high"][i],
            low_e8=cols["low"][i],
            close_e8=cols["close"][i],
            volume_e8=cols["volume"][i],
            quote_volume_e16=cols["quote_volume"][i],
            trade_count=cols["trade_count"][i],
            taker_buy_volume_e8=cols["taker_buy_volume"][i],
            first_event_time=cols["first_event_time"][i],
            first_trade_id=cols["first_trade_id"][i],
            last_event_time=cols["last_event_time"][i],
            last_trade_id=cols["last_trade_id"][i],
        )
        for i in range(table.num_rows)
    ]
