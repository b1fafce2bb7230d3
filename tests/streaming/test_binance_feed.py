"""The live Binance feed against a local fake Binance (websocket + REST) and a real Redis.

Every scenario ends with the same check: the raw log, read back with XRANGE and
parsed with ``parse_message``, holds every trade id ``1..N`` of every symbol exactly
once (0 lost, 0 duplicated), each parsing to the trade the fake market made.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
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
from typing import cast

import pytest
import redis

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import F_MARK, ProgressMark, RawMessage, parse_mark
from marketdata.settings import Settings
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, LATE_STREAM, raw_stream_names
from serving.stream import StreamCandleReader
from streaming.feeds.binance.config import BinanceFeedConfig, FeedStats, FeedTuning
from streaming.feeds.binance.feed import run_binance_feed
from streaming.feeds.binance.rest import rest_trade_payload
from streaming.feeds.ids import IdTracker, ResumePoints
from tests.processes import run_cryptopipe
from tests.streaming.fake_binance import (
    ConnPlan,
    FakeBinance,
    expected_trade,
    trade_frame,
    trade_row,
)

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
FAST = FeedTuning(
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    gap_grace_s=0.1,
    flush_interval_s=0.02,
    roll_overlap_s=1.0,
    fill_max_attempts=5,
    stats_every_s=1.0,
)


# -- pure pieces --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "watermark", "holes", "duplicates"),
    [
        ([5], 5, [], 0),
        ([5, 6, 7], 7, [], 0),
        ([5, 5, 6, 5], 6, [], 2),
        ([5, 9], 5, [(6, 8)], 0),
        ([5, 9, 7], 5, [(6, 6), (8, 8)], 0),
        ([5, 9, 7, 6, 8], 9, [], 0),
        ([5, 9, 12, 9, 12, 4], 5, [(6, 8), (10, 11)], 3),
        ([10, 20, 30, 11, 21], 11, [(12, 19), (22, 29)], 0),
    ],
)
def test_id_tracker(
    ids: list[int], watermark: int, holes: list[tuple[int, int]], duplicates: int
) -> None:
    tracker = IdTracker()
    dups = sum(not tracker.add(i) for i in ids)
    assert (tracker.watermark, tracker.holes(), dups) == (watermark, holes, duplicates)


def test_id_tracker_ranges_and_memory() -> None:
    tracker = IdTracker()
    tracker.add(100)
    for i in range(200, 100_000):  # a long run above one gap: one range, not 99,800 ids
        tracker.add(i)
    assert tracker.holes() == [(101, 199)]
    assert len(tracker._lo) == 1
    assert tracker.first_missing(101, 199) == 101
    assert tracker.first_missing(150, 250) == 150
    assert tracker.first_missing(200, 300) is None
    assert tracker.mark(90, 150) == 50  # only 101..150 were new
    assert tracker.first_missing(101, 199) == 151
    assert tracker.mark(151, 199) == 49
    assert (tracker.watermark, tracker.holes(), tracker._lo) == (99_999, [], [])


def test_rest_rows_become_the_same_trade_as_frames() -> None:
    for tid in (1, 77, 12345):
        payload = rest_trade_payload("BTCUSDT", trade_row(tid))
        assert b'"source":"rest"' in payload and b'"stream":"btcusdt@trade"' in payload
        from_rest = parse_message(payload, recv_ms=2_000_000_000_000)
        from_ws = parse_message(trade_frame("BTCUSDT", tid), recv_ms=2_000_000_000_000)
        assert from_rest == from_ws == expected_trade("BTCUSDT", tid)


@pytest.mark.parametrize(
    "base",
    ["wss://stream.binance.com:9443", "wss://stream.binance.com:9443/", "wss://x:1/stream"],
)
def test_combined_stream_url(base: str) -> None:
    cfg = BinanceFeedConfig(("BTCUSDT", "ETHUSDT"), ws_url=base)
    host = base.split("//")[1].split("/")[0]
    assert cfg.stream_url == f"wss://{host}/stream?streams=btcusdt@trade/ethusdt@trade"


def test_config_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="no symbols"):
        BinanceFeedConfig(())
    with pytest.raises(ValueError, match="websocket URL"):
        BinanceFeedConfig(("BTCUSDT",), ws_url="https://stream.binance.com")
    with pytest.raises(ValueError, match="bad symbol"):
        run_binance_feed(Settings(), ["BTC-USDT"])


# -- scenarios against the fake Binance -----------------------------------------------


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


def read_stream(client: redis.Redis, stream: str) -> list[RawMessage]:
    """The messages of a raw-log stream (its progress marks left out)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    return [RawMessage.from_fields(f) for _, f in entries if F_MARK not in f]


def read_log(client: redis.Redis, shards: int) -> list[RawMessage]:
    return [m for stream in raw_stream_names(shards) for m in read_stream(client, stream)]


def trade_ids(msgs: list[RawMessage]) -> Counter[tuple[str, int]]:
    out: Counter[tuple[str, int]] = Counter()
    for m in msgs:
        t = parse_message(m.payload, fmt=m.fmt, exchange=m.exchange, recv_ms=m.recv_ms)
        if isinstance(t, Trade):
            out[t.symbol, t.trade_id] += 1
    return out


def assert_exactly_once(msgs: list[RawMessage], n: int, fake: FakeBinance | None = None) -> None:
    trades = []
    for m in msgs:
        assert m.exchange == "binance"
        t = parse_message(m.payload, fmt=m.fmt, exchange=m.exchange, recv_ms=m.recv_ms)
        assert isinstance(t, Trade), (t, m.payload)
        make = expected_trade if fake is None else fake.trade
        want = make(t.symbol, t.trade_id)
        assert t == want
        assert m.symbol == t.symbol
        trades.append((t.symbol, t.trade_id))
    counts = Counter(trades)
    expected = {(s, i) for s in SYMBOLS for i in range(1, n + 1)}
    lost = expected - set(counts)
    duplicated = {k: c for k, c in counts.items() if c > 1}
    assert (sorted(lost)[:10], len(lost)) == ([], 0)
    assert duplicated == {}
    assert set(counts) == expected


def wait_complete(
    client: redis.Redis, fake: FakeBinance, shards: int, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    want = {(s, i) for s in SYMBOLS for i in range(1, fake.n_trades + 1)}
    have: set[tuple[str, int]] = set()
    while time.monotonic() < deadline:
        if fake.done:
            have = set(trade_ids(read_log(client, shards)))
            if want <= have:
                return
        time.sleep(0.1)
    missing = sorted(want - have)
    pytest.fail(f"{len(missing)} trades never reached the raw log, e.g. {missing[:10]}")


@contextmanager
def feed(
    redis_url: str,
    tmp_path: Path,
    fake: FakeBinance,
    *,
    shards: int = 1,
    api_key: str | None = None,
    tuning: FeedTuning = FAST,
    resume: bool = True,
) -> Iterator[FeedStats]:
    stats = FeedStats()
    stop = threading.Event()
    result: dict[str, int] = {}
    settings = Settings(redis_url=redis_url, home=tmp_path, raw_shards=shards)

    def target() -> None:
        result["rc"] = run_binance_feed(
            settings,
            [s.lower() for s in SYMBOLS],
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            stop_event=stop,
            api_key=api_key,
            tuning=tuning,
            stats=stats,
            resume=resume,
        )

    thread = threading.Thread(target=target, name="feed-under-test")
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "the feed did not stop within 10 s of stop_event"
    assert result.get("rc") == 0


def test_drops_duplicates_and_refused_handshakes(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Abort without close frame, close frame, 503 and 429 handshakes, frames sent twice."""
    fake = FakeBinance(
        SYMBOLS,
        n_trades=400,
        plans={0: ConnPlan(drop_after=40), 1: ConnPlan(close_after=60)},
        refuse={1: (503, None), 2: (429, "1")},
        duplicate_every=7,
        ping=True,
    )
    with fake, feed(redis_url, tmp_path, fake, shards=2) as stats:
        wait_complete(redis_client, fake, shards=2)
    msgs = read_log(redis_client, 2)
    assert_exactly_once(msgs, 400)
    # Sharded by symbol: each symbol's trades in exactly one stream.
    for sym in SYMBOLS:
        homes = {
            name
            for name in raw_stream_names(2)
            for m in read_stream(redis_client, name)
            if m.symbol == sym
        }
        assert len(homes) == 1
    # The combined-stream URL, and the websocket answered the server's pings.
    assert fake.conns[0].path == "/stream?streams=btcusdt@trade/ethusdt@trade"
    assert any(c.pong_latency is not None and c.pong_latency < 1 for c in fake.conns)
    # The 429 handshake's Retry-After: 1 was honoured.
    times = [t for t, _ in fake.handshakes]
    assert [s for _, s in fake.handshakes[:4]] == [101, 503, 429, 101]
    assert times[3] - times[2] >= 1.0
    assert stats.reconnects >= 2 and stats.duplicates > 20
    assert stats.filled > 0 and stats.lost == 0
    assert stats.written == len(msgs) == 800


def test_gaps_filled_from_rest_honouring_429_and_418(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ids the socket never delivers come from historicalTrades, after 429 and 418 waits."""
    caplog.set_level(logging.DEBUG)
    secret = "test-api-key-do-not-log-4f1c"
    withheld = {"BTCUSDT": {*range(10, 20), 77}, "ETHUSDT": {5, *range(150, 161)}}
    fake = FakeBinance(
        SYMBOLS, n_trades=250, withheld=withheld, rest_script=[(429, "1"), (418, "1")]
    )
    with fake, feed(redis_url, tmp_path, fake, api_key=secret) as stats:
        wait_complete(redis_client, fake, shards=1)
    msgs = read_log(redis_client, 1)
    assert_exactly_once(msgs, 250)
    # Exactly the withheld trades were synthesized from REST, and marked as such.
    from_rest = {
        (m.symbol, parse_message(m.payload).trade_id)  # type: ignore[union-attr]
        for m in msgs
        if b'"source":"rest"' in m.payload
    }
    assert from_rest == {(s, i) for s, ids in withheld.items() for i in ids}
    assert stats.filled == len(from_rest) == 23 and stats.gap_ids == 23
    # 429 then 418, each with Retry-After: 1, each waited out before the next request.
    assert [r.status for r in fake.rest[:3]] == [429, 418, 200]
    assert fake.rest[1].at - fake.rest[0].at >= 1.0
    assert fake.rest[2].at - fake.rest[1].at >= 1.0
    assert stats.rate_limited == 2
    assert all(r.query["limit"] and int(r.query["limit"]) <= 1000 for r in fake.rest)
    # The optional API key is sent as X-MBX-APIKEY, and never logged.
    assert all(r.api_key == secret for r in fake.rest)
    assert secret not in caplog.text
    assert "gap of 10 trade ids (10..19)" in caplog.text


def test_server_shutdown_then_close(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """serverShutdown, then close: the replacement is opened first.

    Connection 0 is closed 0.5 s after its serverShutdown: the new connection
    overlaps it. Connection 1 is closed at once and its replacement's handshake is
    refused (429, Retry-After: 1), so the trades of that second are filled from REST.
    """
    fake = FakeBinance(
        SYMBOLS,
        n_trades=400,
        plans={
            0: ConnPlan(shutdown_after=50, close_delay_s=0.5),
            1: ConnPlan(shutdown_after=50, shutdown_wrapped=True, close_delay_s=0.0),
        },
        refuse={2: (429, "1")},
    )
    with fake, feed(redis_url, tmp_path, fake) as stats:
        wait_complete(redis_client, fake, shards=1)
    msgs = read_log(redis_client, 1)
    assert_exactly_once(msgs, 400)
    assert not any(b"serverShutdown" in m.payload for m in msgs)
    assert stats.server_shutdowns == 2 and stats.rolls == 2
    # The replacement of connection 0 was open before the server closed connection 0.
    c0, c1 = fake.conns[0], fake.conns[1]
    assert c0.closed is not None and c1.opened < c0.closed
    assert [s for _, s in fake.handshakes[:4]] == [101, 101, 429, 101]
    assert stats.filled > 0 and stats.lost == 0


def test_rolls_connections_before_max_age(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A tiny max connection age: overlapping rolls, nothing lost or doubled."""
    fake = FakeBinance(SYMBOLS, n_trades=400)
    tuning = dataclasses.replace(FAST, max_connection_age_s=0.3)
    with fake, feed(redis_url, tmp_path, fake, tuning=tuning) as stats:
        wait_complete(redis_client, fake, shards=1)
    assert_exactly_once(read_log(redis_client, 1), 400)
    assert stats.rolls >= 3 and stats.reconnects == 0
    for old, new in zip(fake.conns, fake.conns[1:], strict=False):
        assert old.closed is not None and new.opened < old.closed  # overlap, no gap
    assert stats.lost == 0


def test_cli_feed_binance_stops_cleanly_on_sigint(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``cryptopipe feed binance`` end to end: SIGINT flushes and exits 0."""
    fake = FakeBinance(SYMBOLS, n_trades=150, plans={0: ConnPlan(drop_after=30)})
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
            wait_complete(redis_client, fake, shards=1, timeout=30)
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert_exactly_once(read_log(redis_client, 1), 150)
    assert "binance feed stopped" in err and "gap of" in err


def test_stop_during_a_ban_is_prompt_and_never_hammers(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 418 with Retry-After: 30 holds every REST request; a stop still ends at once."""
    caplog.set_level(logging.INFO)
    fake = FakeBinance(SYMBOLS, n_trades=150, withheld={"ETHUSDT": {40}}, rest_script=[(418, "30")])
    with fake:
        with feed(redis_url, tmp_path, fake) as stats:
            deadline = time.monotonic() + 15
            while not (fake.done and fake.rest) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            stopped_at = time.monotonic()
        assert time.monotonic() - stopped_at < 2.0
    assert [r.status for r in fake.rest] == [418]  # one request, then waiting
    counts = trade_ids(read_log(redis_client, 1))
    assert set(counts.values()) == {1}
    assert set(counts) == {(s, i) for s in SYMBOLS for i in range(1, 151)} - {("ETHUSDT", 40)}
    assert stats.lost == 0 and stats.filled == 0
    assert "ETHUSDT: stopping with 1 trade ids unfilled" in caplog.text


def wait_published(fake: FakeBinance, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while min(fake.published.values()) < n:
        assert time.monotonic() < deadline, f"the fake market did not reach {n}"
        time.sleep(0.02)


def missing_ids(client: redis.Redis, n: int) -> dict[str, list[int]]:
    have = trade_ids(read_log(client, 1))
    return {s: [i for i in range(1, n + 1) if (s, i) not in have] for s in SYMBOLS}


def test_a_restarted_feed_fetches_what_it_missed_while_down(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop, let the market run on, start again: the downtime's trades come from REST."""
    caplog.set_level(logging.INFO)
    fake = FakeBinance(SYMBOLS, n_trades=500, tick_s=0.01)
    with fake:
        with feed(redis_url, tmp_path, fake) as first:
            wait_published(fake, 120)
        down_from = dict(fake.published)
        wait_published(fake, max(down_from.values()) + 100)  # the market goes on
        points = ResumePoints(redis_client, fake.ws_url).load(tuple(SYMBOLS))
        # The position recorded at the clean stop is everything the first run wrote.
        first_run = trade_ids(read_log(redis_client, 1))
        assert points == {s: max(i for t, i in first_run if t == s) for s in SYMBOLS}
        assert first.written == sum(first_run.values())
        with feed(redis_url, tmp_path, fake) as second:
            wait_complete(redis_client, fake, shards=1)
    msgs = read_log(redis_client, 1)
    assert_exactly_once(msgs, 500)  # nothing lost, nothing fetched twice
    # Backfill before live: the second run wrote every trade it fetched from REST
    # before any frame it received (of either symbol).
    run2 = msgs[sum(first_run.values()) :]
    live = [i for i, m in enumerate(run2) if b'"source":"rest"' not in m.payload]
    rest = [i for i, m in enumerate(run2) if b'"source":"rest"' in m.payload]
    assert live and rest and max(rest) < min(live)
    # ...in trade-time order across the symbols (the venue has one clock).
    times = [trade_of(run2[i]).event_time for i in rest]
    assert times == sorted(times) and {run2[i].symbol for i in rest[:2]} == set(SYMBOLS)
    from_rest = Counter(m.symbol for m in msgs if b'"source":"rest"' in m.payload)
    for sym in SYMBOLS:
        assert from_rest[sym] >= 100  # at least the downtime
    assert second.resumed == 2 and second.lost == 0
    assert second.filled == sum(from_rest.values())
    assert f"resuming after BTCUSDT id {points['BTCUSDT']}" in caplog.text
    final = ResumePoints(redis_client, fake.ws_url).load(tuple(SYMBOLS))
    assert final == dict.fromkeys(SYMBOLS, 500)


@pytest.mark.parametrize("mode", ["capped", "no-resume", "other-sequence"])
def test_resuming_is_bounded_and_can_be_turned_off(
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """At most resume_max_ids per symbol are fetched; --no-resume and a foreign position
    fetch nothing; every id not fetched is accounted for and said."""
    caplog.set_level(logging.INFO)
    fake = FakeBinance(SYMBOLS, n_trades=400, tick_s=0.01)
    with fake:
        store = ResumePoints(redis_client, fake.ws_url)
        if mode == "other-sequence":
            store.save(dict.fromkeys(SYMBOLS, 10**9))  # e.g. another venue's ids
        else:
            with feed(redis_url, tmp_path, fake):
                wait_published(fake, 60)
            wait_published(fake, max(fake.published.values()) + 120)
        points = store.load(tuple(SYMBOLS))
        tuning = dataclasses.replace(FAST, resume_max_ids=25)
        with feed(redis_url, tmp_path, fake, tuning=tuning, resume=mode != "no-resume") as st:
            wait_published(fake, 400)
            time.sleep(0.5)
    missing = missing_ids(redis_client, 400)
    for sym in SYMBOLS:
        m = missing[sym]
        if mode == "other-sequence":
            first_live = m[-1] + 1 if m else 1
            assert m == list(range(1, first_live))  # only what came before the start
            continue
        assert m and m[0] == points[sym] + 1 and m == list(range(m[0], m[-1] + 1)), m[:5]
        if mode == "capped":
            # The 25 ids before the first live trade were fetched; the older ones not.
            fetched = sorted(
                i for s, i in trade_ids(read_log(redis_client, 1)) if s == sym and i > m[-1]
            )[:26]
            assert fetched == list(range(m[-1] + 1, m[-1] + 27))
    if mode == "capped":
        assert st.resumed == 2 and st.lost == sum(len(m) for m in missing.values())
        assert st.filled == 2 * 25
        assert "load Binance's daily trade dumps for them with 'cryptopipe lake import'" in (
            caplog.text
        )
    elif mode == "no-resume":
        assert st.resumed == 0 and st.filled == 0 and not list(fake.rest_ok())
    else:
        assert st.resumed == 0 and st.filled == 0
        assert "not the same id sequence" in caplog.text
    # Every trade this run received is in the log exactly once.
    assert set(trade_ids(read_log(redis_client, 1)).values()) == {1}


# -- progress marks and backfill before live ------------------------------------------


def trade_of(m: RawMessage) -> Trade:
    t = parse_message(m.payload, fmt=m.fmt, exchange=m.exchange, recv_ms=m.recv_ms)
    assert isinstance(t, Trade), (t, m.payload)
    return t


def from_rest(m: RawMessage) -> bool:
    return b'"source":"rest"' in m.payload


def assert_marks_follow_their_trades(
    entries: list[RawMessage | ProgressMark], slack_ms: int = 250
) -> None:
    """Marks never go back, are never ahead of their clock by more than 1 s, and no
    trade written after a mark is more than ``slack_ms`` before it (far less than the
    lateness: the mark is Binance's time, not ours).

    The fake market's time runs a little slower than the wall clock (a tick sleeps
    at least ``tick_s``), so a trade may trail the mark before it by a few ms."""
    marks = [e for e in entries if isinstance(e, ProgressMark)]
    assert all(m.exchange == "binance" for m in marks)
    assert all(m.event_ms <= m.recv_ms + 1000 for m in marks)
    assert [m.event_ms for m in marks] == sorted(m.event_ms for m in marks)
    highest = 0
    for e in entries:
        if isinstance(e, ProgressMark):
            highest = max(highest, e.event_ms)
        else:
            assert trade_of(e).event_time > highest - slack_ms, (e, highest)


def test_marks_every_second_in_a_quiet_market(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A market that trades, then goes quiet: the feed keeps writing progress marks
    (every shard, at least once a second, never going back), after the trades."""
    fake = FakeBinance(SYMBOLS, n_trades=100, tick_s=0.01, live_clock=True)
    with fake, feed(redis_url, tmp_path, fake, shards=2) as stats:
        wait_complete(redis_client, fake, shards=2)
        quiet_from = time.time_ns() // 1_000_000
        time.sleep(3.0)
    assert_exactly_once(read_log(redis_client, 2), 100, fake)
    last_trade = max(fake.times.values())
    for stream in raw_stream_names(2):
        entries = read_entries(redis_client, stream)
        assert_marks_follow_their_trades(entries)
        marks = [e for e in entries if isinstance(e, ProgressMark)]
        quiet = [m for m in marks if m.recv_ms >= quiet_from]
        assert len(quiet) >= 3, marks[-5:]
        recv = [quiet_from] + [m.recv_ms for m in quiet]
        assert max(b - a for a, b in itertools.pairwise(recv)) <= 1000
        # Binance's time moves on with the wall clock while nothing trades.
        assert quiet[-1].event_ms >= last_trade + 2500
        assert quiet[-1].event_ms >= quiet[0].event_ms + 2000
    assert stats.marks >= 6


@pytest.mark.parametrize("hold_max", [50_000, 30])
def test_live_frames_wait_behind_a_gap_being_filled(
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    hold_max: int,
) -> None:
    """A trade the socket skips; REST answers 429 (Retry-After: 2) first. While the gap
    is pending the live frames of every symbol are held and no mark is written; they
    follow the filled trade. With a small hold_max they are written anyway, said once."""
    caplog.set_level(logging.INFO)
    w = 60
    fake = FakeBinance(
        SYMBOLS,
        n_trades=400,
        tick_s=0.01,
        live_clock=True,
        withheld={"BTCUSDT": {w}},
        rest_script=[(429, "2")],
    )
    tuning = dataclasses.replace(FAST, hold_max=hold_max)
    with fake, feed(redis_url, tmp_path, fake, tuning=tuning) as stats:
        wait_complete(redis_client, fake, shards=1)
        time.sleep(1.2)
    entries = read_entries(redis_client, raw_stream_names(1)[0])
    msgs = [e for e in entries if isinstance(e, RawMessage)]
    assert_exactly_once(msgs, 400, fake)
    assert_marks_follow_their_trades(entries)
    pos = {(trade_of(m).symbol, trade_of(m).trade_id): i for i, m in enumerate(msgs)}
    filled = msgs[pos["BTCUSDT", w]]
    assert from_rest(filled)
    # The gap was seen here (a mark of this same ms may come before: the feed could
    # not know yet).
    opened = msgs[pos["BTCUSDT", w + 1]].recv_ms
    assert filled.recv_ms - opened >= 2000  # REST made us wait 2 s
    marks = [e for e in entries if isinstance(e, ProgressMark)]
    assert marks and marks[-1].recv_ms > filled.recv_ms  # marks again once caught up
    marks_before_fill = entries[: entries.index(filled)]
    marks_before_fill = [e for e in marks_before_fill if isinstance(e, ProgressMark)]
    # Received while the gap was pending (of either symbol).
    behind = [m for m in msgs if opened <= m.recv_ms <= filled.recv_ms]
    live_behind = [m for m in behind if not from_rest(m)]
    assert len(live_behind) >= 2 * 150  # 2 s of two symbols' ticks
    if hold_max > 100:
        # Nothing was written between the gap opening and its filling but the fill:
        # no mark, no live frame of either symbol.
        assert not [m for m in marks_before_fill if m.recv_ms > opened]
        first_behind = min(pos[trade_of(m).symbol, trade_of(m).trade_id] for m in behind)
        assert first_behind == pos["BTCUSDT", w]
        assert stats.held >= len(live_behind) - 2 and stats.hold_overflows == 0
        assert "kept behind a backfill" not in caplog.text
    else:
        # The bound: 30 held, then live was written before the fill (said once).
        assert stats.hold_overflows == 1 and stats.held == 30
        assert caplog.text.count("kept behind a backfill (hold_max)") == 1
        assert (
            min(pos[trade_of(m).symbol, trade_of(m).trade_id] for m in live_behind)
            < (pos["BTCUSDT", w])
        )
        assert not [m for m in marks_before_fill if m.recv_ms > opened]
    assert stats.filled == 1 and stats.lost == 0


def test_a_second_gap_opened_behind_a_first_goes_among_the_frames_of_its_time(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """BTCUSDT skips trade 30, ETHUSDT trade 45 while the first fill waits 2 s on a 429.
    Both backfills and the live frames held behind them are written merged by trade
    time: the raw log's trade times never go back, so ETHUSDT 45 comes after the held
    frames older than it (all filled first, then the held ones, would put it before
    them), and each symbol's ids come in order."""
    fake = FakeBinance(
        SYMBOLS,
        n_trades=120,
        tick_s=0.01,
        live_clock=True,
        withheld={"BTCUSDT": {30}, "ETHUSDT": {45}},
        rest_script=[(429, "2")],
    )
    with fake, feed(redis_url, tmp_path, fake) as stats:
        wait_complete(redis_client, fake, shards=1)
    msgs = read_stream(redis_client, raw_stream_names(1)[0])
    assert_exactly_once(msgs, 120, fake)
    trades = [trade_of(m) for m in msgs]
    assert {(t.symbol, t.trade_id) for m, t in zip(msgs, trades, strict=True) if from_rest(m)} == {
        ("BTCUSDT", 30),
        ("ETHUSDT", 45),
    }
    times = [t.event_time for t in trades]
    assert times == sorted(times)
    for symbol in SYMBOLS:
        assert [t.trade_id for t in trades if t.symbol == symbol] == list(range(1, 121))
    assert stats.held >= 2 * 15 and stats.hold_overflows == 0


def test_a_restart_in_a_quiet_market_probes_rest_then_marks(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Restarted after the market went quiet: no live trade will say what was missed,
    so the feed asks REST for each symbol's newest trade, fills the downtime, and only
    then writes progress marks."""
    fake = FakeBinance(SYMBOLS, n_trades=300, tick_s=0.01, live_clock=True)
    with fake:
        with feed(redis_url, tmp_path, fake):
            wait_published(fake, 100)
        first_len = len(read_entries(redis_client, raw_stream_names(1)[0]))
        while not fake.done:
            time.sleep(0.05)
        with feed(redis_url, tmp_path, fake) as second:
            wait_complete(redis_client, fake, shards=1)
            time.sleep(1.5)
    entries = read_entries(redis_client, raw_stream_names(1)[0])
    assert_exactly_once([e for e in entries if isinstance(e, RawMessage)], 300, fake)
    assert_marks_follow_their_trades(entries)
    run2 = entries[first_len:]
    backfill = [i for i, e in enumerate(run2) if isinstance(e, RawMessage)]
    marks = [i for i, e in enumerate(run2) if isinstance(e, ProgressMark)]
    assert all(from_rest(run2[i]) for i in backfill)  # nothing live: the market is done
    assert marks and min(marks) > max(backfill)  # no mark before the backfill is written
    assert second.probes == 2 and second.resumed == 2 and second.lost == 0
    assert second.filled == len(backfill) >= 2 * 150


# -- end to end: a restarted feed's backfill is on time ---------------------------------


def stream_candles(client: redis.Redis, symbols: list[str]) -> dict:
    reader = StreamCandleReader(client)
    return {
        rec.candle.key: rec.candle.fields()
        for sym in symbols
        for iv in Interval
        for rec in reader.read(sym, iv)
    }


@pytest.mark.slow
def test_a_feed_down_for_a_minute_delivers_its_backfill_on_time(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The market trades now (wall-clock times) and goes on while the feed is down for
    60 s. Restarted, the feed fetches the downtime from REST and writes it before any
    live frame; the candles flow, with its default hold (2 min), then counts every
    trade on time, and its candles are the reference candles of every trade."""
    fake = FakeBinance(SYMBOLS, n_trades=1500, tick_s=0.05, live_clock=True)
    with fake:
        with feed(redis_url, tmp_path, fake):
            wait_published(fake, 100)
        stopped = dict(fake.published)
        time.sleep(60)
        with feed(redis_url, tmp_path, fake) as second:
            wait_complete(redis_client, fake, shards=1, timeout=60)
            time.sleep(1.5)
        assert min(fake.published.values()) - max(stopped.values()) >= 1000
        trades = [fake.trade(s, i) for s in SYMBOLS for i in range(1, fake.n_trades + 1)]
    entries = read_entries(redis_client, raw_stream_names(1)[0])
    assert_exactly_once([e for e in entries if isinstance(e, RawMessage)], 1500, fake)
    assert_marks_follow_their_trades(entries)
    assert second.resumed == 2 and second.lost == 0 and second.filled >= 2 * 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env |= {"REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    out = run_cryptopipe(env, "stream", "run", "candles", "--exit-when-idle", "2", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert redis_client.xlen(LATE_STREAM) == 0
    assert redis_client.xlen(DLQ_STREAM) == 0
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    assert stream_candles(redis_client, SYMBOLS) == expected
