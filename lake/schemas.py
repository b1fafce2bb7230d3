"""The lake's Arrow schemas: trades, rejections and candles, all with exact decimals.

Prices are ``decimal(18, 8)`` (price < 10^10), quantities ``decimal(20, 8)``
(quantity < 10^12), volumes ``decimal(38, 8)`` and quote volumes ``decimal(38, 16)``:
scaled integers laid into Arrow decimals, never floats (docs/architecture.md
section 2). The batch layer's Spark schemas (``batch/schemas.py``) describe the same
columns.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from marketdata.decimals import SCALE_DIGITS

#: Largest trade id the lake holds (Parquet int64).
MAX_LAKE_TRADE_ID = 2**63 - 1

PRICE_TYPE = pa.decimal128(10 + SCALE_DIGITS, SCALE_DIGITS)  # price < 10^10
QUANTITY_TYPE = pa.decimal128(12 + SCALE_DIGITS, SCALE_DIGITS)  # quantity < 10^12

#: The typed, append-only trades table (one row per trade as archived; duplicates
#: may occur across files and are removed by the batch job).
TRADES_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("price", PRICE_TYPE, nullable=False),
        pa.field("quantity", QUANTITY_TYPE, nullable=False),
        pa.field("event_time", pa.int64(), nullable=False),  # ms since the epoch, UTC
        pa.field("is_buyer_maker", pa.bool_(), nullable=False),
        # Trades the row stands for: NULL for a single trade (and in files written
        # before the column existed), ``last - first + 1`` for an aggregate trade whose
        # ids are trade_id .. trade_id + span - 1 (marketdata.trade.Trade.span).
        pa.field("span", pa.int64(), nullable=True),
    ]
)

#: Rows that failed validation, kept with their reason and the raw payload.
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # stream name or input file
        pa.field("source_id", pa.string(), nullable=False),  # stream entry id or line number
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
    ]
)

#: Parquet options shared by every trade file: int64-backed decimals where they fit
#: (Spark's vectorized reader is fastest on those), snappy for speed.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "snappy",
    "store_decimal_as_integer": True,
    "write_statistics": True,
}

VOLUME_TYPE = pa.decimal128(38, 8)
QUOTE_TYPE = pa.decimal128(38, 16)

#: The exchange's own 1m candles (``klines/date=D/``), as Binance publishes them: every
#: decimal exactly as written, times in ms. Prices and base volumes have 8 fractional
#: digits; the quote volumes 16, like the candles' quote volume, since USD-M futures
#: write exact sums of price x quantity (files written before the quote volumes were
#: ``decimal(38, 16)`` have them as ``decimal(38, 8)``; readers take either).
KLINES_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("open_time", pa.int64(), nullable=False),
        pa.field("open", PRICE_TYPE, nullable=False),
        pa.field("high", PRICE_TYPE, nullable=False),
        pa.field("low", PRICE_TYPE, nullable=False),
        pa.field("close", PRICE_TYPE, nullable=False),
        pa.field("volume", VOLUME_TYPE, nullable=False),
        pa.field("quote_volume", QUOTE_TYPE, nullable=False),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("taker_buy_volume", VOLUME_TYPE, nullable=False),
        pa.field("taker_buy_quote_volume", QUOTE_TYPE, nullable=False),
    ]
)

#: Candles of both sources (``candles/source=batch|stream/``), so reconciliation and
#: readers treat them alike. The interval and the day are in the partition path (as
#: Spark's ``partitionBy`` writes them) and are not columns.
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
