"""Binance and Coinbase together, replay to reconciliation (slow).

The same minutes of two venues: Binance's ``BTCUSDT`` trades replayed first, then
Coinbase's ``BTC-USD`` frames (their history arrives after Binance's clock has moved
on: on one shared clock every Coinbase trade would be late). Each venue on its own
clock: nothing late, both venues' candles the reference; the declared spread
``binance:BTCUSDT~coinbase:BTC-USD`` is exactly the difference of the two latest
closed 1m closes and names its quotes; the batch layer recomputes both venues and
reconciliation finds every candle a ``match``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import orjson
import pytest
import redis
from test_candles_cli import flow_env, stored

from marketdata.candle import fold_trades
from marketdata.decimals import format_e8
from marketdata.interval import Interval
from marketdata.simulator import coinbase_match_payload, trade_payload
from marketdata.trade import Trade
from redisstore.keys import LATE_STREAM, spread_key
from tests.processes import cryptopipe_ok

T0 = 1_741_946_400_000  # 2025-03-14T10:00:00Z
DAY = "2025-03-14"
SPREAD = "binance:BTCUSDT~coinbase:BTC-USD"


def market(seconds: int, seed: int) -> dict[str, list[Trade]]:
    """Trades of both venues over the same ``seconds``, about 3 a second each."""
    rng = random.Random(seed)
    out: dict[str, list[Trade]] = {"binance": [], "coinbase": []}
    for venue, symbol, first in (("binance", "BTCUSDT", 7_000), ("coinbase", "BTC-USD", 90_000)):
        for i in range(seconds * 3):
            out[venue].append(
                Trade(
                    exchange=venue,
                    symbol=symbol,
                    trade_id=first + i,
                    price_e8=rng.randrange(8_000_000, 8_100_000) * 10**6,  # 80,000.00-81,000.00
                    quantity_e8=rng.randrange(1, 10**9),
                    event_time=T0 + i * 1000 // 3 + rng.randrange(300),
                    is_buyer_maker=rng.random() < 0.5,
                )
            )
    return out


@pytest.mark.slow
def test_binance_and_coinbase_each_on_its_clock_spread_and_reconciled(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    trades = market(seconds=240, seed=19)
    (tmp_path / "binance.jsonl").write_bytes(
        b"\n".join(trade_payload(t) for t in trades["binance"]) + b"\n"
    )
    (tmp_path / "coinbase.jsonl").write_bytes(
        b"\n".join(coinbase_match_payload(t, 500 + i) for i, t in enumerate(trades["coinbase"]))
        + b"\n"
    )
    env = flow_env(redis_url, tmp_path / "home", CRYPTOPIPE_SPREADS=SPREAD)
    for venue in ("binance", "coinbase"):
        path = str(tmp_path / f"{venue}.jsonl")
        cryptopipe_ok(env, "feed", "replay", path, "--format", f"{venue}-ws")
    for flow in ("candles", "metrics", "archive"):
        cryptopipe_ok(env, "stream", "run", flow, "--exit-when-idle", "2", timeout=300)

    every = trades["binance"] + trades["coinbase"]
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(every, iv).items()}
    assert redis_client.xlen(LATE_STREAM) == 0
    got = stored(redis_client, {"BTCUSDT", "BTC-USD"})
    assert {k[0] for k in got} == {"binance", "coinbase"}
    assert got == expected

    # The spread of the latest closed 1m candles, exact; the quotes it compares named.
    last = {}
    for venue in ("binance", "coinbase"):
        ones = fold_trades(trades[venue], Interval.M1)
        # the open window at the end of the replay is closed by --exit-when-idle
        last[venue] = ones[max(ones)]
    raw = redis_client.hget(spread_key("BTC"), "binance:BTCUSDT|coinbase:BTC-USD")
    assert raw is not None, redis_client.hgetall(spread_key("BTC"))
    s = orjson.loads(raw)
    a, b = last["binance"], last["coinbase"]
    assert s["spread"] == format_e8(a.close_e8 - b.close_e8)
    assert (s["a_close"], s["b_close"]) == (format_e8(a.close_e8), format_e8(b.close_e8))
    assert (s["a_quote"], s["b_quote"], s["base"]) == ("USDT", "USD", "BTC")
    assert (s["a_open_time"], s["b_open_time"]) == (a.open_time, b.open_time)

    cryptopipe_ok(env, "batch", "run", "--date", DAY, "--force", timeout=600)
    report = json.loads(cryptopipe_ok(env, "reconcile", "--date", DAY, "--format", "json"))
    counts = {k: v for k, v in report["counts"].items() if v}
    assert counts == {"match": len(expected)}, report
    out = cryptopipe_ok(
        env, "candles", "BTC-USD", "--exchange", "coinbase", "--interval", "1m", "--format", "json"
    )
    rows = [json.loads(line) for line in out.splitlines()]
    want = sorted(k[3] for k in expected if k[0] == "coinbase" and k[2] == "1m")
    assert [r["open_time"] for r in rows] == want
    assert {r["source"] for r in rows} == {"batch"}
    print(f"two venues, replay to reconciliation: {time.monotonic() - began:.1f} s")
