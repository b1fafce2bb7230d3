"""Domain model of realtime-crypto-pipeline: trades, candles, intervals, parsing.

Pure Python: no dagster, pyspark, bytewax or redis import here or below (a test
checks it). Both the speed and the batch layer use these definitions, and tests of
both use :mod:`marketdata.candle` as the reference.
"""
