"""The live Coinbase Exchange feed against a local fake Coinbase (websocket + REST) and a
real Redis.

The scenarios end with the same check as the Binance feed's: the raw log, read back
and parsed with ``parse_message``, holds every trade id ``1..N`` of every product
exactly once, each parsing to the trade the fake market made (taker side included).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import orjson
import pytest
import redis

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import FORMAT_COINBASE_WS, parse_message
from marketdata.rawmessage import F_MARK, ProgressMark, RawMessage, parse_mark
from marketdata.settings import Settings
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, LATE_STREAM, raw_stream_names
from serving.stream import StreamCandleReader
from streaming.feeds.coinbase.config import (
    CoinbaseFeedConfig,
    CoinbaseStats,
    CoinbaseTuning,
    rest_match_payload,
)
from streaming.feeds.coinbase.feed import run_coinbase_feed
from streaming.feeds.coinbase.ids import CoinbaseResumePoints
from tests.processes import run_cryptopipe
from tests.streaming.fake_coinbase import ConnPlan, FakeCoinbase

PRODUCTS = ["BTC-USD", "ETH-USD"]
FAST = CoinbaseTuning(
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    gap_grace_s=0.1,
    flush_interval_s=0.02,
    fill_max_attempts=5,
    rest_per_s=10,
    stats_every_s=1.0,
)


# -- pure pieces --------------------------------------------------------------------


def test_frames_and_rest_rows_parse_to_the_market_trades() -> None:
    """The docs-shaped match frame and REST row of a trade parse to that trade; a
    ``side`` of ``sell`` (the maker sold) is a taker buy."""
    fake = FakeCoinbase(PRODUCTS, n_trades=0)
    for k in (1, 3, 77, 12345):
        want = fake.trade("BTC-USD", k)
        frame = fake.match_frame("BTC-USD", k)
        row = fake.rest_row("BTC-USD", k)
        filled = rest_match_payload("BTC-USD", row)
        assert orjson.loads(filled) == {
            "type": "match",
            "trade_id": k,
            "product_id": "BTC-USD",
            "price": row["price"],
            "size": row["size"],
            "side": row["side"],
            "time": row["time"],
            "source": "rest",
        }
        for payload in (frame, filled):
            got = parse_message(payload, fmt=FORMAT_COINBASE_WS, exchange="coinbase")
            assert got == want, (payload, got)
        assert want.is_buyer_maker == (orjson.loads(frame)["side"] == "buy")
    assert not fake.trade("BTC-USD", 1).is_buyer_maker  # side "sell": a taker buy


def test_config_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="no products"):
        CoinbaseFeedConfig(())
    with pytest.raises(ValueError, match="bad product"):
        CoinbaseFeedConfig(("BTCUSD",))
    with pytest.raises(ValueError, match="websocket URL"):
        CoinbaseFeedConfig(("BTC-USD",), ws_url="https://ws-feed.exchange.coinbase.com")
    with pytest.raises(ValueError, match="at most 10 a second"):
        CoinbaseTuning(rest_per_s=20)
    with pytest.raises(ValueError, match="bad product"):
        run_coinbase_feed(Settings(), ["BTC_USD"])


# -- scenarios against the fake Coinbase ----------------------------------------------


def read_entries(client: redis.Redis, stream: str) -> list[RawMessage | ProgressMark]:
    """A raw-log stream in order: messages and progress marks."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    out: list[RawMessage | ProgressMark] = []
    for _, f in entries:
        if F_MARK in f:
            mark = parse_mark([x for kv in f.items() for x in kv])
            assert isinstance(mark, ProgressMark), mark
            out.append(mark)
        else:
            out.append(RawMessage.from_fields(f))
    return out


def read_log(client: redis.Redis, shards: int = 1) -> list[RawMessage]:
    return [
        e
        for stream in raw_stream_names(shards)
        for e in read_entries(client, stream)
        if isinstance(e, RawMessage)
    ]


def trade_of(m: RawMessage) -> Trade:
    t = parse_message(m.payload, fmt=m.fmt, exchange=m.exchange, recv_ms=m.recv_ms)
    assert isinstance(t, Trade), (t, m.payload)
    return t


def from_rest(m: RawMessage) -> bool:
    return orjson.loads(m.payload).get("source") == "rest"


def assert_exactly_once(msgs: list[RawMessage], fake: FakeCoinbase) -> None:
    """Every trade of the fake market once, each the trade the market made."""
    counts: Counter[tuple[str, int]] = Counter()
    for m in msgs:
        assert (m.exchange, m.fmt) == ("coinbase", FORMAT_COINBASE_WS)
        t = trade_of(m)
        assert t == fake.trade(t.symbol, t.trade_id)
        assert m.symbol == t.symbol
        counts[t.symbol, t.trade_id] += 1
    expected = {(p, k) for p in PRODUCTS for k in range(1, fake.n_trades + 1)}
    assert sorted(expected - set(counts))[:10] == []
    assert {k: c for k, c in counts.items() if c > 1} == {}
    assert set(counts) == expected


def wait_complete(client: redis.Redis, fake: FakeCoinbase, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    want = {(p, k) for p in PRODUCTS for k in range(1, fake.n_trades + 1)}
    have: set[tuple[str, int]] = set()
    while time.monotonic() < deadline:
        if fake.done:
            have = {(trade_of(m).symbol, trade_of(m).trade_id) for m in read_log(client)}
            if want <= have:
                return
        time.sleep(0.1)
    missing = sorted(want - have)
    pytest.fail(f"{len(missing)} trades never reached the raw log, e.g. {missing[:10]}")


def wait_published(fake: FakeCoinbase, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while min(fake.published.values()) < n:
        assert time.monotonic() < deadline, f"the fake market did not reach {n}"
        time.sleep(0.02)


@contextmanager
def feed(
    redis_url: str,
    tmp_path: Path,
    fake: FakeCoinbase,
    *,
    tuning: CoinbaseTuning = FAST,
    resume: bool = True,
    products: list[str] = PRODUCTS,
) -> Iterator[CoinbaseStats]:
    stats = CoinbaseStats()
    stop = threading.Event()
    result: dict[str, int] = {}
    settings = Settings(redis_url=redis_url, home=tmp_path)

    def target() -> None:
        result["rc"] = run_coinbase_feed(
            settings,
            [p.lower() for p in products],
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            stop_event=stop,
            tuning=tuning,
            stats=stats,
            resume=resume,
        )

    thread = threading.Thread(target=target, name="coinbase-feed-under-test")
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "the feed did not stop within 10 s of stop_event"
    assert result.get("rc") == 0


def test_the_raw_log_holds_the_market_as_sent(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Frames shaped as the docs' samples, kept as received: parsed, they are exactly the
    fake market's trades, taker side right; subscriptions and heartbeats are not written."""
    fake = FakeCoinbase(PRODUCTS, n_trades=200)
    with fake, feed(redis_url, tmp_path, fake) as stats:
        wait_complete(redis_client, fake)
    msgs = read_log(redis_client)
    assert_exactly_once(msgs, fake)
    assert all(m.payload in fake.frames for m in msgs)  # the bytes as sent
    assert fake.conns[0].subscribe == {
        "type": "subscribe",
        "product_ids": PRODUCTS,
        "channels": ["matches", "heartbeat"],
    }
    sides = Counter((orjson.loads(m.payload)["side"], trade_of(m).is_buyer_maker) for m in msgs)
    assert set(sides) == {("sell", False), ("buy", True)}
    assert stats.written == len(msgs) == 400 and stats.filled == 0 and stats.lost == 0


def test_a_dropped_connection_and_withheld_trades_are_filled_from_rest(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TCP drop, trades the socket skips (one run seen by the next match, the market's
    last ones only by the heartbeat's last_trade_id), REST answering 429 first: every
    trade once, the filled ones written before the live frames held behind them."""
    caplog.set_level(logging.INFO)
    n = 300
    withheld = {"BTC-USD": set(range(30, 40)), "ETH-USD": {n - 2, n - 1, n}}
    fake = FakeCoinbase(
        PRODUCTS,
        n_trades=n,
        plans={0: ConnPlan(drop_after=150)},
        withheld=withheld,
        rest_script=[(429, "1")],
    )
    with fake, feed(redis_url, tmp_path, fake) as stats:
        wait_complete(redis_client, fake)
    msgs = read_log(redis_client)
    assert_exactly_once(msgs, fake)
    filled = {(trade_of(m).symbol, trade_of(m).trade_id) for m in msgs if from_rest(m)}
    assert {(p, k) for p, ids in withheld.items() for k in ids} <= filled
    assert re.search(r"ETH-USD gap of \d trade ids \(\d+\.\.300\) seen by a heartbeat", caplog.text)
    assert stats.reconnects == 1 and len(fake.conns) == 2 and stats.lost == 0
    assert stats.filled == len(filled)
    # Filled in order: every product's ids increase through the log.
    for p in PRODUCTS:
        ids = [trade_of(m).trade_id for m in msgs if m.symbol == p]
        assert ids == sorted(ids)
    # The 429's Retry-After: 1 was waited out; never more than 10 requests a second.
    assert [r.status for r in fake.rest[:2]] == [429, 200]
    assert fake.rest[1].at - fake.rest[0].at >= 1.0
    assert stats.rate_limited == 1
    times = [r.at for r in fake.rest]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(times))
    assert all(int(r.query["limit"]) <= 1000 and "after" in r.query for r in fake.rest)


def test_a_silent_connection_is_replaced(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that stays open but sends nothing (no heartbeat either) is given up
    after silence_s and replaced; what it missed comes from REST, every trade once."""
    caplog.set_level(logging.INFO)
    plans = {0: ConnPlan(stall_after=80)}
    fake = FakeCoinbase(PRODUCTS, n_trades=200, heartbeat_s=0.2, plans=plans)
    tuning = dataclasses.replace(FAST, silence_s=0.6)
    with fake, feed(redis_url, tmp_path, fake, tuning=tuning) as stats:
        wait_complete(redis_client, fake)
    assert_exactly_once(read_log(redis_client), fake)
    assert "nothing received for 0.6s; replacing the connection" in caplog.text
    assert stats.reconnects == 1 and stats.filled > 0 and stats.lost == 0
    c0 = fake.conns[0]
    assert c0.closed is not None and c0.sent == 80


def test_a_restarted_feed_fetches_what_it_missed_while_down(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop, let the market run on, start again: the downtime's trades come from REST,
    before any live frame, in trade-time order, none twice."""
    caplog.set_level(logging.INFO)
    fake = FakeCoinbase(PRODUCTS, n_trades=400, tick_s=0.01)
    with fake:
        with feed(redis_url, tmp_path, fake) as first:
            wait_published(fake, 100)
        first_run = read_log(redis_client)
        points = CoinbaseResumePoints(redis_client, fake.ws_url).load(tuple(PRODUCTS))
        assert points == {
            p: max(trade_of(m).trade_id for m in first_run if m.symbol == p) for p in PRODUCTS
        }
        assert first.written == len(first_run)
        # The market goes on: 101 trades, the newest of which comes live, as the
        # last_match a new subscription gets first, so at least 100 come from REST.
        wait_published(fake, max(points.values()) + 101)
        with feed(redis_url, tmp_path, fake) as second:
            wait_complete(redis_client, fake)
    msgs = read_log(redis_client)
    assert_exactly_once(msgs, fake)
    run2 = msgs[len(first_run) :]
    live = [i for i, m in enumerate(run2) if not from_rest(m)]
    rest = [i for i, m in enumerate(run2) if from_rest(m)]
    assert live and rest and max(rest) < min(live)
    times = [trade_of(run2[i]).event_time for i in rest]
    assert times == sorted(times) and {run2[i].symbol for i in rest[:2]} == set(PRODUCTS)
    for p in PRODUCTS:
        assert sum(run2[i].symbol == p for i in rest) >= 100  # at least the downtime
    assert second.resumed == 2 and second.lost == 0 and second.filled == len(rest)
    assert f"resuming after BTC-USD id {points['BTC-USD']}" in caplog.text
    final = CoinbaseResumePoints(redis_client, fake.ws_url).load(tuple(PRODUCTS))
    assert final == dict.fromkeys(PRODUCTS, 400)


def test_progress_marks_follow_heartbeats_and_wait_for_a_gap(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Marks are the products' common heartbeat time: written while caught up, never
    backwards, on in a quiet market, and none while a withheld trade waits for REST
    (429, Retry-After: 2)."""
    w = 60
    fake = FakeCoinbase(
        PRODUCTS,
        n_trades=250,
        tick_s=0.01,
        heartbeat_s=0.25,
        live_clock=True,
        withheld={"BTC-USD": {w}},
        rest_script=[(429, "2")],
    )
    with fake, feed(redis_url, tmp_path, fake) as stats:
        wait_complete(redis_client, fake)
        quiet_from = time.time_ns() // 1_000_000
        time.sleep(2.0)
    entries = read_entries(redis_client, raw_stream_names(1)[0])
    msgs = [e for e in entries if isinstance(e, RawMessage)]
    assert_exactly_once(msgs, fake)
    marks = [e for e in entries if isinstance(e, ProgressMark)]
    assert all(m.exchange == "coinbase" for m in marks)
    assert [m.event_ms for m in marks] == sorted(m.event_ms for m in marks)
    # No trade comes after a mark it is older than (the mark covers it).
    highest = 0
    for e in entries:
        if isinstance(e, ProgressMark):
            highest = max(highest, e.event_ms)
        else:
            assert trade_of(e).event_time >= highest, (e, highest)
    # None between the gap's opening and its fill, which waited 2 s.
    pos = {(trade_of(m).symbol, trade_of(m).trade_id): i for i, m in enumerate(msgs)}
    opened = msgs[pos["BTC-USD", w + 1]].recv_ms
    filled = msgs[pos["BTC-USD", w]]
    assert from_rest(filled) and filled.recv_ms - opened >= 1500
    assert not [m for m in marks if opened < m.recv_ms < filled.recv_ms]
    assert marks and marks[-1].recv_ms > filled.recv_ms
    # A quiet market: marks at least every second, Coinbase's clock moving on.
    quiet = [m for m in marks if m.recv_ms >= quiet_from]
    recv = [quiet_from] + [m.recv_ms for m in quiet]
    assert len(quiet) >= 2 and max(b - a for a, b in itertools.pairwise(recv)) <= 1000
    last_trade = max(t.event_time for t in fake.all_trades())
    assert quiet[-1].event_ms >= last_trade + 1000
    assert stats.heartbeats >= 8 and stats.marks == len(marks)


def test_an_error_frame_is_logged_counted_and_not_written(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription Coinbase refuses (an unknown product): the error frame is logged
    with its reason and counted, nothing is written, the connection is retried."""
    fake = FakeCoinbase(PRODUCTS, n_trades=10)
    with fake, feed(redis_url, tmp_path, fake, products=["BTC-USD", "DOGE-EUR"]) as stats:
        deadline = time.monotonic() + 10
        while stats.errors < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stats.errors >= 2 and stats.reconnects >= 1 and stats.written == 0
    assert "DOGE-EUR is not a valid product" in caplog.text
    assert redis_client.xlen(raw_stream_names(1)[0]) == 0


def test_cli_feed_coinbase_stops_cleanly_on_sigint(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``cryptopipe feed coinbase`` end to end: its options, and SIGINT flushes and exits 0."""
    fake = FakeCoinbase(PRODUCTS, n_trades=150, plans={0: ConnPlan(drop_after=30)})
    with fake:
        env = {**os.environ, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
        env.pop("CRYPTOPIPE_FEED_PROCESS", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cryptopipe",
                "feed",
                "coinbase",
                "--redis-url",
                redis_url,
                "--products",
                "btc-usd,ETH-USD",
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
            wait_complete(redis_client, fake, timeout=30)
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert_exactly_once(read_log(redis_client), fake)
    assert "coinbase feed stopped" in err and "gap of" in err


# -- end to end: the candles of what the feed wrote ------------------------------------


@pytest.mark.slow
def test_candles_of_the_feed_are_the_reference_candles(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The real candles flow over what the feed wrote (a drop and a skipped trade filled
    from REST included) gives exactly the candles folded from the market's trades."""
    fake = FakeCoinbase(
        PRODUCTS,
        n_trades=300,
        step_ms=997,  # five minutes of trades: several 1m candles
        plans={0: ConnPlan(drop_after=200)},
        withheld={"ETH-USD": {77}},
    )
    with fake, feed(redis_url, tmp_path, fake):
        wait_complete(redis_client, fake)
    assert_exactly_once(read_log(redis_client), fake)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env |= {"REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    out = run_cryptopipe(env, "stream", "run", "candles", "--exit-when-idle", "2", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert redis_client.xlen(DLQ_STREAM) == 0
    assert redis_client.xlen(LATE_STREAM) == 0
    trades = fake.all_trades()
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    reader = StreamCandleReader(redis_client)
    got = {
        rec.candle.key: rec.candle.fields()
        for p in PRODUCTS
        for iv in Interval
        for rec in reader.read(p, iv, exchange="coinbase")
    }
    assert len(expected) > 2 * 5 and got == expected


def test_tuning_is_checked() -> None:
    with pytest.raises(ValueError, match="once a second"):
        dataclasses.replace(FAST, mark_every_s=2)
