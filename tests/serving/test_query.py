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
