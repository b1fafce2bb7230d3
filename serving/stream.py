"""The speed layer's candles, read from Redis: closed ones plus the open window's live one."""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis

from marketdata.interval import Interval
from marketdata.records import SOURCE_STREAM, CandleRecord, candle_from_record
from marketdata.settings import Settings
from redisstore.keys import (
    counts_key,
    exchanges_key,
    index_key,
    live_key,
    raw_stream_of,
    series_key,
)


class StreamCandleReader:
    """The speed layer's candles: closed ones, plus the live candle of the open window."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def exchanges(self, symbol: str) -> list[str]:
        """Exchanges that have candles of ``symbol``."""
        return sorted(x.decode() for x in self.client.smembers(exchanges_key(symbol)))  # type: ignore[union-attr]

    def read(
        self,
        symbol: str,
        interval: Interval,
        *,
        exchange: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[CandleRecord]:
        """Closed candles in range, then the live one when its window is in range."""
        out: list[CandleRecord] = []
        for ex in [exchange] if exchange else self.exchanges(symbol):
            out += self._series(ex, symbol, interval, start, end)
        return out

    def _series(
        self, ex: str, symbol: str, interval: Interval, start: int | None, end: int | None
    ) -> list[CandleRecord]:
        lo = "-inf" if start is None else start
        hi = "+inf" if end is None else f"({end}"
        members = self.client.zrangebyscore(index_key(ex, symbol, interval), lo, hi)
        out: list[CandleRecord] = []
        if members:
            values: list[Any] = self.client.hmget(series_key(ex, symbol, interval), members)  # type: ignore[arg-type]
            for v in values:
                if v is not None:
                    out.append(CandleRecord(candle_from_record(orjson.loads(v)), True, "stream"))
        live = self.client.hget(live_key(ex, symbol), interval.label)
        if live is not None:
            c = candle_from_record(orjson.loads(cast(bytes, live)))
            in_range = (start is None or c.open_time >= start) and (
                end is None or c.open_time < end
            )
            newer = not out or c.open_time > out[-1].candle.open_time
            if in_range and newer and not self._is_closed(ex, symbol, interval, c.open_time):
                out.append(CandleRecord(c, False, SOURCE_STREAM))
        return out

    def latest(
        self, symbol: str, interval: Interval, *, exchange: str | None = None, closed: int = 2
    ) -> list[CandleRecord]:
        """The newest ``closed`` closed candles of each exchange, then its live one."""
        out: list[CandleRecord] = []
        for ex in [exchange] if exchange else self.exchanges(symbol):
            newest: list[Any] = self.client.zrange(index_key(ex, symbol, interval), -closed, -1)
            start = int(newest[0]) if newest else None
            out += self._series(ex, symbol, interval, start, None)
        return out

    def _is_closed(self, ex: str, symbol: str, interval: Interval, open_time: int) -> bool:
        return self.client.zscore(index_key(ex, symbol, interval), str(open_time)) is not None

    def previous(
        self, symbol: str, interval: Interval, exchange: str, before: int
    ) -> CandleRecord | None:
        """The last closed candle before ``before``."""
        members: list[Any] = self.client.zrevrangebyscore(
            index_key(exchange, symbol, interval), f"({before}", "-inf", start=0, num=1
        )
        if not members:
            return None
        v = self.client.hget(series_key(exchange, symbol, interval), members[0])
        if v is None:
            return None
        return CandleRecord(candle_from_record(orjson.loads(cast(bytes, v))), True, SOURCE_STREAM)


def closed_until(
    client: redis.Redis, settings: Settings, symbol: str, flow: str = "candles"
) -> int:
    """The candles flow's watermark for ``symbol``'s partition (windows before it are closed)."""
    stream = raw_stream_of(symbol, settings.raw_shards)
    raw = client.hget(counts_key(flow, stream), "watermark")
    return int(cast(bytes, raw)) if raw is not None else 0
