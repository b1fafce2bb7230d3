"""The id book both live feeds share (:mod:`streaming.feeds.ids`), through each venue's.

The same accounting (giving up, filling, positions moved, gaps left open, the resume
store) must count alike and speak in each feed's own words: ``binance feed`` with its
stream's noun, ``coinbase feed`` with trade ids and what showed a gap.
"""

from __future__ import annotations

import logging

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streaming.feeds.binance.config import SPOT_AGG_TRADES, FeedStats, FeedTuning
from streaming.feeds.binance.ids import TradeIds
from streaming.feeds.coinbase.config import CoinbaseStats, CoinbaseTuning
from streaming.feeds.coinbase.ids import CoinbaseResumePoints, ProductIds
from streaming.feeds.ids import ResumePoints


def _book(venue: str) -> TradeIds | ProductIds:
    if venue == "binance":
        return TradeIds(("BTCUSDT",), FeedTuning(), FeedStats(), stream=SPOT_AGG_TRADES)
    return ProductIds(("BTCUSDT",), CoinbaseTuning(), CoinbaseStats())


@pytest.mark.parametrize(
    ("venue", "logger", "words"),
    [
        ("binance", "streaming.feeds.binance", "binance feed: BTCUSDT%s aggregate trade ids"),
        ("coinbase", "streaming.feeds.coinbase", "coinbase feed: BTCUSDT%s trade ids"),
    ],
)
def test_shared_accounting_counts_and_speaks_per_venue(
    venue: str, logger: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    book = _book(venue)
    caplog.set_level(logging.INFO, logger=logger)
    assert book.accept("BTCUSDT", 10) == (True, False)
    assert book.accept("BTCUSDT", 20) == (True, True)  # 11..19 missing
    assert book.accept_filled("BTCUSDT", 11) and not book.accept_filled("BTCUSDT", 11)
    book.give_up("BTCUSDT", 12, 13, "the REST API failed")
    assert book.moved() == {"BTCUSDT": 13}
    book.saved.update({"BTCUSDT": 13})
    assert book.moved() is None and book.pending()
    book.log_open_gaps()
    s = book.stats
    assert (s.trades, s.duplicates, s.filled, s.lost, s.gaps, s.gap_ids) == (3, 1, 1, 2, 1, 9)
    assert {r.name for r in caplog.records} == {logger}
    text = caplog.text
    assert words % " gap of 9" + " (11..19)" in text
    assert words % ": giving up on 2" + " in 12..13 (the REST API failed)" in text
    assert words % ": stopping with 6" + " unfilled in 1 gaps (14..19)" in text


def test_resume_points_per_venue(redis_client: redis.Redis) -> None:
    ResumePoints(redis_client, "wss://h:1/ws").save({"BTCUSDT": 5})
    ResumePoints(redis_client, "wss://h:1/ws", "aggTrade").save({"BTCUSDT": 6})
    CoinbaseResumePoints(redis_client, "wss://h:1/ws").save({"BTCUSDT": 7, "ETH-USD": 8})
    assert ResumePoints(redis_client, "wss://h:1/ws").load(("BTCUSDT", "X")) == {"BTCUSDT": 5}
    assert ResumePoints(redis_client, "wss://h:1/ws", "aggTrade").load(("BTCUSDT",)) == {
        "BTCUSDT": 6
    }
    assert CoinbaseResumePoints(redis_client, "wss://h:1/ws").load(("ETH-USD",)) == {"ETH-USD": 8}
    assert redis_client.exists("md:feed:coinbase:resume:h:1") == 1


def test_refused_save_is_said_by_its_own_feed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Nothing listens on port 1; no retries (the client's default backs off for seconds).
    closed = redis.Redis(port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    assert not CoinbaseResumePoints(closed, "wss://h:1/ws").save({"ETH-USD": 1})
    assert not ResumePoints(closed, "wss://h:1/ws").save({"BTCUSDT": 1})
    ours = [r for r in caplog.records if r.name.startswith("streaming.")]
    said = [(r.name, r.getMessage().split(":")[0]) for r in ours]
    assert said == [
        ("streaming.feeds.coinbase", "coinbase feed"),
        ("streaming.feeds.binance", "binance feed"),
    ]
