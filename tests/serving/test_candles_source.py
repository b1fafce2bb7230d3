"""``cryptopipe candles --source merged|batch``: a reconciled day is served from the batch."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest
import redis

from lake.candles import write_day_candles
from lake.published import NotPublishableError, batch_run, is_published, publish, withdraw
from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.records import SOURCE_BATCH
from marketdata.trade import Trade
from streaming.candlestore import CandleStore, CandleWrites
from tests.processes import run_cryptopipe

DAY = date(2025, 3, 14)
T0 = 1_741_910_400_000


def c(minute: int, price: int, ex: str = "binance") -> Candle:
    t = Trade(
        exchange=ex,
        symbol="BTCUSDT",
        trade_id=minute + 1,
        price_e8=price * 10**8,
        quantity_e8=10**8,
        event_time=T0 + minute * 60_000,
        is_buyer_maker=False,
    )
    return Candle.from_trade(t, Interval.M1)


def candles(env: dict[str, str], source: str, *extra: str) -> list[dict]:
    argv = ["candles", "BTCUSDT", "--interval", "1m", "--source", source, "--format", "json"]
    out = run_cryptopipe(env, *argv, *extra, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_day_is_the_batchs_once_reconciled(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    next_day = 1440
    # Stream: minutes 0, 1 (wrong price), 2 (only in the stream) of DAY, and one next day.
    CandleStore(redis_client).write(
        [CandleWrites("md:trades:raw", closed=[c(0, 100), c(1, 999), c(2, 102), c(next_day, 200)])]
    )
    assert [r["close"] for r in candles(env, "merged")] == [
        "100.00000000",
        "999.00000000",
        "102.00000000",
        "200.00000000",
    ]
    # The batch layer computes DAY: minutes 0 and 1 (right price), no minute 2; and
    # the day before, which the stream never saw (history imported into the lake).
    lake = tmp_path / "lake"
    write_day_candles(lake, SOURCE_BATCH, DAY, [c(0, 100), c(1, 101)])
    write_day_candles(lake, SOURCE_BATCH, date(2025, 3, 13), [c(-1, 90)])
    stream_view = [(T0 + m * 60_000, "stream") for m in (0, 1, 2, next_day)]
    before = [(T0 - 60_000, "batch")]
    # Not reconciled: DAY stays the stream's; the day before is the batch's alone.
    assert [(r["open_time"], r["source"]) for r in candles(env, "merged")] == before + stream_view
    # A failed reconciliation does not change that.
    summary = {"date": str(DAY), "unexplained": 1, "batch_run": batch_run(lake, DAY)}
    with pytest.raises(NotPublishableError, match="1 unexplained"):
        publish(lake, DAY, summary)
    assert [(r["open_time"], r["source"]) for r in candles(env, "merged")] == before + stream_view
    # A passing one of other batch candles than the lake's does not either.
    with pytest.raises(NotPublishableError, match="reconcile again"):
        publish(lake, DAY, {**summary, "unexplained": 0, "batch_run": "an-older-run"})
    assert not is_published(lake, DAY)
    # Once it passes, the whole day is the batch's.
    publish(lake, DAY, {**summary, "unexplained": 0})
    merged = candles(env, "merged")
    assert [(r["open_time"], r["close"], r["source"]) for r in merged] == [
        (T0 - 60_000, "90.00000000", "batch"),
        (T0, "100.00000000", "batch"),
        (T0 + 60_000, "101.00000000", "batch"),
        (T0 + next_day * 60_000, "200.00000000", "stream"),
    ]
    # Withdrawn (the batch runs again): the stream's once more.
    withdraw(lake, DAY)
    assert [(r["open_time"], r["source"]) for r in candles(env, "merged")] == before + stream_view
    batch = candles(env, "batch", "--start", str(T0))
    assert [r["open_time"] for r in batch] == [T0, T0 + 60_000]
    assert all(r["source"] == "batch" and r["closed"] for r in batch)
    assert candles(env, "batch", "--exchange", "kraken") == []
