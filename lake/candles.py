"""Candles and aggregates in the lake: ``candles/source=batch|stream/interval=I/date=D/``.

Both sources share one schema (:data:`lake.schemas.CANDLE_SCHEMA`), so reconciliation
and readers treat them alike. The batch job (Spark) writes ``source=batch``;
reconciliation keeps each day's stream candles under ``source=stream``; readers
(``cryptopipe candles --source batch``) read with pyarrow, no Spark. Decimals are
exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lake.arrow import candles_from_table, candles_table, decimal_unscaled
from lake.layout import AGGREGATES_DIR, CANDLES_DIR, Lake, as_lake, partition
from lake.schemas import CANDLE_SCHEMA
from lake.writer import AtomicParquetWriter
from marketdata.candle import Candle
from marketdata.decimals import format_e8, format_e16
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.records import SOURCE_BATCH
from marketdata.settings import Settings
from marketdata.timeutil import day_of_ms

Key = tuple[str, str, str, int]


def write_day_candles(
    lake: str | os.PathLike[str] | Lake,
    source: str,
    day: date,
    candles: Iterable[Candle],
    *,
    durable: bool = True,
) -> dict[str, int]:
    """Replace the day's candles of ``source`` (every interval); returns rows per interval.

    Idempotent: each interval's partition holds one file, ``part-0.parquet``, replaced
    atomically; other files in the partition (an earlier writer's) are removed.
    """
    lk = as_lake(lake)
    by_interval: dict[Interval, list[Candle]] = {iv: [] for iv in ALL_INTERVALS}
    for c in candles:
        by_interval[c.interval].append(c)
    out = {}
    for iv, cs in by_interval.items():
        directory = lk.candles_dir(source, iv.label, day)
        writer = AtomicParquetWriter(lk, directory, CANDLE_SCHEMA)
        writer.write(candles_table(cs))
        writer.commit("part-0.parquet", durable=durable)
        for stale in lk.list_files(directory):
            if stale != "part-0.parquet" and stale.endswith(".parquet"):
                lk.remove(f"{directory}/{stale}")
        out[iv.label] = len(cs)
    return out


def read_day_candles(
    lake: str | os.PathLike[str] | Lake, source: str, day: date
) -> dict[Key, Candle] | None:
    """Every candle of ``source`` for ``day``, keyed; ``None`` when the day has none written."""
    lk = as_lake(lake)
    out: dict[Key, Candle] = {}
    found = False
    for iv in ALL_INTERVALS:
        directory = lk.candles_dir(source, iv.label, day)
        files = [f for f in lk.list_files(directory) if f.endswith(".parquet")]
        if not files:
            continue
        found = True
        for name in files:
            table = pq.read_table(f"{directory}/{name}", filesystem=lk.fs, partitioning=None)
            for c in candles_from_table(table, iv):
                out[c.key] = c
    return out if found else None


def candle_days(where: Settings | Lake | str, source: str, interval: Interval | str) -> list[date]:
    """Days that have candles of ``interval`` from ``source`` (``batch`` or ``stream``)."""
    iv = interval if isinstance(interval, Interval) else Interval.parse(interval)
    return as_lake(where).list_days(f"{CANDLES_DIR}/source={source}/interval={iv.label}")


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
        where: settings (their lake), a :class:`~lake.layout.Lake` or a lake URI.
        source: ``batch`` or ``stream``.
        exchange: e.g. ``binance`` (lower case).
        symbol: e.g. ``BTCUSDT`` (upper case).
        interval: an :class:`Interval` or its label.
        start_ms: first open_time included (``None``: from the first stored day).
        end_ms: open_time bound, excluded (``None``: to the last stored day).

    Returns:
        Exact :class:`Candle` objects (empty windows have none).

    """
    lake = as_lake(where)
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
    return read_lake_candles(settings, SOURCE_BATCH, exchange, symbol, interval, start_ms, end_ms)


def read_aggregates(where: Settings | Lake | str, day: date) -> list[dict[str, Any]]:
    """The day's aggregates, one dict per (exchange, symbol); decimals as exact strings."""
    lake = as_lake(where)
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
