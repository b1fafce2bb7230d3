"""The merged view, and the reader for each ``--source``.

In the merged view, a day for which the batch layer has candles is served from the
batch layer alone: its candles supersede the stream's for the whole day, including
stream candles the batch does not have (docs/architecture.md sections 1 and 5).
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
        # A day the batch layer has computed is served from it alone
        # (docs/architecture.md sections 1 and 5).
        covered = getattr(self.batch, "covered_days", None)
        days = {day_start_ms(d) // DAY_MS for d in covered(interval)} if covered else set()
        by_key = {r.candle.key: r for r in got if r.candle.open_time // DAY_MS not in days}
        by_key.update({r.candle.key: r for r in batch})
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
