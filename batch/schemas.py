"""Spark schemas of the lake's tables (the pyarrow ones live in :mod:`lake.schemas`).

Decimal widths follow docs/architecture.md section 2: price < 10^10 and quantity < 10^12 with 8
fractional digits; sums of quantities get 38 digits, sums of price x quantity 38
digits with 16 fractional ones (exact: the product of two 8-digit fractions).
"""

from __future__ import annotations

from pyspark.sql.types import (
    BooleanType,
    DecimalType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

PRICE = DecimalType(18, 8)
QUANTITY = DecimalType(20, 8)
VOLUME = DecimalType(38, 8)
QUOTE = DecimalType(38, 16)

#: ``trades/date=D/*.parquet`` (same columns as :data:`lake.schemas.TRADES_SCHEMA`).
TRADES = StructType(
    [
        StructField("exchange", StringType(), False),
        StructField("symbol", StringType(), False),
        StructField("trade_id", LongType(), False),
        StructField("price", PRICE, False),
        StructField("quantity", QUANTITY, False),
        StructField("event_time", LongType(), False),
        StructField("is_buyer_maker", BooleanType(), False),
        # NULL: one trade (and files from before the column); else an aggregate's count.
        StructField("span", LongType(), True),
    ]
)

#: ``candles/source=S/interval=I/date=D/*.parquet``: every field of docs/architecture.md section 3.
#: ``interval`` and ``date`` are the directories, not columns of the files. The
#: ``first/last_event_time`` columns are the open and close trades' event times: with
#: the trade ids they are the order key that merging candles needs (the roll-up
#: rule, and reconciliation's "stream candle merged with its late trades").
CANDLES = StructType(
    [
        StructField("exchange", StringType(), False),
        StructField("symbol", StringType(), False),
        StructField("open_time", LongType(), False),
        StructField("open", PRICE, False),
        StructField("high", PRICE, False),
        StructField("low", PRICE, False),
        StructField("close", PRICE, False),
        StructField("volume", VOLUME, False),
        StructField("quote_volume", QUOTE, False),
        StructField("trade_count", LongType(), False),
        StructField("taker_buy_volume", VOLUME, False),
        StructField("vwap", PRICE, False),
        StructField("first_trade_id", LongType(), False),
        StructField("last_trade_id", LongType(), False),
        StructField("first_event_time", LongType(), False),
        StructField("last_event_time", LongType(), False),
    ]
)
CANDLE_COLUMNS = tuple(f.name for f in CANDLES.fields)

#: ``aggregates/date=D/*.parquet``: one row per (exchange, symbol) and UTC day.
AGGREGATES = StructType(
    [
        StructField("exchange", StringType(), False),
        StructField("symbol", StringType(), False),
        StructField("open_time", LongType(), False),  # the day's 00:00 UTC, ms
        StructField("open", PRICE, False),
        StructField("high", PRICE, False),
        StructField("low", PRICE, False),
        StructField("close", PRICE, False),
        StructField("volume", VOLUME, False),
        StructField("quote_volume", QUOTE, False),
        StructField("vwap", PRICE, False),
        StructField("trade_count", LongType(), False),
        StructField("taker_buy_volume", VOLUME, False),
        StructField("taker_buy_share", PRICE, False),  # taker_buy_volume / volume, half-even
        StructField("first_trade_id", LongType(), False),
        StructField("last_trade_id", LongType(), False),
        # sqrt(sum of squared log returns of consecutive 1m closes); a float statistic
        StructField("realized_volatility", DoubleType(), False),
        StructField("return_count", LongType(), False),
        StructField("active_minutes", LongType(), False),  # minutes with at least one trade
        StructField("trades_per_minute", PRICE, False),  # trade_count / 1440, half-even
        StructField("max_trades_per_minute", LongType(), False),
        # the trade with the largest price x quantity; ties: smallest (event_time, trade_id)
        StructField("largest_trade_id", LongType(), False),
        StructField("largest_trade_time", LongType(), False),
        StructField("largest_trade_price", PRICE, False),
        StructField("largest_trade_quantity", QUANTITY, False),
        StructField("largest_trade_quote", QUOTE, False),
    ]
)
AGGREGATE_COLUMNS = tuple(f.name for f in AGGREGATES.fields)
