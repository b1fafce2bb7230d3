"""Reading candles and aggregates back from the lake, with pyarrow (no Spark, fast).

``cryptopipe candles --source batch`` calls :func:`read_batch_candles`; the stream
side's candles, written under ``candles/source=stream/`` with the same schema, are
read by :func:`read_lake_candles` with ``source="stream"``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.lake import AGGREGATES_DIR, CANDLES_DIR, Lake, decimal_unscaled, partition
from marketdata.candle import Candle
from marketdata.decimals import format_e8, format_e16
from marketdata.interval import Interval
from marketdata.settings import Settings
from marketdata.timeutil import day_of_ms

_CANDLE_INTS = (
    "open_time",
    "trade_count",
    "first_event_time",
    "first_trade_id",
    "last_event_time",
    "last_trade_id",
)
_CANDLE_DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")


def _lake(where: Settings | Lake | str) -> Lake:
    if isinstance(where, Lake):
        return where
    if isinstance(where, Settings):
        return Lake(where.lake)
    return Lake(where)


def candle_days(where: Settings | Lake | str, source: str, interval: Interval | str) -> list[date]:
    """Days that have candles of ``interval`` from ``source`` (``batch`` or ``stream``)."""
    iv = interval if isinstance(interval, Interval) else Interval.parse(interval)
    return _lake(where).list_days(f"{CANDLES_DIR}/source={source}/interval={iv.label}")


def _read_dir(lake: Lake, directory: str, filters: list[tuple[str, str, Any]]) -> pa.Table | None:
    tables = [
        pq.read_table(
            f"{directory}/{n}", filesystem=lake.fs, partitioning=None, filters=filters or None
        )
        for n in lake.list_files(directory)
        if n.endswith(".parquet")
    ]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def read_lake_candles(
    where: Settings | Lake | str,
    source: str,
    exchange: str,
    symbol: str,
    interval: Interval | str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[Candle]:
    """Candles of one key from ``candles/source=<source>/``, in open_time order.

    Args:
        where: settings (their lake), a :class:`~batch.lake.Lake` or a lake URI.
        source: ``batch`` or ``stream``.
        exchange: e.g. ``binance`` (lower case).
        symbol: e.g. ``BTCUSDT`` (upper case).
        interval: an :class:`Interval` or its label.
        start_ms: first open_time included (``None``: from the first stored day).
        end_ms: open_time bound, excluded (``None``: to the last stored day).

    Returns:
        Exact :class:`Candle` objects (empty windows have none).

    """
    lake = _lake(where)
    iv = interval if isinstance(interval, Interval) else Interval.parse(interval)
    days = candle_days(lake, source, iv)
    if start_ms is not None:
        days = [d for d in days if d >= day_of_ms(start_ms)]
    if end_ms is not None:
        days = [d for d in days if d <= day_of_ms(end_ms - 1)]
    filters: list[tuple[str, str, Any]] = [("exchange", "=", exchange), ("symbol", "=", symbol)]
    if start_ms is not None:
        filters.append(("open_time", ">=", start_ms))
    if end_ms is not None:
        filters.append(("open_time", "<", end_ms))
    out: list[Candle] = []
    for day in days:
        directory = lake.candles_dir(source, iv.label, day)
        table = _read_dir(lake, directory, filters)
        if table is not None:
            out.extend(candles_from_table(table, iv))
    out.sort(key=lambda c: c.open_time)
    return out


def read_batch_candles(
    settings: Settings | Lake | str,
    exchange: str,
    symbol: str,
    interval: Interval | str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[Candle]:
    """Batch candles of one key with ``start_ms <= open_time < end_ms``, in open_time order.

    What ``cryptopipe candles --source batch`` shows. Reads
    ``<lake>/candles/source=batch/interval=<I>/date=<D>/`` for the days the range
    touches, with pyarrow. A day being rewritten by ``batch run`` at that moment may
    read as empty for an instant (its directory is swapped whole).
    """
    return read_lake_candles(settings, "batch", exchange, symbol, interval, start_ms, end_ms)


def candles_from_table(table: pa.Table, interval: Interval) -> list[Candle]:
    """Rows of the candles schema as :class:`Candle` objects, exactly."""
    cols: dict[str, list[Any]] = {c: table.column(c).to_pylist() for c in _CANDLE_INTS}
    cols.update({c: decimal_unscaled(table.column(c)) for c in _CANDLE_DECIMALS})
    exchanges = table.column("exchange").to_pylist()
    symbols = table.column("symbol").to_pylist()
    return [
        Candle(
            exchanges[i],
            symbols[i],
            interval,
            cols["open_time"][i],
            cols["open"][i],
            cols["high"][i],
            cols["low"][i],
            cols["close"][i],
            cols["volume"][i],
            cols["quote_volume"][i],
            cols["trade_count"][i],
            cols["taker_buy_volume"][i],
            cols["first_event_time"][i],
            cols["first_trade_id"][i],
            cols["last_event_time"][i],
            cols["last_trade_id"][i],
        )
        for i in range(table.num_rows)
    ]


def read_aggregates(where: Settings | Lake | str, day: date) -> list[dict[str, Any]]:
    """The day's aggregates, one dict per (exchange, symbol); decimals as exact strings."""
    lake = _lake(where)
    table = _read_dir(lake, lake.path(AGGREGATES_DIR, partition(day)), [])
    if table is None:
        return []
    out: dict[str, list[Any]] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_decimal(col.type):
            scale = col.type.scale
            fmt = format_e8 if scale == 8 else format_e16
            if scale not in (8, 16):
                msg = f"unexpected scale {scale} of {name}"
                raise ValueError(msg)
            out[name] = [fmt(v) for v in decimal_unscaled(col)]
        else:
            out[name] = col.to_pylist()
    rows = [{k: v[i] for k, v in out.items()} for i in range(table.num_rows)]
    rows.sort(key=lambda r: (r["exchange"], r["symbol"]))
    return rows
