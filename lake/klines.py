"""The exchange's klines in the lake (``klines/date=D/``): tables and reads.

Written by :mod:`batch.klines_import` (one file per imported dump and day, named by
its :class:`lake.layout.ImportSource`), read back by reconciliation against klines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from lake.arrow import decimal_array, decimal_unscaled
from lake.layout import Lake, as_lake
from lake.schemas import KLINES_SCHEMA, PRICE_TYPE, QUOTE_TYPE, VOLUME_TYPE
from marketdata.binance_klines import Key, Kline
from marketdata.decimals import QUOTE_SCALE_DIGITS

_PRICES = ("open", "high", "low", "close")


def klines_table(klines: Sequence[Kline]) -> pa.Table:
    """Klines as a table of :data:`KLINES_SCHEMA`."""
    cols = list(zip(*klines, strict=True)) if klines else [()] * len(Kline._fields)
    by = dict(zip(Kline._fields, cols, strict=True))
    arrays = [
        pa.array(by["exchange"], pa.string()),
        pa.array(by["symbol"], pa.string()),
        pa.array(by["open_time"], pa.int64()),
        *(decimal_array(list(by[f"{n}_e8"]), PRICE_TYPE) for n in _PRICES),
        decimal_array(list(by["volume_e8"]), VOLUME_TYPE),
        decimal_array(list(by["quote_volume_e16"]), QUOTE_TYPE),
        pa.array(by["trade_count"], pa.int64()),
        decimal_array(list(by["taker_buy_volume_e8"]), VOLUME_TYPE),
        decimal_array(list(by["taker_buy_quote_volume_e16"]), QUOTE_TYPE),
    ]
    return pa.Table.from_arrays(arrays, schema=KLINES_SCHEMA)


def _e16(column: pa.ChunkedArray) -> list[int]:
    """A quote volume column in 1e-16 units, whatever its scale (older files have 8)."""
    scale = column.type.scale
    values = decimal_unscaled(column)
    if scale == QUOTE_SCALE_DIGITS:
        return values
    factor = 10 ** (QUOTE_SCALE_DIGITS - scale)
    return [v * factor for v in values]


def klines_from_table(table: pa.Table) -> list[Kline]:
    """Rows of a :data:`KLINES_SCHEMA` table back as :class:`Kline` (exact)."""
    cols = [
        table.column("exchange").to_pylist(),
        table.column("symbol").to_pylist(),
        table.column("open_time").to_pylist(),
        *(decimal_unscaled(table.column(n)) for n in _PRICES),
        decimal_unscaled(table.column("volume")),
        _e16(table.column("quote_volume")),
        table.column("trade_count").to_pylist(),
        decimal_unscaled(table.column("taker_buy_volume")),
        _e16(table.column("taker_buy_quote_volume")),
    ]
    return [Kline(*row) for row in zip(*cols, strict=True)]


def read_day_klines(
    lake: str | os.PathLike[str] | Lake, day: date, exchange: str | None = None
) -> dict[Key, Kline]:
    """The klines imported for ``day`` (of one exchange, or all), keyed.

    Two imports holding the same minute (a re-import is one import) keep the later
    file's in name order.
    """
    lk = as_lake(lake)
    directory = lk.klines_dir(day)
    out: dict[Key, Kline] = {}
    for name in lk.list_files(directory):
        if not name.endswith(".parquet"):
            continue
        table = pq.read_table(f"{directory}/{name}", filesystem=lk.fs, partitioning=None)
        for k in klines_from_table(table):
            if exchange is None or k.exchange == exchange:
                out[k.key] = k
    return out


def klines_days(lake: str | os.PathLike[str] | Lake) -> list[date]:
    """Days with imported klines."""
    return as_lake(lake).list_days("klines")
