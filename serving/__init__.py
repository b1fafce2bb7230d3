"""Serving: what users read, from either layer or both (docs/architecture.md section 1).

:mod:`serving.stream` reads the speed layer's candles from Redis,
:mod:`serving.batch` the batch layer's from the lake, :mod:`serving.merged` combines
them (the batch view supersedes the speed view for the days it covers) and picks a
reader by source, and :mod:`serving.gaps` fills empty windows on request. The record
types and the reader protocol are the domain's (:mod:`marketdata.records`).
"""
