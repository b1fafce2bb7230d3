"""``cryptopipe metrics`` says which indicators are still warming up (real metrics flow)."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.trade import Trade
from streaming.candlestore import CandleStore, CandleWrites
from tests.processes import cryptopipe_ok

T0 = 1_741_910_400_000
M = 60_000


def test_indicators_without_a_value_say_how_many_candles_they_need(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    trades = [
        Trade("binance", "BTCUSDT", m, (100 + m % 7) * 10**8, 10**7, T0 + m * M + 5, False)
        for m in range(20)
    ]
    closed = list(fold_trades(trades, Interval.M1).values())
    CandleStore(redis_client).write([CandleWrites("md:trades:raw", closed=closed)])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    out = cryptopipe_ok(env, "metrics", "BTCUSDT")
    assert out.splitlines()[-1] == (
        "warming up after 20 closed 1m candles: ema_26 needs 26, macd needs 26, "
        "macd_signal needs 34"
    )
    ema12 = next(line for line in out.splitlines() if line.startswith("ema_12"))
    assert ema12.split()[1] != "-"  # 20 candles: EMA 12 and RSI 14 have values
    # Warm: nothing said.
    more = [
        Trade("binance", "BTCUSDT", m, (100 + m % 7) * 10**8, 10**7, T0 + m * M + 5, False)
        for m in range(20, 40)
    ]
    closed = list(fold_trades(more, Interval.M1).values())
    CandleStore(redis_client).write([CandleWrites("md:trades:raw", closed=closed)])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    assert "warming up" not in cryptopipe_ok(env, "metrics", "BTCUSDT")
