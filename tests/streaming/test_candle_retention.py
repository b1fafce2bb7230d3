"""Closed-candle retention in Redis: old candles trimmed per key, cheaply, recent kept."""

from __future__ import annotations

import pytest
import redis

from marketdata.candle import Candle, fold_trades
from marketdata.interval import Interval
from marketdata.settings import (
    DEFAULT_CANDLE_RETENTION_MS,
    DEFAULT_LATENESS_MS,
    Settings,
    min_candle_retention_ms,
)
from marketdata.trade import Trade
from redisstore.keys import index_key, series_key, trimmed_key
from serving.stream import StreamCandleReader
from streaming.candlestore import TRIM_LIMIT, CandleStore, CandleWrites
from streaming.flows.candles import CandlesFlowConfig

T0 = 1_741_910_400_000
M = 60_000
DAY = 86_400_000


def candles(minutes: range, sym: str = "BTCUSDT", t0: int = T0) -> list[Candle]:
    trades = [
        Trade("binance", sym, m, (100 + m) * 10**8 + 1, 10**7, t0 + m * M + 5, False)
        for m in minutes
    ]
    ones = fold_trades(trades, Interval.M1)
    return [ones[k] for k in sorted(ones)]


def stored(client: redis.Redis, sym: str = "BTCUSDT") -> tuple[list[int], list[int]]:
    """Open times (minutes after T0) in the series hash and in its index."""
    key, idx = series_key("binance", sym, "1m"), index_key("binance", sym, "1m")
    in_hash = sorted((int(f) - T0) // M for f in client.hkeys(key))
    in_idx = [(int(t) - T0) // M for t in client.zrange(idx, 0, -1)]
    return in_hash, in_idx


def test_candles_older_than_the_retention_behind_the_newest_are_trimmed(
    redis_client: redis.Redis,
) -> None:
    store = CandleStore(redis_client, retention_ms=10 * M, trim_every_s=0)
    btc = candles(range(30))
    eth = candles(range(3), "ETHUSDT")
    store.write([CandleWrites("s", closed=eth)])
    for c in btc:  # 30 minutes, one candle per write, as the flow closes them
        store.write([CandleWrites("s", closed=[c])])
    # Newest 29: everything before 29 - 10 = 19 is gone, from the hash and the index.
    assert stored(redis_client) == (list(range(19, 30)), list(range(19, 30)))
    # What is kept is intact, and read back exactly.
    got = StreamCandleReader(redis_client).read("BTCUSDT", Interval.M1)
    assert [r.candle for r in got] == btc[19:]
    # Each key by its own newest candle: ETH's three are within 10 minutes of its newest.
    assert stored(redis_client, "ETHUSDT") == ([0, 1, 2], [0, 1, 2])


def test_a_key_is_trimmed_at_most_once_per_period(redis_client: redis.Redis) -> None:
    store = CandleStore(redis_client, retention_ms=10 * M, trim_every_s=3600)
    for c in candles(range(30)):
        store.write([CandleWrites("s", closed=[c])])
    # Trimmed at the first write only (nothing old then): all 30 still there.
    assert stored(redis_client) == (list(range(30)), list(range(30)))
    # Another process (a restart) trims at its first write.
    CandleStore(redis_client, retention_ms=10 * M).write(
        [CandleWrites("s", closed=candles(range(29, 30)))]
    )
    assert stored(redis_client) == (list(range(19, 30)), list(range(19, 30)))


def test_a_large_backlog_is_trimmed_a_limited_batch_per_write(redis_client: redis.Redis) -> None:
    store = CandleStore(redis_client, retention_ms=M, trim_every_s=3600)
    many = candles(range(2 * TRIM_LIMIT + 50))
    store.write([CandleWrites("s", closed=many)])  # newest 249: 248 candles are old
    left = [len(stored(redis_client)[0])]
    for _ in range(3):  # a write that hit the limit trims again at the next write
        store.write([CandleWrites("s", closed=many[-1:])])
        left.append(len(stored(redis_client)[0]))
    assert left == [150, 50, 2, 2]
    assert stored(redis_client) == ([248, 249], [248, 249])


def test_zero_retention_never_trims(redis_client: redis.Redis) -> None:
    store = CandleStore(redis_client, retention_ms=0, trim_every_s=0)
    for c in candles(range(5)):
        store.write([CandleWrites("s", closed=[c])])
    assert stored(redis_client) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])


def test_retention_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRYPTOPIPE_CANDLE_RETENTION_MS", raising=False)
    monkeypatch.delenv("CRYPTOPIPE_LATENESS_MS", raising=False)
    settings = Settings.from_env()
    assert settings.candle_retention_ms == DEFAULT_CANDLE_RETENTION_MS == 7 * DAY
    # The default outlives a day's seal and its batch's snapshot of the stream candles.
    assert DEFAULT_CANDLE_RETENTION_MS >= min_candle_retention_ms(DEFAULT_LATENESS_MS)
    monkeypatch.setenv("CRYPTOPIPE_CANDLE_RETENTION_MS", str(3 * DAY))
    settings = Settings.from_env()
    assert settings.candle_retention_ms == 3 * DAY
    assert Settings.from_env().env()["CRYPTOPIPE_CANDLE_RETENTION_MS"] == str(3 * DAY)
    cfg = CandlesFlowConfig.from_settings(settings)
    assert cfg.candle_retention_ms == 3 * DAY
    floor = min_candle_retention_ms(DEFAULT_LATENESS_MS)
    monkeypatch.setenv("CRYPTOPIPE_CANDLE_RETENTION_MS", str(floor - 1))
    with pytest.raises(
        ValueError, match=f"CRYPTOPIPE_CANDLE_RETENTION_MS={floor - 1}: must be at least {floor}"
    ):
        Settings.from_env()
    monkeypatch.setenv("CRYPTOPIPE_CANDLE_RETENTION_MS", "7d")
    with pytest.raises(ValueError, match="CRYPTOPIPE_CANDLE_RETENTION_MS='7d'"):
        Settings.from_env()


def test_a_trimmed_day_is_reconciled_from_its_lake_snapshot_never_overwritten(
    redis_client: redis.Redis, tmp_path
) -> None:
    from datetime import date, timedelta

    from batch.reconcile import StreamCandlesTrimmedError, snapshot_stream_day
    from lake.candles import read_day_candles
    from marketdata.records import SOURCE_STREAM
    from marketdata.timeutil import day_start_ms

    day = date(2025, 3, 14)
    settings = Settings(home=tmp_path, candle_retention_ms=7 * DAY)
    store = CandleStore(redis_client, retention_ms=7 * DAY, trim_every_s=0)

    def at(d: date, minutes: range) -> list[Candle]:
        return candles(minutes, t0=day_start_ms(d))

    store.write([CandleWrites("s", closed=at(day, range(3)))])
    store.write([CandleWrites("s", closed=at(day - timedelta(days=1), range(2)))])
    # Within the retention: read from Redis and copied to the lake, as before.
    first = snapshot_stream_day(settings, day, redis_client)
    assert sorted(k[3] for k in first) == [day_start_ms(day) + m * M for m in range(3)]
    # Another series far ahead (a live venue next to a replayed day) trims only its own
    # candles: the day is still read from Redis (a candle added since is in the copy).
    far = day + timedelta(days=400)
    store.write([CandleWrites("s", closed=candles(range(2), "ETHUSDT", t0=day_start_ms(far)))])
    store.write(
        [
            CandleWrites(
                "s", closed=candles(range(1), "ETHUSDT", t0=day_start_ms(far + timedelta(days=9)))
            )
        ]
    )
    store.write([CandleWrites("s", closed=at(day, range(3, 4)))])
    first = snapshot_stream_day(settings, day, redis_client)
    assert sorted(k[3] for k in first if k[1] == "BTCUSDT") == [
        day_start_ms(day) + m * M for m in range(4)
    ]
    # it records the day it trimmed (every interval its own)
    days = redis_client.zrange(trimmed_key("binance", "ETHUSDT", Interval.M1), 0, -1)
    assert days == [str(day_start_ms(far)).encode()]
    # Eight days on, the store trims the day from Redis...
    store.write([CandleWrites("s", closed=at(day + timedelta(days=8), range(1)))])
    assert stored(redis_client)[0] == [(day_start_ms(day + timedelta(days=8)) - T0) // M]
    # ... and reconciling it uses the lake's snapshot, left as it was.
    assert snapshot_stream_day(settings, day, redis_client) == first
    assert read_day_candles(tmp_path / "lake", SOURCE_STREAM, day) == first
    # A trimmed day never snapshotted cannot be reconciled, and says why.
    with pytest.raises(
        StreamCandlesTrimmedError, match="Redis no longer holds all stream candles of 2025-03-13"
    ):
        snapshot_stream_day(settings, day - timedelta(days=1), redis_client)
