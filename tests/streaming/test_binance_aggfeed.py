"""The live Binance feed on aggregate trade streams: spot ``@aggTrade`` and USD-M futures.

The fake Binance makes one market of trades and serves it both ways; here the feed
follows its aggregates (each the trades of one taker order, computed from them with
``marketdata.trade.aggregate``). Every scenario runs on spot (``/api/v3/aggTrades``)
and on USD-M futures (``/fapi/v1/aggTrades``, streams under ``/market``, exchange
``binance-um``) and checks that the raw log holds every aggregate exactly once, and
that the real candles flow, run on it, gives the candles of the underlying trades,
trade counts included.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from test_binance_feed import FAST, SYMBOLS, read_entries, read_log, wait_published
from test_candles_flow import run_flow, stored

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import ProgressMark, RawMessage
from marketdata.settings import Settings
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, LATE_STREAM, raw_stream_names
from streaming.feeds.binance import BinanceLive
from streaming.feeds.binance.config import (
    SPOT_AGG_TRADES,
    TRADES,
    UM,
    UM_AGG_TRADES,
    BinanceFeedConfig,
    FeedStats,
    Stop,
    TradeStream,
)
from streaming.feeds.binance.feed import run_binance_feed
from streaming.feeds.binance.ids import TradeIds
from streaming.feeds.binance.rest import GapFiller
from streaming.feeds.ids import ResumePoints
from streaming.flows.runtime import stop_heartbeats
from tests.processes import run_cryptopipe
from tests.streaming.fake_binance import (
    REST_PATHS,
    ConnPlan,
    FakeBinance,
    Tape,
    agg_row,
    frame_of_agg,
)

#: Orders of 2, 3 and 1 trades, in turn: 2 trades an aggregate on average.
SPANS = (2, 3, 1)
STREAMS = {"spot": SPOT_AGG_TRADES, "um": UM_AGG_TRADES}
markets = pytest.mark.parametrize("market", ["spot", "um"])


@pytest.fixture(autouse=True)
def _no_heartbeat_leftovers() -> Iterator[None]:
    """Flows run in this process (run_flow) leave heartbeat threads: stop them, so no
    later test sees a flow of this process beating in its Redis."""
    yield
    stop_heartbeats()


# -- pure pieces --------------------------------------------------------------------


def test_the_fake_tape_aggregates_like_binance() -> None:
    tape = Tape(SPANS)
    for k in range(1, 50):
        trades = tape.trades("BTCUSDT", k)
        assert [t.trade_id for t in trades] == list(range(tape.first_id(k), tape.last_id(k) + 1))
        assert {tape.order_of(t.trade_id) for t in trades} == {k}
        agg = tape.aggregate("BTCUSDT", k)
        assert (agg.trade_id, agg.span) == (tape.first_id(k), SPANS[(k - 1) % 3])
        assert agg.quantity_e8 == sum(t.quantity_e8 for t in trades)
    assert tape.first_id(1) == 1 and tape.first_id(4) == 7


@markets
@pytest.mark.parametrize("aid", [1, 2, 3, 77, 12345])
def test_rest_rows_become_the_same_aggregate_as_frames(market: str, aid: int) -> None:
    agg = Tape(SPANS).aggregate("BTCUSDT", aid)
    payload = STREAMS[market].rest_payload("BTCUSDT", agg_row(agg, aid, market))
    assert b'"source":"rest"' in payload and b'"stream":"btcusdt@aggTrade"' in payload
    assert (b'"M"' in payload) == (market == "spot")  # USD-M rows have no M
    recv = 2_000_000_000_000
    from_rest = parse_message(payload, recv_ms=recv)
    from_ws = parse_message(frame_of_agg(agg, aid, market), recv_ms=recv)
    assert from_rest == from_ws == agg


def test_market_urls_limits_and_endpoints() -> None:
    um = BinanceFeedConfig(("BTCUSDT", "ETHUSDT"), UM.ws_url, UM.rest_url, stream=UM_AGG_TRADES)
    assert um.stream_url == (
        "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    )
    assert um.past_trades_url("BTCUSDT", 5, 1000) == (
        "https://fapi.binance.com/fapi/v1/aggTrades?symbol=BTCUSDT&fromId=5&limit=1000"
    )
    spot = BinanceFeedConfig(("BTCUSDT",), stream=SPOT_AGG_TRADES)
    assert spot.stream_url == "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade"
    assert spot.past_trades_url("BTCUSDT", None, 1) == (
        "https://api.binance.com/api/v3/aggTrades?symbol=BTCUSDT&limit=1"
    )
    # A USD-M connection carries at most 200 streams (spot: 1024).
    many = tuple(f"S{i}USDT" for i in range(201))
    BinanceFeedConfig(many, stream=SPOT_AGG_TRADES)
    with pytest.raises(ValueError, match="allows 200 streams a connection on market um"):
        BinanceFeedConfig(many, UM.ws_url, UM.rest_url, stream=UM_AGG_TRADES)


@pytest.mark.parametrize(
    ("argv", "stream", "exchange"),
    [
        ([], TRADES, "binance"),
        (["--stream", "aggTrade"], SPOT_AGG_TRADES, "binance"),
        (["--market", "um"], UM_AGG_TRADES, "binance-um"),
        (["--market", "um", "--stream", "aggTrade"], UM_AGG_TRADES, "binance-um"),
        (["--market", "um", "--exchange", "Binance-Futures"], UM_AGG_TRADES, "binance-futures"),
    ],
)
def test_cli_options_choose_the_stream_and_the_exchange(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stream: TradeStream, exchange: str
) -> None:
    """--market picks the stream's default, the endpoints and the exchange name;
    --exchange overrides the name; URLs default to the market's."""
    seen: dict[str, Any] = {}

    def fake_run(settings: Settings, symbols: list[str], **kw: Any) -> int:
        seen.update(kw, symbols=symbols)
        return 0

    monkeypatch.setattr("streaming.feeds.binance.feed.run_binance_feed", fake_run)
    parser = argparse.ArgumentParser()
    BinanceLive().add_arguments(parser)
    args = parser.parse_args(["--symbols", "BTCUSDT", *argv])
    assert BinanceLive().run(args, Settings(), threading.Event()) == 0
    assert (seen["stream"], seen["exchange"]) == (stream, exchange)
    assert seen["ws_url"] is None and seen["rest_url"] is None  # the market's


@pytest.mark.parametrize(
    ("stream", "below", "at"), [(SPOT_AGG_TRADES, 4999, 5000), (UM_AGG_TRADES, 1999, 2000)]
)
def test_rest_pauses_at_five_sixths_of_the_markets_weight_limit(
    stream: TradeStream, below: int, at: int
) -> None:
    config = BinanceFeedConfig(("BTCUSDT",), stream=stream)
    stats = FeedStats()
    ids = TradeIds(config.symbols, config.tuning, stats, stream=stream)

    async def emit(msg: RawMessage, when: int) -> None:
        pass

    filler = GapFiller(config, stats, ids, emit, Stop(threading.Event()))
    filler._watch_weight({"X-MBX-USED-WEIGHT-1M": str(below)})
    assert filler._rest_not_before == 0.0
    filler._watch_weight({"x-mbx-used-weight-1m": str(at)})
    assert filler._rest_not_before > time.monotonic()


def test_a_capped_resume_names_the_aggtrades_dumps(caplog: pytest.LogCaptureFixture) -> None:
    tuning = dataclasses.replace(FAST, resume_max_ids=10)
    ids = TradeIds(("BTCUSDT",), tuning, FeedStats(), stream=UM_AGG_TRADES)
    ids.take_up_positions({"BTCUSDT": 100})
    assert ids.accept("BTCUSDT", 200) == (True, True)
    assert ids.trackers["BTCUSDT"].holes() == [(190, 199)]
    assert "99 aggregate trades were missed since the last run" in caplog.text
    assert "load Binance's daily aggTrades dumps" in caplog.text


def test_usd_m_has_no_trade_stream(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", "CRYPTOPIPE_HOME": str(tmp_path)}
    out = run_cryptopipe(
        env, "feed", "binance", "--symbols", "BTCUSDT", "--market", "um", "--stream", "trade"
    )
    assert out.returncode == 2
    assert "USD-M futures publish trades only as aggregate trades" in out.stderr
    assert out.stderr.count("\n") == 1


# -- scenarios against the fake Binance -----------------------------------------------


@contextmanager
def agg_feed(
    redis_url: str, tmp_path: Path, fake: FakeBinance, *, api_key: str | None = None
) -> Iterator[FeedStats]:
    """The feed on the fake's market, in a thread; the exchange name is the market's."""
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
            api_key=api_key,
            tuning=FAST,
            stats=stats,
            stream=STREAMS[fake.market],
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
        assert m.symbol == t.symbol
        out.append(t)
    return out


def every_aggregate(fake: FakeBinance) -> list[Trade]:
    return [fake.agg(s, a) for s in SYMBOLS for a in range(1, fake.n_trades + 1)]


def wait_all(client: redis.Redis, fake: FakeBinance, timeout: float = 30.0) -> list[Trade]:
    want = set(every_aggregate(fake))
    deadline = time.monotonic() + timeout
    got: list[Trade] = []
    while time.monotonic() < deadline:
        got = aggregates(read_log(client, 1))
        if fake.done and want <= set(got):
            return got
        time.sleep(0.1)
    pytest.fail(f"{len(want - set(got))} aggregates never reached the raw log")


def assert_each_once(got: list[Trade], fake: FakeBinance) -> None:
    """Every aggregate of the market exactly once, with the market's exchange name."""
    dups = {k: c for k, c in Counter(got).items() if c > 1}
    assert dups == {}
    assert sorted(got) == sorted(every_aggregate(fake))
    assert {t.exchange for t in got} == {fake.exchange}


def assert_candles_of_the_trades(redis_url: str, client: redis.Redis, fake: FakeBinance) -> None:
    """The real candles flow on the raw log gives the candles of the underlying trades."""
    run_flow(redis_url)
    assert client.xlen(LATE_STREAM) == 0 and client.xlen(DLQ_STREAM) == 0
    trades = fake.all_trades()
    assert len(trades) == 2 * fake.tape.last_id(fake.n_trades) > 2 * fake.n_trades
    want = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    assert stored(client, tuple(SYMBOLS)) == want
    days = [c for k, c in want.items() if k[2] == "1d"]
    assert sum(int(c["trade_count"]) for c in days) == len(trades)


def from_rest(m: RawMessage) -> bool:
    return b'"source":"rest"' in m.payload


@markets
def test_a_dropped_connection_and_gaps_are_filled_with_every_aggregate_once(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, market: str
) -> None:
    """The socket drops after 80 frames and skips some aggregates: the feed fetches
    them from the market's aggTrades endpoint by aggregate id, written as aggTrade
    frames marked as from REST; the optional API key is not sent there."""
    withheld = {"BTCUSDT": {*range(30, 40)}, "ETHUSDT": {7, 8, 120}}
    fake = FakeBinance(
        SYMBOLS,
        n_trades=300,
        spans=SPANS,
        market=market,
        withheld=withheld,
        plans={0: ConnPlan(drop_after=80)},
    )
    with fake, agg_feed(redis_url, tmp_path, fake, api_key="test-key-not-for-aggtrades") as st:
        got = wait_all(redis_client, fake)
    assert_each_once(got, fake)
    route = "/market" if market == "um" else ""
    assert fake.conns[0].path == f"{route}/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    msgs = read_log(redis_client, 1)
    assert {m.exchange for m in msgs} == {fake.exchange}
    # The gaps came from the market's aggTrades by aggregate id (fromId), as aggTrade frames.
    (path,) = (p for p in REST_PATHS[market] if "aggTrades" in p)
    assert {r.path for r in fake.rest_ok()} == {path}
    assert all("fromId" in r.query and int(r.query["limit"]) <= 1000 for r in fake.rest_ok())
    assert all(r.api_key is None for r in fake.rest)
    rest = [m for m in msgs if from_rest(m)]
    assert rest and all(b'"e":"aggTrade"' in m.payload for m in rest)
    filled = {(t.symbol, t.trade_id) for t in aggregates(rest)}
    want = {(s, fake.tape.first_id(a)) for s, ids in withheld.items() for a in ids}
    assert want <= filled
    assert st.reconnects >= 1 and st.lost == 0 and st.filled == len(rest)
    assert st.trades == 2 * 300  # aggregates, each once
    assert_candles_of_the_trades(redis_url, redis_client, fake)


@markets
def test_a_restart_resumes_from_the_aggregate_ids(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, market: str
) -> None:
    """Stopped while the market goes on: the next run fetches the downtime's aggregates
    from REST, before any live frame, and records aggregate ids in their own hash."""
    # 700 trades at 100/s: after the downtime the market runs on for about 5 s, time
    # for the second run to start and connect under a loaded machine (with 400 the
    # market could end before it, and no frame came live).
    fake = FakeBinance(SYMBOLS, n_trades=700, tick_s=0.01, spans=SPANS, market=market)
    with fake:
        with agg_feed(redis_url, tmp_path, fake):
            wait_published(fake, 100)
        first_len = len(read_log(redis_client, 1))
        down = max(fake.published.values())
        wait_published(fake, down + 80)  # the market goes on while the feed is down
        with agg_feed(redis_url, tmp_path, fake) as second:
            got = wait_all(redis_client, fake)
        points = ResumePoints(redis_client, fake.ws_url, "aggTrade").load(tuple(SYMBOLS))
    assert_each_once(got, fake)
    assert second.resumed == 2 and second.filled >= 2 * 80 and second.lost == 0
    run2 = read_log(redis_client, 1)[first_len:]
    rest = [i for i, m in enumerate(run2) if from_rest(m)]
    live = [i for i, m in enumerate(run2) if not from_rest(m)]
    assert rest and live and max(rest) < min(live)  # backfill before live
    assert all(r.path.endswith("/aggTrades") for r in fake.rest)
    assert points == dict.fromkeys(SYMBOLS, 700)  # aggregate ids, kept apart from trade ids
    assert ResumePoints(redis_client, fake.ws_url).load(tuple(SYMBOLS)) == {}
    assert_candles_of_the_trades(redis_url, redis_client, fake)


@markets
def test_a_restart_in_a_quiet_market_probes_the_newest_aggregate(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, market: str
) -> None:
    """Restarted after the market went quiet: the feed asks REST for each symbol's newest
    aggregate trade (no fromId, limit 1), fills the downtime, then writes progress marks
    of the market's exchange."""
    fake = FakeBinance(
        SYMBOLS, n_trades=200, tick_s=0.01, spans=SPANS, market=market, live_clock=True
    )
    stream = raw_stream_names(1)[0]
    with fake:
        with agg_feed(redis_url, tmp_path, fake):
            wait_published(fake, 60)
        first_len = len(read_entries(redis_client, stream))
        while not fake.done:
            time.sleep(0.05)
        with agg_feed(redis_url, tmp_path, fake) as second:
            got = wait_all(redis_client, fake)
            time.sleep(1.5)
    assert_each_once(got, fake)
    entries = read_entries(redis_client, stream)
    run1, run2 = entries[:first_len], entries[first_len:]
    backfill = [i for i, e in enumerate(run2) if isinstance(e, RawMessage)]
    marks = [e for e in run2 if isinstance(e, ProgressMark)]
    assert all(from_rest(run2[i]) for i in backfill)  # nothing live: the market is done
    assert marks and run2.index(marks[0]) > max(backfill)
    assert {m.exchange for m in marks} == {fake.exchange}
    probes = [r for r in fake.rest_ok() if "fromId" not in r.query]
    assert [(r.query["symbol"], r.query["limit"]) for r in probes] == [
        ("BTCUSDT", "1"),
        ("ETHUSDT", "1"),
    ]
    assert second.probes == 2 and second.resumed == 2 and second.lost == 0
    # The second run wrote exactly what the first one had not: all of it from REST.
    run1_msgs = [e for e in run1 if isinstance(e, RawMessage)]
    assert second.filled == len(backfill) == 2 * 200 - len(run1_msgs) > 2 * 100


def test_cli_feed_binance_market_um_as_a_process(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``cryptopipe feed binance --market um`` end to end: aggTrade streams, the gap
    after a dropped connection filled from /fapi/v1/aggTrades, exchange binance-um,
    SIGINT flushes and exits 0."""
    fake = FakeBinance(
        SYMBOLS, n_trades=150, spans=SPANS, market="um", plans={0: ConnPlan(drop_after=30)}
    )
    with fake:
        env = {**os.environ, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
        env.pop("BINANCE_API_KEY", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cryptopipe",
                "feed",
                "binance",
                "--redis-url",
                redis_url,
                "--symbols",
                "BTCUSDT,ETHUSDT",
                "--market",
                "um",
                "--ws-url",
                fake.ws_url,
                "--rest-url",
                fake.rest_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            got = wait_all(redis_client, fake)
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert_each_once(got, fake)
    assert {r.path for r in fake.rest_ok()} == {"/fapi/v1/aggTrades"}
    assert "as exchange binance-um" in err and "gap of" in err
    assert "aggregate trades (" in err  # the summary counts aggregates
