"""Transforms on small DataFrames: rounding, and the fast path against the exact one."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType
from pyspark.testing import assertDataFrameEqual

from batch.schemas import CANDLE_COLUMNS, QUOTE, TRADES, VOLUME
from batch.transforms import (
    all_intervals,
    candles_from_partials,
    dedupe_narrow,
    dedupe_trades,
    fast_path_valid,
    minute_candles_exact,
    minute_partials,
    narrow_trades,
    ratio_e8,
)
from marketdata.decimals import div_half_even, e8_to_decimal
from marketdata.interval import ALL_INTERVALS

D0 = 1_741_910_400_000

CASES = [  # (quote_volume, volume)
    ("2.0000000300000000", "2.00000000"),  # 1.000000015 -> ...02 (tie, up to even)
    ("2.0000000100000000", "2.00000000"),  # 1.000000005 -> ...00 (tie, down to even)
    ("0.0000000300000000", "0.00000002"),  # 1.5e-8 / 1e-8 units: tie -> 2
    ("0.0000000500000000", "0.00000002"),  # 2.5 units -> 2
    ("10.0000000000000000", "3.00000000"),  # 3.33333333|3
    ("20.0000000000000000", "3.00000000"),  # 6.66666666|7
    # Widest possible: the highest price times the largest volume (a VWAP never
    # exceeds the high, so it always fits the price type).
    ("99999999999999999900.0000000000000000", "10000000000.00000000"),
    ("200000000000000000000.0000000000000000", "30000000000.00000000"),  # ...66|67 -> up
]


def test_ratio_is_half_even_where_spark_rounds_half_up(spark: SparkSession) -> None:
    schema = StructType([StructField("quote_volume", QUOTE), StructField("volume", VOLUME)])
    rows = [(Decimal(q), Decimal(v)) for q, v in CASES]
    df = spark.createDataFrame(rows, schema)
    got = df.select("quote_volume", "volume", ratio_e8("quote_volume", "volume").alias("vwap"))
    want = [
        (q, v, e8_to_decimal(div_half_even(int(q.scaleb(16)), int(v.scaleb(8))))) for q, v in rows
    ]
    assertDataFrameEqual(got, spark.createDataFrame(want, got.schema))
    # Spark's own rounding gets the second tie wrong (why the integer method exists).
    spark_round = df.select(F.round(F.col("quote_volume") / F.col("volume"), 8)).collect()
    assert spark_round[1][0] == Decimal("1.00000001")
    assert want[1][2] == Decimal("1.00000000")


def trades_df(spark: SparkSession, rows: list[tuple[object, ...]]):  # type: ignore[no-untyped-def]
    # (symbol, id, price, qty, time, maker[, span])
    data = [
        ("binance", *r[:2], Decimal(r[2]), Decimal(r[3]), *r[4:6], r[6] if len(r) > 6 else None)
        for r in rows
    ]
    return spark.createDataFrame(data, TRADES)


@pytest.mark.parametrize("distinct", [False, True])
def test_fast_path_equals_exact_path_on_every_interval(spark: SparkSession, distinct: bool) -> None:
    rows = [
        ("AUSDT", 5, "10.5", "0.001", D0 + 59_999, False),
        ("AUSDT", 3, "10.7", "2", D0 + 59_999, True),  # same ms: id 3 opens
        ("AUSDT", 9, "9.99999999", "0.00000001", D0 + 60_000, False),  # next minute
        ("AUSDT", 1, "11", "1.5", D0, True),  # first of the day, arrives last
        ("AUSDT", 20, "10.6", "3", D0 + 59_999, True, 4),  # an aggregate of ids 20..23
        ("BUSDT", 7, "9999999999.99999999", "999999.99999999", D0 + 3_600_000, False),
        ("BUSDT", 8, "0.00000001", "91000000000", D0 + 3_600_001, False),
    ]
    if not distinct:
        rows += rows[:2]  # duplicates
    trades = trades_df(spark, rows)
    narrow = narrow_trades(trades, distinct=distinct)
    partials = minute_partials(narrow if distinct else dedupe_narrow(narrow))
    assert partials.filter(~fast_path_valid()).count() == 0
    fast = all_intervals(candles_from_partials(partials))
    exact = all_intervals(minute_candles_exact(dedupe_trades(trades)))
    assertDataFrameEqual(fast, exact)
    # The aggregate counts 4 trades and closes the minute by its last id.
    first = fast.filter((F.col("interval") == "1m") & (F.col("open_time") == D0)).collect()
    assert [(r["trade_count"], r["last_trade_id"], r["close"]) for r in first] == [
        (7, 23, Decimal("10.6"))
    ]
    n = len(ALL_INTERVALS)
    assert fast.count() == (2 + n - 1) + n  # A: 2 minutes, 1 window per coarser; B: 1 each
    assert fast.columns == [*CANDLE_COLUMNS, "interval"]


def test_fast_path_refuses_what_it_cannot_do_exactly(spark: SparkSession) -> None:
    rows = [
        ("AUSDT", 2**47, "1", "1", D0, False),  # id too large to pack
        ("BUSDT", 1, "1", "100000000000", D0, False),  # quantity beyond long in 1e-8
        ("CUSDT", 1, "1", "1", D0, False),
    ]
    partials = minute_partials(dedupe_narrow(narrow_trades(trades_df(spark, rows))))
    ok = {
        r["symbol"]: r["ok"]
        for r in partials.select("symbol", fast_path_valid().alias("ok")).collect()
    }
    assert ok == {"AUSDT": False, "BUSDT": False, "CUSDT": True}
