"""The merged view, and the reader for each ``--source``.

In the merged view, a day is served from the batch layer alone once it is published
(:mod:`lake.published`: its batch candles were reconciled against the stream with
nothing unexplained): the batch's candles supersede the stream's for the whole day,
including stream candles the batch does not have (docs/architecture.md sections 1
and 5). A day the batch computed but that is not published (not reconciled yet, or
its reconciliation failed) is served from the stream, as long as the stream has
candles of that day in the series read; where it has none (history imported into
the lake, a day Redis no longer holds), the batch is all there is and is served.
"""

from __future__ import annotations

import redis

from marketdata.interval import Interval
from marketdata.records import (
    SOURCE_BATCH,
    SOURCE_MERGED,
    SOURCE_STREAM,
    SOURCES,
    CandleReader,
    CandleRecord,
)
from marketdata.settings import Settings
from marketdata.timeutil import DAY_MS, day_start_ms
from serving.batch import BatchCandleReader
from serving.stream import StreamCandleReader


class MergedCandleReader:
    """What users get: the batch view for sealed days, the speed view for the rest.

    Until a batch reader is plugged in (``batch=None``), this is the speed view.
    """

    def __init__(self, stream: CandleReader, batch: CandleReader | None = None) -> None:
        self.stream = stream
        self.batch = batch

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Candles of both layers, the batch layer's winning where it has a candle."""
        got = self.stream.read(symbol, interval, exchange=exchange, start=start, end=end)
        if self.batch is None:
            return got
        batch = self.batch.read(symbol, interval, exchange=exchange, start=start, end=end)
        published = getattr(self.batch, "published_days", None)
        days = {day_start_ms(d) // DAY_MS for d in published()} if published else set()
        # A day published is the batch's alone; any other day is the stream's where it
        # has candles of that day, the batch's where it has none.
        stream_days = {r.candle.open_time // DAY_MS for r in got}
        by_key = {r.candle.key: r for r in got if r.candle.open_time // DAY_MS not in days}
        by_key.update(
            {
                r.candle.key: r
                for r in batch
                if (d := r.candle.open_time // DAY_MS) in days or d not in stream_days
            }
        )
        return [by_key[k] for k in sorted(by_key)]

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The later of the two layers' previous candles."""
        found = [
            r.previous(symbol, interval, exchange, before)
            for r in (self.stream, self.batch)
            if r is not None
        ]
        present = [r for r in found if r is not None]
        return max(present, key=lambda r: r.candle.open_time) if present else None


def reader_for(source: str, settings: Settings, client: redis.Redis) -> CandleReader:
    """The reader of ``--source merged|stream|batch``."""
    if source == SOURCE_STREAM:
        return StreamCandleReader(client)
    if source == SOURCE_BATCH:
        return BatchCandleReader(settings)
    if source == SOURCE_MERGED:
        return MergedCandleReader(StreamCandleReader(client), BatchCandleReader(settings))
    msg = f"unknown source {source!r}: use one of {', '.join(SOURCES)}"
    raise ValueError(msg)
