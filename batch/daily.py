"""The daily batch job: a day's archived trades in, candles and aggregates out.

Reading and writing live here; the computations are in :mod:`batch.transforms`.
For a UTC day D (docs/architecture.md sections 3 and 6)::

    trades/date=D/*.parquet
      -> dedupe by (exchange, symbol, trade_id)
      -> 1m candles (fast integer path, or the exact decimal path when needed)
      -> 5m 15m 1h 4h 1d rolled up from 1m
      -> candles/source=batch/interval=I/date=D/     (one directory per interval)
      -> aggregates/date=D/
      -> serving/batch/date=D.json   (the run's id; the day is withdrawn from readers
                                      until reconciled again: lake.published)

Each output directory is written whole under a hidden staging name, then swapped
in place of the old one: a re-run replaces exactly the day's partitions and
nothing else (idempotent), and readers never see a half-written partition.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from batch.schemas import CANDLE_COLUMNS, TRADES
from batch.spark import check_exact_decimals
from batch.transforms import (
    all_intervals,
    candles_from_partials,
    daily_aggregates,
    dedupe_narrow,
    dedupe_trades,
    fast_path_valid,
    largest_trade_windows,
    largest_trades,
    minute_candles_exact,
    minute_partials,
    narrow_trades,
)
from lake.layout import (
    AGGREGATES_DIR,
    CANDLES_DIR,
    TRADES_DIR,
    Lake,
    partition,
    trade_files,
)
from lake.published import begin_batch_run, end_batch_run
from lake.tradekeys import proves_distinct
from marketdata.interval import INTERVAL_LABELS, Interval
from marketdata.timeutil import day_bounds

log = logging.getLogger(__name__)

BATCH_SOURCE = "batch"


#: The stages of :func:`run_batch_day`, in order (its ``on_stage`` progress).
STAGES = (
    "Spark session and the day's trade files",
    "1m candles and the day's counts",
    "largest trades",
    "candles of every interval (write)",
    "daily aggregates (write)",
)


class NoTradesError(ValueError):
    """The lake holds no trades for the day asked for."""


@dataclass
class BatchResult:
    """What one run computed and wrote."""

    day: date
    trades: int = 0
    duplicates: int = 0
    conflicts: int = 0
    symbols: int = 0
    candles: dict[str, int] = field(default_factory=dict)
    aggregates: int = 0
    path: str = "fast"
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)
    run: str = ""  # the run's id in the lake (lake.published)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "date": self.day.isoformat(),
            "trades": self.trades,
            "duplicates": self.duplicates,
            "conflicting_duplicates": self.conflicts,
            "symbols": self.symbols,
            "candles": self.candles,
            "aggregates": self.aggregates,
            "path": self.path,
            "seconds": round(self.seconds, 3),
        }


def day_files(lake: Lake, day: date) -> list[str]:
    """The day's trade files (lake paths).

    Raises:
        NoTradesError: no trade file for the day.

    """
    files = trade_files(lake, day)
    if not files:
        msg = (
            f"no trades for {day.isoformat()} in the lake ({lake.trades_dir(day)}): import "
            "dumps with 'cryptopipe lake import' or let the archive flow run"
        )
        raise NoTradesError(msg)
    return files


def read_day_trades(spark: SparkSession, lake: Lake, day: date, files: list[str]) -> DataFrame:
    """The rows of the day's trade ``files`` as stored (duplicates included)."""
    start, end = day_bounds(day)
    prefix = lake.trades_dir(day) + "/"
    uris = [lake.spark_uri(TRADES_DIR, partition(day), f.removeprefix(prefix)) for f in files]
    df = spark.read.schema(TRADES).parquet(*uris)
    # The writers partition by event day already; this only guards the contract.
    return df.filter((F.col("event_time") >= start) & (F.col("event_time") < end))


@dataclass
class _Minutes:
    minute: DataFrame  # the 1m candles (CANDLES columns plus the internal ones)
    path: str
    persisted: DataFrame  # what to unpersist afterwards
    trades: int
    duplicates: int
    conflicts: int


def _totals(df: DataFrame, *extra: Column) -> Row:
    row = df.agg(
        F.coalesce(F.sum("trade_count"), F.lit(0)).alias("trades"),
        F.coalesce(F.sum("duplicates"), F.lit(0)).alias("duplicates"),
        F.coalesce(F.sum("conflicts"), F.lit(0)).alias("conflicts"),
        *extra,
    ).first()
    assert row is not None
    return row


def minute_candles(
    trades: DataFrame, *, exact_only: bool = False, distinct: bool = False
) -> _Minutes:
    """The day's 1m candles (persisted), which path computed them, and the day's counts.

    The fast path is tried first (without the deduplication shuffle when
    ``distinct``: the trade-id indexes proved there is nothing to remove); if any
    minute breaks its preconditions (trade ids of 2^47 or more, huge quantities or
    sums, duplicates that disagree), the whole day is recomputed with the exact
    decimal path. One Spark job computes the partials, checks them and counts.
    """
    if not exact_only:
        narrow = narrow_trades(trades, distinct=distinct)
        unique = narrow if distinct else dedupe_narrow(narrow)
        partials = minute_partials(unique).persist(StorageLevel.MEMORY_AND_DISK)
        invalid = F.sum((~fast_path_valid()).cast("long")).alias("invalid")
        row = _totals_or_unpersist(partials, invalid)
        if not row["invalid"]:
            path = "fast, no duplicates by index" if distinct else "fast"
            minute = candles_from_partials(partials)
            return _Minutes(minute, path, partials, *row[:3])
        log.info("fast path preconditions do not hold: recomputing with exact decimals")
        partials.unpersist()
    minute = minute_candles_exact(dedupe_trades(trades)).persist(StorageLevel.MEMORY_AND_DISK)
    return _Minutes(minute, "exact", minute, *_totals_or_unpersist(minute)[:3])


def _totals_or_unpersist(df: DataFrame, *extra: Column) -> Row:
    # A failed job must not leave its cache behind: a Connect server outlives the run.
    try:
        return _totals(df, *extra)
    except BaseException:
        df.unpersist()
        raise


def _largest(trades: DataFrame, minute: DataFrame) -> DataFrame:
    """The day's largest trades, from the few candidate minutes only (a second, small scan)."""
    windows = largest_trade_windows(minute).collect()
    cond = F.lit(False)
    for w in windows:
        cond = cond | (
            (F.col("exchange") == w["exchange"])
            & (F.col("symbol") == w["symbol"])
            & (F.col("event_time") >= w["open_time"])
            & (F.col("event_time") < w["open_time"] + Interval.M1.ms)
        )
    return largest_trades(dedupe_trades(trades.filter(cond)))


def _file_rows(lake: Lake, directory: str) -> int:
    rows = 0
    for name in lake.list_files(directory):
        if name.endswith(".parquet"):
            rows += pq.ParquetFile(f"{directory}/{name}", filesystem=lake.fs).metadata.num_rows
    return rows


def replace_dir(lake: Lake, new: str, final: str) -> None:
    """Put directory ``new`` where ``final`` is, replacing it (rename, rename, delete)."""
    parent, _, name = final.rpartition("/")
    lake.mkdir(parent)
    old = f"{parent}/.{name}.old-{uuid.uuid4().hex[:8]}"
    had_old = lake.exists(final)
    if had_old:
        lake.fs.move(final, old)
    lake.fs.move(new, final)
    if had_old:
        lake.fs.delete_dir(old)


def _remove_dir(lake: Lake, path: str) -> None:
    if lake.fs.get_file_info(path).type == pafs.FileType.Directory:
        lake.fs.delete_dir(path)


def run_batch_day(
    spark: SparkSession,
    lake: Lake,
    day: date,
    *,
    exact_only: bool = False,
    use_index: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> BatchResult:
    """Compute and write the day's batch candles (every interval) and aggregates.

    Does not check sealing (see :mod:`batch.sealing`; the command does).

    Args:
        spark: a session with exact decimal settings (:func:`batch.spark.build_session`).
        lake: the lake.
        day: the UTC day.
        exact_only: skip the fast path (tests use it to compare the two).
        use_index: skip deduplication when the trade files' indexes prove there
            are no duplicates (:func:`lake.tradekeys.proves_distinct`).
        on_stage: called with each of :data:`STAGES` as it begins (progress).

    Returns:
        Counts and what was written.

    Raises:
        NoTradesError: the lake has no trades for the day.

    """
    stage = on_stage or (lambda _: None)
    started = time.monotonic()
    files = day_files(lake, day)
    stage(STAGES[0])
    check_exact_decimals(spark)
    distinct = use_index and proves_distinct(lake, files)
    trades = read_day_trades(spark, lake, day, files)
    stage(STAGES[1])
    m = minute_candles(trades, exact_only=exact_only, distinct=distinct)
    result = BatchResult(
        day, trades=m.trades, duplicates=m.duplicates, conflicts=m.conflicts, path=m.path
    )
    try:
        stage(STAGES[2])
        largest = _largest(trades, m.minute)
        # Readers go back to the stream's candles for the day until the new candles
        # are reconciled (lake.published): withdrawn before the first write.
        result.run = begin_batch_run(lake, day)
        stage(STAGES[3])
        _write_candles(lake, day, m.minute, result)
        stage(STAGES[4])
        _write_aggregates(lake, day, daily_aggregates(m.minute, largest), result)
        result.symbols = result.aggregates  # one aggregate row per (exchange, symbol)
        end_batch_run(lake, day, result.run)
    finally:
        m.persisted.unpersist()
    result.seconds = time.monotonic() - started
    return result


def _write_candles(lake: Lake, day: date, minute: DataFrame, result: BatchResult) -> None:
    base = f"{CANDLES_DIR}/source={BATCH_SOURCE}"
    staging = f".staging-{partition(day)}-{uuid.uuid4().hex[:12]}"
    candles = all_intervals(minute).select(
        *CANDLE_COLUMNS, "interval", F.lit(day.isoformat()).alias("date")
    )
    (
        candles.coalesce(1)
        .sortWithinPartitions("interval", "date", "exchange", "symbol", "open_time")
        .write.partitionBy("interval", "date")
        .parquet(lake.spark_uri(base, staging))
    )
    try:
        for label in INTERVAL_LABELS:
            new = lake.path(base, staging, f"interval={label}", partition(day))
            final = lake.candles_dir(BATCH_SOURCE, label, day)
            if lake.exists(new):
                result.candles[label] = _file_rows(lake, new)
                replace_dir(lake, new, final)
                result.written.append(final)
            else:  # no trades at all: the day's old partition goes too
                result.candles[label] = 0
                _remove_dir(lake, final)
    finally:
        _remove_dir(lake, lake.path(base, staging))


def _write_aggregates(lake: Lake, day: date, aggregates: DataFrame, result: BatchResult) -> None:
    staging = f".staging-{partition(day)}-{uuid.uuid4().hex[:12]}"
    (
        aggregates.coalesce(1)
        .sortWithinPartitions("exchange", "symbol")
        .write.parquet(lake.spark_uri(AGGREGATES_DIR, staging))
    )
    new = lake.path(AGGREGATES_DIR, staging)
    final = lake.aggregates_dir(day)
    try:
        result.aggregates = _file_rows(lake, new)
        replace_dir(lake, new, final)
        result.written.append(final)
    finally:
        _remove_dir(lake, new)
