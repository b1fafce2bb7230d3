"""Reading candles back: the store's layout, readers, gap filling (no flow needed)."""

from __future__ import annotations

from datetime import date

import pytest
import redis

from marketdata.candle import Candle, fold_trades
from marketdata.interval import Interval
from marketdata.records import CandleRecord, candle_from_record, candle_record
from marketdata.settings import Settings
from marketdata.timeutil import day_of_ms
from marketdata.trade import Trade
from redisstore.keys import index_key, live_key, series_key
from serving.batch import BatchCandleReader
from serving.gaps import fill_gaps
from serving.merged import MergedCandleReader, reader_for
from serving.stream import StreamCandleReader
from streaming.candlestore import CandleStore, CandleWrites

T0 = 1_741_910_400_000
M = 60_000


def trades(minutes: list[int], sym: str = "BTCUSDT", ex: str = "binance") -> list[Trade]:
    out = []
    for k, m in enumerate(minutes):
        for j in range(3):
            out.append(
                Trade(
                    exchange=ex,
                    symbol=sym,
                    trade_id=100 * k + j,
                    price_e8=(100 + k) * 10**8 + j,
                    quantity_e8=10**7 * (j + 1),
                    event_time=T0 + m * M + 1000 * j,
                    is_buyer_maker=j == 1,
                )
            )
    return out


def test_layout_keys_carry_the_symbol_hash_tag() -> None:
    for key in (
        series_key("binance", "BTCUSDT", Interval.M1),
        index_key("binance", "BTCUSDT", "1h"),
        live_key("okx", "BTCUSDT"),
    ):
        assert "{BTCUSDT}" in key
    assert series_key("binance", "BTCUSDT", Interval.M5) == "md:candles:{BTCUSDT}:binance:5m"


def test_stored_record_round_trips_exactly() -> None:
    c = fold_trades(trades([0, 1]), Interval.M1)[("binance", "BTCUSDT", "1m", T0)]
    rec = candle_record(c, closed=True)
    assert candle_from_record(rec) == c
    assert rec["quote_volume"].count(".") == 1 and isinstance(rec["open"], str)
    assert {"first_event_time", "last_event_time", "closed", "source"} <= set(rec)


def test_store_and_read_closed_and_live(redis_client: redis.Redis) -> None:
    ones = fold_trades(trades([0, 1, 2, 5]), Interval.M1)
    closed = [ones[k] for k in sorted(ones)][:3]
    live = ones[("binance", "BTCUSDT", "1m", T0 + 5 * M)]
    store = CandleStore(redis_client)
    batch = CandleWrites("md:trades:raw", closed=closed, live=[live])
    assert store.write([batch, batch]) == 8  # twice: upserts, one copy
    reader = StreamCandleReader(redis_client)
    got = reader.read("BTCUSDT", Interval.M1)
    assert [r.candle for r in got] == [*closed, live]
    assert [r.closed for r in got] == [True, True, True, False]
    assert redis_client.xlen("md:candles:closed") == 3
    # Ranges: start inclusive, end exclusive, on open_time.
    got = reader.read("BTCUSDT", Interval.M1, start=T0 + M, end=T0 + 5 * M)
    assert [r.candle.open_time for r in got] == [T0 + M, T0 + 2 * M]
    # A live candle of a window already closed is not shown twice.
    store.write([CandleWrites("s", closed=[live])])
    got = reader.read("BTCUSDT", Interval.M1)
    assert [r.closed for r in got] == [True] * 4
    assert reader.exchanges("BTCUSDT") == ["binance"]


def test_fill_gaps_uses_previous_close_and_zero_volume() -> None:
    ones = fold_trades(trades([0, 3]), Interval.M1)
    recs = [CandleRecord(ones[k], True, "stream") for k in sorted(ones)]
    out = fill_gaps(
        recs, Interval.M1, start=None, end=None, previous={}, closed_until_ms=T0 + 10 * M
    )
    assert [r.candle.open_time for r in out] == [T0 + m * M for m in range(4)]
    assert [r.filled for r in out] == [False, True, True, False]
    gap = out[1].to_json_dict(with_filled=True)
    first = recs[0].candle
    assert gap["open"] == gap["close"] == gap["high"] == gap["low"] == Candle.fields(first)["close"]
    assert gap["volume"] == "0.00000000" and gap["trade_count"] == 0 and gap["filled"] is True
    assert gap["vwap"] is None and gap["first_trade_id"] is None
    # With a range: leading windows from the candle before it, trailing ones while closed.
    out = fill_gaps(
        recs[1:],
        Interval.M1,
        start=T0 + M,
        end=T0 + 8 * M,
        previous={"binance": recs[0]},
        closed_until_ms=T0 + 6 * M,
    )
    assert [r.candle.open_time for r in out] == [T0 + m * M for m in range(1, 6)]
    assert [r.filled for r in out] == [True, True, False, True, True]


def test_sources(redis_client: redis.Redis) -> None:
    settings = Settings()
    assert isinstance(reader_for("stream", settings, redis_client), StreamCandleReader)
    merged = reader_for("merged", settings, redis_client)
    assert isinstance(merged, MergedCandleReader)
    assert isinstance(merged.batch, BatchCandleReader)
    assert isinstance(reader_for("batch", settings, redis_client), BatchCandleReader)
    with pytest.raises(ValueError, match="unknown source"):
        reader_for("lake", settings, redis_client)


def test_merged_reader_serves_a_day_from_the_batch_once_published(
    redis_client: redis.Redis,
) -> None:
    ones = fold_trades(trades([0, 1]), Interval.M1)
    a, b = (ones[k] for k in sorted(ones))
    CandleStore(redis_client).write([CandleWrites("s", closed=[a, b])])
    published: set[date] = set()

    class Batch:
        def read(self, symbol, interval, *, exchange=None, start=None, end=None):
            return [CandleRecord(a, True, "batch")]

        def previous(self, symbol, interval, exchange, before):
            return None

        def published_days(self):
            return published

    merged = MergedCandleReader(StreamCandleReader(redis_client), Batch())
    # Not published: the stream has candles of the day, so the day is the stream's.
    got = merged.read("BTCUSDT", Interval.M1)
    assert [(r.candle.open_time, r.source) for r in got] == [(T0, "stream"), (T0 + M, "stream")]
    # Published: the whole day is the batch's, even the minute only the stream has.
    published.add(day_of_ms(T0))
    got = merged.read("BTCUSDT", Interval.M1)
    assert [(r.candle.open_time, r.source) for r in got] == [(T0, "batch")]
    # A day the stream has nothing of is the batch's, published or not.
    published.clear()
    redis_client.flushall()
    got = merged.read("BTCUSDT", Interval.M1)
    assert [(r.candle.open_time, r.source) for r in got] == [(T0, "batch")]
