"""The Parquet lake, shared by both layers (docs/batch.md).

:mod:`lake.layout` (where each kind of file lives, atomic writes),
:mod:`lake.schemas` (the Arrow schemas), :mod:`lake.arrow` (exact conversions
between scaled integers and Arrow), :mod:`lake.tradekeys` (the trade-id index),
:mod:`lake.writer` (the append-only trade writer), :mod:`lake.trades` and
:mod:`lake.candles` (reading and writing trades, candles and aggregates). Pure
Python and pyarrow: no Spark, no Redis, no bytewax. The archive flow writes trades
with it, ``cryptopipe lake import`` writes history, the batch job reads it with
Spark.
"""
