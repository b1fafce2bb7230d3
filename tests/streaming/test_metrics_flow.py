"""The metrics flow, end to end: simulated trades -> candles flow -> metrics flow.

Indicators are checked against TA-Lib over the whole history, the session VWAP
against an exact Decimal sum of the candles, and the flow against replays, duplicate
events and a SIGKILL in the middle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
import talib

from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.trade import Trade
from redisstore.keys import (
    ANOMALIES_STREAM,
    CLOSED_EVENTS_STREAM,
    history_key,
    metrics_key,
    spread_key,
    written_key,
)
from streaming.candlestore import CandleStore, CandleWrites
from tests.processes import cryptopipe_ok

T0 = 1_741_910_400_000
WARMUP = 150


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}


def metrics_state(client: redis.Redis) -> dict[str, object]:
    keys = sorted(client.scan_iter(match="md:metrics:*"))
    out: dict[str, object] = {}
    for k in keys:
        kind = client.type(k)
        out[k.decode()] = client.hgetall(k) if kind == b"hash" else client.zrange(k, 0, -1)
    # The order across symbols follows batch interleaving; the set is what must match.
    out["anomalies"] = sorted(sorted(f.items()) for _, f in client.xrange(ANOMALIES_STREAM))
    return out


@pytest.fixture
def session(env: dict[str, str], redis_client: redis.Redis) -> dict[str, str]:
    # ~420 one-minute candles per symbol (7 h of market); 0.5% malformed, some dupes.
    cryptopipe_ok(
        env,
        "feed",
        "simulate",
        "--start",
        "2025-03-14T20:00:00Z",
        "--duration",
        "25200",
        "--rate",
        "4",
        "--speed",
        "max",
        "--seed",
        "5",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--duplicates",
        "0.01",
        "--malformed",
        "0.005",
    )
    cryptopipe_ok(env, "stream", "run", "candles", "--exit-when-idle", "1.5")
    # Per symbol: 420 (1m) + 84 (5m) + 28 (15m) + 7 (1h) + 1..2 (4h) + 1 (1d) closed events.
    assert redis_client.xlen(CLOSED_EVENTS_STREAM) >= 2 * (420 + 84 + 28 + 7 + 1 + 1)
    return env


def test_indicators_equal_talib_and_vwap_is_exact(
    session: dict[str, str], redis_client: redis.Redis
) -> None:
    cryptopipe_ok(session, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    candles = [
        json.loads(line)
        for line in cryptopipe_ok(
            session, "candles", "BTCUSDT", "--interval", "1m", "--format", "json"
        ).splitlines()
    ]
    assert len(candles) > 400
    closes = np.array([float(c["close"]) for c in candles])
    history = [
        orjson.loads(m) for m in redis_client.zrange(history_key("binance", "BTCUSDT"), 0, -1)
    ]
    assert [h["open_time"] for h in history] == [c["open_time"] for c in candles]
    ema12, ema26 = talib.EMA(closes, 12), talib.EMA(closes, 26)
    rsi = talib.RSI(closes, 14)
    macd, sig, hist = talib.MACD(closes, 12, 26, 9)
    for i, h in enumerate(history):
        if i >= 25:
            assert h["ema_12"] == pytest.approx(ema12[i], rel=1e-12)
            assert h["ema_26"] == pytest.approx(ema26[i], rel=1e-12)
        if i >= 14:
            assert h["rsi_14"] == pytest.approx(rsi[i], rel=1e-9)
        if i >= WARMUP:
            for key, ref in (("macd", macd), ("macd_signal", sig), ("macd_hist", hist)):
                assert abs(h[key] - ref[i]) <= 1e-9 * closes[i], (i, key)
    # Session VWAP (resets at 00:00 UTC): an exact Decimal sum over the day's candles.
    day = candles[-1]["open_time"] // 86_400_000
    today = [c for c in candles if c["open_time"] // 86_400_000 == day]
    q = sum(Decimal(c["quote_volume"]) for c in today)
    v = sum(Decimal(c["volume"]) for c in today)
    latest = json.loads(cryptopipe_ok(session, "metrics", "BTCUSDT", "--format", "json"))
    assert Decimal(latest["vwap"]) == (q / v).quantize(Decimal("1e-8"))
    assert latest["open_time"] == candles[-1]["open_time"]
    assert latest["close"] == candles[-1]["close"]
    assert set(latest) >= {
        "symbol",
        "open_time",
        "close",
        "ema_12",
        "ema_26",
        "macd",
        "macd_signal",
        "macd_hist",
        "rsi_14",
        "vwap",
        "price_anomaly",
        "volume_anomaly",
    }


@pytest.mark.slow
def test_replays_duplicates_and_sigkill_change_nothing(
    session: dict[str, str], redis_client: redis.Redis
) -> None:
    cryptopipe_ok(session, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    clean = metrics_state(redis_client)
    assert clean["anomalies"], "the session should trip some anomaly flags"
    # Running again over the same events, and with duplicated events: nothing moves.
    for _, fields in redis_client.xrange(CLOSED_EVENTS_STREAM, count=50):
        redis_client.xadd(CLOSED_EVENTS_STREAM, fields)
    cryptopipe_ok(session, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    assert metrics_state(redis_client) == clean
    # From scratch, stopped by SIGTERM once (exit 0, promptly) and killed with SIGKILL
    # once on the way: the same final state.
    for key in redis_client.scan_iter(match="md:metrics:*"):
        redis_client.delete(key)
    redis_client.delete(ANOMALIES_STREAM, written_key(ANOMALIES_STREAM))
    for key in redis_client.scan_iter(match="md:flow:metrics:*"):
        redis_client.delete(key)
    shutil.rmtree(Path(session["CRYPTOPIPE_HOME"]) / "recovery" / "metrics")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cryptopipe",
                "stream",
                "run",
                "metrics",
                "--snapshot-interval",
                "1",
                "--batch-size",
                "200",
            ],
            env=session,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(4.0)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert code == 0 and time.monotonic() - t0 < 5.0, code
            assert redis_client.hget("md:flow:metrics:heartbeat", "items_in") not in (None, b"0")
    cryptopipe_ok(session, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    assert metrics_state(redis_client) == clean


def _candle(ex: str, sym: str, minute: int, close: int, volume: int) -> Candle:
    t = Trade(
        exchange=ex,
        symbol=sym,
        trade_id=minute + 1,
        price_e8=close * 10**8,
        quantity_e8=volume * 10**8,
        event_time=T0 + minute * 60_000,
        is_buyer_maker=False,
    )
    return Candle.from_trade(t, Interval.M1)


def test_anomalies_and_spread_with_known_answers(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    store = CandleStore(redis_client)
    closed = []
    for m in range(40):
        closed.append(_candle("binance", "BTCUSDT", m, 100, 10 + m % 3))
        closed.append(_candle("kraken", "BTCUSDT", m, 101, 10))
    closed.append(_candle("binance", "BTCUSDT", 40, 110, 500))  # +10% price, huge volume
    closed.append(_candle("kraken", "BTCUSDT", 40, 101, 10))
    store.write([CandleWrites("md:trades:raw", closed=closed)])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    anomalies = [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in redis_client.xrange(ANOMALIES_STREAM)
    ]
    assert sorted((a["exchange"], a["kind"], int(a["open_time"])) for a in anomalies) == [
        ("binance", "price", T0 + 40 * 60_000),
        ("binance", "volume", T0 + 40 * 60_000),
    ]
    price = next(a for a in anomalies if a["kind"] == "price")
    assert float(price["price_deviation"]) == pytest.approx(0.1)
    # The same instrument on two exchanges: compared without a declaration.
    spread = orjson.loads(redis_client.hget(spread_key("BTC"), "binance:BTCUSDT|kraken:BTCUSDT"))
    assert spread["spread"] == "9.00000000"  # 110 - 101
    assert spread["spread_share"] == pytest.approx(9 / 105.5)
    assert (spread["a_quote"], spread["b_quote"]) == ("USDT", "USDT")
    assert redis_client.ttl(metrics_key("kraken", "BTCUSDT")) > 0


def _close(ex: str, sym: str, minute: int, close: str) -> Candle:
    c = _candle(ex, sym, minute, 1, 1)
    e8 = int(Decimal(close) * 10**8)
    return replace(c, open_e8=e8, high_e8=e8, low_e8=e8, close_e8=e8)


def spreads(client: redis.Redis, base: str) -> dict[str, dict[str, object]]:
    return {k.decode(): orjson.loads(v) for k, v in client.hgetall(spread_key(base)).items()}


def test_declared_cross_venue_spread_is_exact_and_survives_a_restart(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    env = {**env, "CRYPTOPIPE_SPREADS": "binance:BTCUSDT~coinbase:BTC-USD"}
    store = CandleStore(redis_client)
    closed = [
        _close("binance", "BTCUSDT", 0, "84000.00000001"),
        _close("coinbase", "BTC-USD", 0, "84010.5"),
        _close("coinbase", "BTC-USD", 1, "84020.12345678"),
        _close("binance", "BTCUSDT", 1, "84003.1"),
        # USDT against USD without a declaration: no spread.
        _close("binance", "ETHUSDT", 0, "3000"),
        _close("coinbase", "ETH-USD", 0, "3001"),
    ]
    store.write([CandleWrites("md:trades:raw", closed=closed)])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "1")
    assert spreads(redis_client, "BTC") == {
        "binance:BTCUSDT|coinbase:BTC-USD": {
            "a": "binance:BTCUSDT",
            "b": "coinbase:BTC-USD",
            "base": "BTC",
            "a_quote": "USDT",
            "b_quote": "USD",
            "spread": "-17.02345678",  # 84003.1 - 84020.12345678, exact
            "spread_share": pytest.approx(-17.02345678 / 84011.61172839),
            "a_close": "84003.10000000",
            "b_close": "84020.12345678",
            "a_open_time": T0 + 60_000,
            "b_open_time": T0 + 60_000,
            "open_time": T0 + 60_000,
        }
    }
    assert spreads(redis_client, "ETH") == {}
    assert json.loads(cryptopipe_ok(env, "metrics", "ETHUSDT", "--format", "json"))["close"]
    # A restart resumes from the snapshot: Coinbase's latest close is remembered (its
    # events are gone from the stream).
    redis_client.delete(spread_key("BTC"))
    redis_client.xtrim(CLOSED_EVENTS_STREAM, maxlen=0)
    store.write([CandleWrites("md:trades:raw", closed=[_close("binance", "BTCUSDT", 2, "84030")])])
    cryptopipe_ok(env, "stream", "run", "metrics", "--exit-when-idle", "1")
    (again,) = spreads(redis_client, "BTC").values()
    assert (again["spread"], again["a_open_time"], again["b_open_time"]) == (
        "9.87654322",  # 84030 - 84020.12345678
        T0 + 120_000,
        T0 + 60_000,
    )


@pytest.mark.slow
def test_two_workers_give_the_metrics_of_one(
    session: dict[str, str], redis_client: redis.Redis
) -> None:
    cryptopipe_ok(session, "stream", "run", "metrics", "--exit-when-idle", "1.5")
    one = metrics_state(redis_client)
    for key in redis_client.scan_iter(match="md:metrics:*"):
        redis_client.delete(key)
    redis_client.delete(ANOMALIES_STREAM, written_key(ANOMALIES_STREAM))
    shutil.rmtree(Path(session["CRYPTOPIPE_HOME"]) / "recovery" / "metrics")
    cryptopipe_ok(session, "stream", "run", "metrics", "--workers", "2", "--exit-when-idle", "1.5")
    assert metrics_state(redis_client) == one
