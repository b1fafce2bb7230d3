"""Reconciliation outcomes on days with known differences (pure, exact)."""

from __future__ import annotations

import random

from marketdata.candle import Candle, fold_trades
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.reconcile import (
    EXPLAINED,
    EXTRA,
    MATCH,
    MISMATCH,
    MISSING,
    OUTCOMES,
    LateTrade,
    reconcile,
)
from marketdata.trade import Trade

T0 = 1_741_910_400_000


def day(n: int = 3000, seed: int = 1) -> list[Trade]:
    rnd = random.Random(seed)
    return [
        Trade(
            exchange="binance",
            symbol=rnd.choice(["BTCUSDT", "ETHUSDT"]),
            trade_id=i,
            price_e8=rnd.randrange(10**9, 10**12),
            quantity_e8=rnd.randrange(1, 10**8),
            event_time=T0 + rnd.randrange(86_400_000),
            is_buyer_maker=rnd.random() < 0.5,
        )
        for i in range(n)
    ]


def candles(trades: list[Trade]) -> dict:
    out = {}
    for iv in ALL_INTERVALS:
        out.update(fold_trades(trades, iv))
    return out


def late_for(trades: list[Trade]) -> list[LateTrade]:
    # Late for its 1m window, hence for every coarser one (as the candles flow does it).
    return [
        LateTrade(t, {iv.label: iv.floor(t.event_time) for iv in ALL_INTERVALS}) for t in trades
    ]


def test_identical_days_match_everywhere() -> None:
    trades = day()
    result = reconcile(candles(trades), candles(trades))
    assert result.ok and result.differences == []
    assert result.counts[MATCH] == len(candles(trades))
    assert list(result.summary()["counts"]) == list(OUTCOMES)


def test_late_trades_are_all_explained() -> None:
    trades = day()
    late = trades[::50]
    on_time = [t for t in trades if t not in set(late)]
    # A window whose every trade was late: the stream has no candle there.
    busy = {Interval.M1.floor(t.event_time) for t in trades if t.symbol == "BTCUSDT"}
    empty = next(T0 + m * 60_000 for m in range(1440) if T0 + m * 60_000 not in busy)
    lonely = Trade(
        exchange="binance",
        symbol="BTCUSDT",
        trade_id=99_999,
        price_e8=5 * 10**10,
        quantity_e8=10**8,
        event_time=empty + 1,
        is_buyer_maker=False,
    )
    # late[0] again: a repeated late trade
    result = reconcile(
        candles(on_time), candles([*trades, lonely]), late_for([*late, lonely, late[0]])
    )
    assert result.ok, result.summary()
    assert result.counts[EXPLAINED] > 0 and result.counts[MISMATCH] == 0
    lonely_key = ("binance", "BTCUSDT", "1m", Interval.M1.floor(lonely.event_time))
    diff = next(d for d in result.differences if d.key == lonely_key)
    assert diff.outcome == EXPLAINED and diff.stream is None


def test_stream_that_lost_trades_is_reported() -> None:
    trades = day()
    lost = trades[10]
    result = reconcile(candles([t for t in trades if t is not lost]), candles(trades))
    assert not result.ok
    outcomes = {d.key[2]: d.outcome for d in result.differences}
    assert set(outcomes) == {iv.label for iv in ALL_INTERVALS}
    assert set(outcomes.values()) <= {MISMATCH, MISSING}
    assert result.differences[0].quote_gap_e16 == lost.price_e8 * lost.quantity_e8
    assert "volume" in result.differences[0].differing


def test_archive_that_lost_a_whole_window_is_extra_in_stream() -> None:
    trades = day()
    gone = Interval.M1.floor(trades[0].event_time)
    sym = trades[0].symbol
    archived = [
        t for t in trades if not (t.symbol == sym and Interval.M1.floor(t.event_time) == gone)
    ]
    result = reconcile(candles(trades), candles(archived))
    extra = [d for d in result.differences if d.outcome == EXTRA]
    assert [d.key for d in extra] == [("binance", sym, "1m", gone)]
    assert result.counts[EXTRA] == 1 and result.unexplained >= 1


def test_late_trades_do_not_excuse_a_different_loss() -> None:
    trades = day()
    late, lost = [trades[5]], trades[6]  # one trade late, another simply lost
    stream = candles([t for t in trades if t is not late[0] and t is not lost])
    result = reconcile(stream, candles(trades), late_for(late))
    assert not result.ok
    assert result.counts[MISMATCH] + result.counts[MISSING] > 0


def test_worst_first() -> None:
    trades = day()
    small = min(trades, key=lambda t: t.price_e8 * t.quantity_e8)
    big = max(trades, key=lambda t: t.price_e8 * t.quantity_e8)
    result = reconcile(candles([t for t in trades if t not in (small, big)]), candles(trades))
    gaps = [abs(d.quote_gap_e16) for d in result.differences]
    assert gaps == sorted(gaps, reverse=True)
    assert result.differences[0].quote_gap_e16 >= big.price_e8 * big.quantity_e8


def test_summary_is_json_friendly() -> None:
    import json

    trades = day(500)
    result = reconcile(candles(trades[1:]), candles(trades))
    text = json.dumps(result.summary())
    assert '"missing_in_stream"' in text and '"worst"' in text
    assert Candle  # the module's public types are importable
