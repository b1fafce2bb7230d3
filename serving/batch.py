"""The batch layer's candles for readers (``cryptopipe candles --source batch|merged``).

Read from the lake with pyarrow (no Spark): ``candles/source=batch/``.
"""

from __future__ import annotations

from datetime import date

import pyarrow.parquet as pq

from lake.candles import candle_days, read_batch_candles
from lake.layout import Lake
from lake.published import published_days
from marketdata.interval import Interval
from marketdata.records import SOURCE_BATCH, CandleRecord
from marketdata.settings import Settings
from marketdata.timeutil import day_start_ms


class BatchCandleReader:
    """Batch candles from the lake (pyarrow, no Spark), as reader records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def published_days(self) -> set[date]:
        """Days served from the batch in the merged view (:mod:`lake.published`)."""
        return published_days(self.settings)

    def covered_days(self, interval: Interval) -> set[date]:
        """Days the batch layer has candles of ``interval`` for."""
        return set(candle_days(self.settings, SOURCE_BATCH, interval))

    def _exchanges(self, symbol: str, exchange: str | None, interval: Interval) -> list[str]:
        if exchange:
            return [exchange]
        # The exchanges of the symbol in the newest day's candles of this interval.
        days = sorted(self.covered_days(interval))
        if not days:
            return []
        lake = Lake(self.settings.lake)
        directory = lake.candles_dir(SOURCE_BATCH, interval.label, days[-1])
        found: set[str] = set()
        for name in lake.list_files(directory):
            table = pq.read_table(
                f"{directory}/{name}",
                filesystem=lake.fs,
                partitioning=None,
                columns=["exchange", "symbol"],
            )
            found |= {
                e
                for e, s in zip(
                    table.column("exchange").to_pylist(),
                    table.column("symbol").to_pylist(),
                    strict=True,
                )
                if s == symbol
            }
        return sorted(found)

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Batch candles with ``start <= open_time < end``."""
        out = []
        for ex in self._exchanges(symbol, exchange, interval):
            for c in read_batch_candles(self.settings, ex, symbol, interval, start, end):
                out.append(CandleRecord(c, True, SOURCE_BATCH))
        return out

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The last batch candle before ``before`` (within the covered days)."""
        days = sorted(d for d in self.covered_days(interval) if day_start_ms(d) < before)
        for d in reversed(days):
            start = day_start_ms(d)
            found = read_batch_candles(self.settings, exchange, symbol, interval, start, before)
            if found:
                return CandleRecord(found[-1], True, SOURCE_BATCH)
        return None
