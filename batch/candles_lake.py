"""Candles in the lake: ``candles/source=batch|stream/interval=I/date=D/*.parquet``.

One schema for both sources, so reconciliation and readers treat them alike. The
interval and the day are in the partition path (as Spark's ``partitionBy`` writes
them) and are not columns. Decimals are exact: prices ``decimal(18, 8)``, volumes
``decimal(38, 8)``, quote volume ``decimal(38, 16)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from batch.candles_read import candles_from_table
from batch.lake import PRICE_TYPE, AtomicParquetWriter, Lake, decimal_array
from marketdata.candle import Candle
from marketdata.interval import ALL_INTERVALS, Interval

SOURCE_BATCH = "batch"
SOURCE_STREAM = "stream"
VOLUME_TYPE = pa.decimal128(38, 8)
QUOTE_TYPE = pa.decimal128(38, 16)

CANDLE_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("open_time", pa.int64()),
        ("open", PRICE_TYPE),
        ("high", PRICE_TYPE),
        ("low", PRICE_TYPE),
        ("close", PRICE_TYPE),
        ("volume", VOLUME_TYPE),
        ("quote_volume", QUOTE_TYPE),
        ("trade_count", pa.int64()),
        ("taker_buy_volume", VOLUME_TYPE),
        ("vwap", PRICE_TYPE),
        ("first_trade_id", pa.int64()),
        ("last_trade_id", pa.int64()),
        ("first_event_time", pa.int64()),
        ("last_event_time", pa.int64()),
    ]
)

Key = tuple[str, str, str, int]


def _lake(lake: str | os.PathLike[str] | Lake) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(lake)


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
    lk = _lake(lake)
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
    lk = _lake(lake)
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
