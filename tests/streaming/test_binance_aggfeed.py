"""The live Binance feed on aggregate trade streams (spot ``@aggTrade``, USD-M futures)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from fake_binance import ConnPlan, FakeBinance, agg_first
from test_binance_feed import FAST, SYMBOLS, read_log, wait_published
from test_candles_flow import run_flow, stored

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import RawMessage
from marketdata.settings import Settings
from marketdata.trade import Trade
from streaming.feeds.binance.config import SPOT_AGG_TRADES, UM_AGG_TRADES, FeedStats, TradeStream
from streaming.feeds.binance.feed import run_binance_feed
from streaming.feeds.binance.ids import ResumePoints
from streaming.flows.runtime import stop_heartbeats
from tests.processes import run_cryptopipe


@pytest.fixture(autouse=True)
def _no_heartbeat_leftovers() -> Iterator[None]:
    """Flows run in this process (run_flow) leave heartbeat threads: stop them, so no
    later test sees a flow of this process beating in its Redis."""
    yield
    stop_heartbeats()


@contextmanager
def agg_feed(
    redis_url: str, tmp_path: Path, fake: FakeBinance, stream: TradeStream
) -> Iterator[FeedStats]:
    stats = FeedStats()
    stop = threading.Event()
    result: dict[str, int] = {}

    def target() -> None:
        result["rc"] = run_binance_feed(
            Settings(redis_url=redis_url, home=tmp_path),
            list(SYMBOLS),
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            stop_event=stop,
            tuning=FAST,
            stats=stats,
            stream=stream,
            exchange=fake.exchange,
        )

    thread = threading.Thread(target=target, name="aggfeed-under-test")
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and result.get("rc") == 0


def aggregates(msgs: list[RawMessage]) -> list[Trade]:
    out = []
    for m in msgs:
        t = parse_message(m.payload, fmt=m.fmt, exchange=m.exchange, recv_ms=m.recv_ms)
        assert isinstance(t, Trade), (t, m.payload)
        out.append(t)
    return out


def wait_all(client: redis.Redis, fake: FakeBinance, timeout: float = 30.0) -> list[Trade]:
    import time

    want = {fake.trade(s, a) for s in SYMBOLS for a in range(1, fake.n_trades + 1)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = aggregates(read_log(client, 1))
        if fake.done and want <= set(got):
            return got
        time.sleep(0.1)
    pytest.fail(f"{len(want - set(got))} aggregates never reached the raw log")


def assert_each_once(got: list[Trade], fake: FakeBinance) -> None:
    want = [fake.trade(s, a) for s in SYMBOLS for a in range(1, fake.n_trades + 1)]
    counts = Counter(got)
    assert {k: c for k, c in counts.items() if c > 1} == {}
    assert sorted(got) == sorted(want)


def test_spot_agg_trades_with_a_dropped_connection_and_a_gap(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    withheld = {"BTCUSDT": {*range(30, 40)}, "ETHUSDT": {7, 8, 120}}
    fake = FakeBinance(
        SYMBOLS, n_trades=300, agg=True, withheld=withheld, plans={0: ConnPlan(drop_after=80)}
    )
    with fake, agg_feed(redis_url, tmp_path, fake, SPOT_AGG_TRADES) as stats:
        got = wait_all(redis_client, fake)
    assert_each_once(got, fake)
    assert fake.conns[0].path == "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    # The gaps came from /api/v3/aggTrades by aggregate id, synthesized as aggTrade frames.
    rest = [m for m in read_log(redis_client, 1) if b'"source":"rest"' in m.payload]
    assert {r.path for r in fake.rest_ok()} == {"/api/v3/aggTrades"}
    assert all(b'"e":"aggTrade"' in m.payload for m in rest)
    filled = {(m.symbol, parse_message(m.payload).trade_id) for m in rest}  # type: ignore[union-attr]
    assert {(s, agg_first(a)) for s, ids in withheld.items() for a in ids} <= filled
    assert stats.reconnects >= 1 and stats.lost == 0
    # Trades counted: each aggregate's span.
    assert sum(t.span for t in got) == sum(agg_first(301) - 1 for _ in SYMBOLS)


def test_usd_m_restart_resumes_and_candles_count_every_trade(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    fake = FakeBinance(SYMBOLS, n_trades=400, tick_s=0.01, agg=True, exchange="binance-um")
    with fake:
        with agg_feed(redis_url, tmp_path, fake, UM_AGG_TRADES):
            wait_published(fake, 100)
        down = max(fake.published.values())
        wait_published(fake, down + 80)  # the market goes on while the feed is down
        with agg_feed(redis_url, tmp_path, fake, UM_AGG_TRADES) as second:
            got = wait_all(redis_client, fake)
        points = ResumePoints(redis_client, fake.ws_url, "aggTrade").load(tuple(SYMBOLS))
    assert_each_once(got, fake)
    assert {m.exchange for m in read_log(redis_client, 1)} == {"binance-um"}
    assert second.resumed == 2 and second.filled >= 2 * 80
    assert {r.path for r in fake.rest_ok()} == {"/fapi/v1/aggTrades"}
    assert points == dict.fromkeys(SYMBOLS, 400)  # aggregate ids, kept apart from trade ids
    assert ResumePoints(redis_client, fake.ws_url).load(tuple(SYMBOLS)) == {}
    run_flow(redis_url)
    want = {k: c.fields() for iv in Interval for k, c in fold_trades(got, iv).items()}
    assert stored(redis_client, tuple(SYMBOLS)) == want
    m1 = [c for k, c in want.items() if k[2] == "1m"]
    assert sum(c["trade_count"] for c in m1) == 2 * (agg_first(401) - 1)


def test_usd_m_has_no_trade_stream(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", "CRYPTOPIPE_HOME": str(tmp_path)}
    out = run_cryptopipe(
        env, "feed", "binance", "--symbols", "BTCUSDT", "--market", "um", "--stream", "trade"
    )
    assert out.returncode == 2
    assert "USD-M futures publish trades only as aggregate trades" in out.stderr
    assert out.stderr.count("\n") == 1
