"""``cryptopipe serve``: the HTTP API, as a real server process over a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
import requests

from marketdata.candle import fold_trades
from marketdata.indicators import ClosedBar, MetricsState
from marketdata.instruments import Instruments, SpreadRules, parse_comparisons
from marketdata.interval import Interval
from marketdata.trade import Trade
from streaming.candlestore import CandleStore, CandleWrites
from streaming.metricsagg import SpreadState, apply_spread_bars
from streaming.metricsstore import MetricsStore, MetricsWrites
from tests.processes import run_cryptopipe

T0 = 1_741_910_400_000
M = 60_000


def trades(symbol: str, minutes: range, first_id: int = 1) -> list[Trade]:
    return [
        Trade(
            "binance",
            symbol,
            first_id + m,
            (100 + m) * 10**8 + 12345,
            10**7,
            T0 + m * M + 7,
            m % 2 == 0,
        )
        for m in minutes
    ]


def write(client: redis.Redis, closed: list[Trade], live: list[Trade]) -> None:
    store = CandleStore(client)
    closed_candles = [c for iv in Interval for c in fold_trades(closed, iv).values()]
    live_candles = list(fold_trades(live, Interval.M1).values())
    store.write([CandleWrites("md:trades:raw", closed=closed_candles, live=live_candles)])


def test_candles_are_what_the_command_line_prints(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    base, env = server
    write(redis_client, trades("BTCUSDT", range(10)), trades("BTCUSDT", range(10, 11), 100))
    write(redis_client, trades("ETHUSDT", range(3), 1000), [])
    for params in (
        {"symbol": "BTCUSDT", "interval": "1m"},
        {"symbol": "btcusdt", "interval": "5m", "source": "stream"},
        {
            "symbol": "BTCUSDT",
            "interval": "1m",
            "start": str(T0 + 2 * M),
            "end": "2025-03-14T00:05:00Z",
        },
        {"symbol": "BTCUSDT", "interval": "1m", "fill": "true", "exchange": "binance"},
    ):
        got = requests.get(base + "/api/candles", params=params, timeout=10)
        assert got.status_code == 200 and got.headers["content-type"] == "application/json"
        args = ["candles", params["symbol"], "--interval", params["interval"], "--format", "json"]
        for k in ("start", "end", "source", "exchange"):
            if k in params:
                args += [f"--{k}", params[k]]
        if "fill" in params:
            args.append("--fill")
        cli = run_cryptopipe(env, *args)
        assert cli.returncode == 0, cli.stderr
        assert got.json() == [json.loads(line) for line in cli.stdout.splitlines()]
        assert got.json()  # not vacuous
    live = requests.get(
        base + "/api/candles", params={"symbol": "BTCUSDT", "interval": "1m"}, timeout=10
    )
    assert [c["closed"] for c in live.json()][-2:] == [True, False]
    symbols = requests.get(base + "/api/symbols", timeout=10).json()
    assert symbols == [
        {"exchange": "binance", "symbol": "BTCUSDT"},
        {"exchange": "binance", "symbol": "ETHUSDT"},
    ]


def test_bad_parameters_are_clear_4xx(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    base, _ = server
    write(redis_client, trades("BTCUSDT", range(2)), [])
    cases = [
        ({"symbol": "BTCUSDT"}, 400, "interval is required: one of 1m, 5m, 15m, 1h, 4h, 1d"),
        ({"symbol": "BTCUSDT", "interval": "7m"}, 400, "bad interval '7m'"),
        ({"interval": "1m"}, 400, "symbol is required"),
        ({"symbol": "BTCUSDT", "interval": "1m", "start": "soon"}, 400, "start"),
        (
            {"symbol": "DOGEUSDT", "interval": "1m"},
            404,
            "no candles of DOGEUSDT: the symbols with stream candles are BTCUSDT",
        ),
    ]
    for params, status, message in cases:
        got = requests.get(base + "/api/candles", params=params, timeout=10)
        assert got.status_code == status, (params, got.text)
        assert message in got.json()["error"], (params, got.json())
    bad_day = requests.get(base + "/api/reconciliation", params={"date": "14/03/2025"}, timeout=10)
    assert bad_day.status_code == 400 and "YYYY-MM-DD" in bad_day.json()["error"]
    never = requests.get(base + "/api/reconciliation", params={"date": "2025-03-14"}, timeout=10)
    assert never.status_code == 404
    assert never.json()["error"] == (
        "2025-03-14 has not been reconciled (cryptopipe reconcile --date 2025-03-14)"
    )


def test_spreads_of_a_series_are_what_metrics_prints(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    base, env = server
    rules = SpreadRules.build(Instruments(), parse_comparisons("binance:BTCUSDT~coinbase:BTC-USD"))
    bars = [
        ClosedBar("binance", "BTCUSDT", T0, 84_003_10000000, 10**8, 0),
        ClosedBar("kraken", "BTCUSDT", T0, 84_001_00000000, 10**8, 0),
        ClosedBar("coinbase", "BTC-USD", T0 + M, 84_020_12345678, 10**8, 0),
        ClosedBar("binance", "ETHUSDT", T0, 3000 * 10**8, 10**8, 0),
    ]
    metrics = MetricsWrites("BTCUSDT", metrics=[MetricsState().apply(bars[0]) or {}])
    spreads = apply_spread_bars(SpreadState(), bars[:3], rules)
    MetricsStore(redis_client).write([metrics, spreads])
    got = requests.get(
        base + "/api/spreads", params={"symbol": "btcusdt", "exchange": "binance"}, timeout=10
    )
    assert got.status_code == 200
    assert [(s["a"], s["b"], s["spread"]) for s in got.json()] == [
        ("binance:BTCUSDT", "coinbase:BTC-USD", "-17.02345678"),
        ("binance:BTCUSDT", "kraken:BTCUSDT", "2.10000000"),
    ]
    cli = run_cryptopipe(env, "metrics", "BTCUSDT", "--exchange", "binance", "--format", "json")
    assert json.loads(cli.stdout)["spreads"] == got.json()
    table = run_cryptopipe(env, "metrics", "BTCUSDT", "--exchange", "binance").stdout
    assert "binance:BTCUSDT - coinbase:BTC-USD = -17.02345678 BTC in USDT/USD" in table
    # Without an exchange: the series of every exchange with metrics (binance here).
    every = requests.get(base + "/api/spreads", params={"symbol": "BTCUSDT"}, timeout=10)
    assert every.json() == got.json()
    coinbase = requests.get(
        base + "/api/spreads", params={"symbol": "BTC-USD", "exchange": "coinbase"}, timeout=10
    )
    assert [s["b"] for s in coinbase.json()] == ["coinbase:BTC-USD"]
    eth = {"symbol": "ETHUSDT", "exchange": "binance"}
    assert requests.get(base + "/api/spreads", params=eth, timeout=10).json() == []


def test_status_is_what_status_prints(server: tuple[str, dict[str, str]]) -> None:
    base, env = server
    got = requests.get(base + "/api/status", timeout=10).json()
    cli = json.loads(run_cryptopipe(env, "status", "--format", "json").stdout)
    for report in (got, cli):
        report.pop("at_ms")
        for row in report["flows"]:
            row.pop("heartbeat_age_s")
    assert got == cli
    assert [f["flow"] for f in got["flows"]] == ["candles", "metrics", "archive", "feed"]


def test_live_updates_arrive_within_a_second(
    server: tuple[str, dict[str, str]], redis_client: redis.Redis
) -> None:
    base, _ = server
    write(redis_client, trades("BTCUSDT", range(3)), trades("BTCUSDT", range(3, 4), 100))
    params = {"symbol": "BTCUSDT", "interval": "1m"}
    with requests.get(base + "/api/live", params=params, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = _events(resp.iter_lines())
        first = [next(events) for _ in range(3)]  # two closed, then the live one
        assert [e["closed"] for e in first] == [True, True, False]
        assert first[-1]["open_time"] == T0 + 3 * M
        # A new trade moves the live candle: its event comes within a second.
        more = [
            *trades("BTCUSDT", range(3, 4), 100),
            Trade("binance", "BTCUSDT", 101, 999 * 10**8, 10**7, T0 + 3 * M + 30000, False),
        ]
        sent = time.monotonic()
        write(redis_client, [], more)
        moved = next(events)
        assert time.monotonic() - sent < 1.0
        assert (moved["open_time"], moved["high"], moved["trade_count"], moved["closed"]) == (
            T0 + 3 * M,
            "999.00000000",
            2,
            False,
        )


def _events(lines: Iterator[bytes]) -> Iterator[dict]:
    name = None
    for line in lines:
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: ") and name == "candle":
            yield json.loads(line[6:])
