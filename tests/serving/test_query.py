"""The one candle query of the command line and the HTTP API: its checks and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.trade import Trade
from serving.query import CandleQuery, QueryError
from streaming.candlestore import CandleStore, CandleWrites
from tests.processes import run_cryptopipe

T0 = 1_741_910_400_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbol": "", "interval": "1m"}, "symbol is required, e.g. BTCUSDT"),
        ({"symbol": "BTC-USDT!", "interval": "1m"}, "bad symbol 'BTC-USDT!'"),
        ({"symbol": "BTCUSDT", "interval": None}, "interval is required: one of 1m, 5m"),
        ({"symbol": "BTCUSDT", "interval": "2m"}, "bad interval '2m': one of 1m, 5m"),
        ({"symbol": "BTCUSDT", "interval": "1m", "source": "x"}, "bad source 'x': one of"),
        ({"symbol": "BTCUSDT", "interval": "1m", "exchange": "Bin Ance"}, "bad exchange"),
        ({"symbol": "BTCUSDT", "interval": "1m", "start": "yesterday"}, "start"),
        (
            {"symbol": "BTCUSDT", "interval": "1m", "start": "2025-03-14", "end": "2025-03-13"},
            "end must be after start",
        ),
    ],
)
def test_bad_parameters_say_what_to_give(kwargs: dict, message: str) -> None:
    symbol = kwargs.pop("symbol")
    interval = kwargs.pop("interval")
    with pytest.raises(QueryError, match=message.replace("(", r"\(")):
        CandleQuery.parse(symbol, interval, **kwargs)


def test_a_good_query_is_parsed() -> None:
    q = CandleQuery.parse(
        "btcusdt", "5m", exchange="binance", start="2025-03-14", end=str(T0 + 3_600_000)
    )
    assert (q.symbol, q.interval, q.exchange, q.start, q.end, q.source) == (
        "BTCUSDT",
        Interval.M5,
        "binance",
        T0,
        T0 + 3_600_000,
        "merged",
    )


def test_an_unknown_symbol_names_the_symbols_there_are(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    for sym in ("BTCUSDT", "ETHUSDT"):
        t = Trade("binance", sym, 1, 100 * 10**8, 10**8, T0 + 5, False)
        closed = list(fold_trades([t], Interval.M1).values())
        CandleStore(redis_client).write([CandleWrites("md:trades:raw", closed=closed)])
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    out = run_cryptopipe(env, "candles", "DOGEUSDT", "--interval", "1m")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "cryptopipe: error: no candles of DOGEUSDT: the symbols with stream candles are "
        "BTCUSDT, ETHUSDT"
    )
    known = run_cryptopipe(env, "candles", "BTCUSDT", "--interval", "1m", "--format", "json")
    assert known.returncode == 0 and '"open_time":1741910400000' in known.stdout
    # A known symbol with nothing in the range is not an error: an empty answer.
    empty = run_cryptopipe(env, "candles", "BTCUSDT", "-i", "1m", "--start", "2030-01-01")
    assert empty.returncode == 0 and "(no candles)" in empty.stdout
    bad = run_cryptopipe(env, "candles", "BTCUSDT", "-i", "1m", "--start", "2025", "--end", "2024")
    assert bad.returncode == 2 and "--end must be after --start" in bad.stderr


def test_follow_prints_each_candle_as_it_closes(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    import json
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tests.processes import ROOT

    def closed(minutes: range) -> list:
        ts = [
            Trade("binance", "BTCUSDT", m, (100 + m) * 10**8, 10**8, T0 + m * 60_000, False)
            for m in minutes
        ]
        return list(fold_trades(ts, Interval.M1).values())

    store = CandleStore(redis_client)
    store.write([CandleWrites("md:trades:raw", closed=closed(range(2)))])
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "candles",
            "BTCUSDT",
            "-i",
            "1m",
            "--follow",
            "--format",
            "json",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while len(lines) < 2:
            assert time.monotonic() < deadline, proc.stderr.read() if proc.poll() else lines
            time.sleep(0.1)
        store.write([CandleWrites("md:trades:raw", closed=closed(range(2, 4)))])
        written = time.monotonic()
        while len(lines) < 4:
            assert time.monotonic() - written < 2.0, lines
            time.sleep(0.05)
        opens = [json.loads(line)["open_time"] for line in lines]
        assert opens == [T0 + m * 60_000 for m in range(4)]  # each once, in order
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
