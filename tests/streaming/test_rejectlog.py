"""The flows' rejection summaries: at most one line per interval, only when there is news."""

from __future__ import annotations

import threading

from streaming.metricsagg import closed_bars
from streaming.rejectlog import RejectionLog


def test_one_line_per_interval_with_the_counts_since_the_last() -> None:
    now = [0.0]
    lines: list[str] = []
    rl = RejectionLog("candles", clock=lambda: now[0], emit=lines.append)
    assert rl.observe(["bad_number:price"] * 90 + ["unsupported_event"] * 4, late=2) is None
    now[0] = 5.0
    assert rl.observe(["bad_number:price"]) is None  # within 10 s: quiet
    assert rl.tick() is None
    now[0] = 10.0
    line = rl.tick()  # the heartbeat's tick: due even with no new batch
    assert (
        line
        == lines[-1]
        == (
            "candles: rejected 95 in the last 10 s: bad_number:price 91, unsupported_event 4 "
            "(DLQ md:trades:dlq); late 2 (md:trades:late)"
        )
    )
    now[0] = 25.0
    assert rl.tick() is None and rl.observe([]) is None and len(lines) == 1  # nothing new
    rl.observe([], late=1)  # the first news after a quiet spell is said at once
    assert lines[-1] == "candles: late 1 in the last 15 s (md:trades:late)"
    now[0] = 26.0
    assert rl.observe(["unknown_symbol"]) is None  # 1 s after the last line: held
    assert rl.flush() == "candles: rejected 1 in the last 1 s: unknown_symbol 1 (DLQ md:trades:dlq)"
    assert rl.flush() is None and len(lines) == 3


def test_where_they_are_kept_is_the_flows() -> None:
    lines: list[str] = []
    rl = RejectionLog("archive", kept="lake /x/rejects", emit=lines.append)
    rl.observe(["malformed_json"] * 3)
    rl.flush()
    assert lines[-1].startswith("archive: rejected 3 in the last 1 s: malformed_json 3 (")
    assert lines[-1].endswith("(lake /x/rejects)")


def test_observed_from_many_threads_counted_once_each() -> None:
    now = [0.0]
    lines: list[str] = []
    rl = RejectionLog("candles", clock=lambda: now[0], emit=lines.append)

    def work() -> None:
        for _ in range(1000):
            rl.observe(["bad_number:price"], late=1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rl.flush()
    assert lines == [
        "candles: rejected 4,000 in the last 1 s: bad_number:price 4,000 (DLQ md:trades:dlq); "
        "late 4,000 (md:trades:late)"
    ]


def test_unreadable_closed_candle_events_are_counted_not_fatal() -> None:
    good = (
        b'{"exchange":"binance","symbol":"BTCUSDT","interval":"1m","open_time":1741910400000,'
        b'"open":"1","high":"1","low":"1","close":"1","volume":"1","quote_volume":"1",'
        b'"trade_count":1,"taker_buy_volume":"0","first_trade_id":1,"last_trade_id":1}'
    )
    events = [
        [b"interval", b"1m", b"candle", good],
        [b"interval", b"5m", b"candle", b"{}"],  # not for the metrics: not a rejection
        [b"interval", b"1m", b"candle", b"{not json"],
        [b"interval", b"1m", b"candle", b'{"exchange":"binance"}'],
        [b"interval", b"1m"],
        [b"candle", good],
    ]
    rejected: list[str] = []
    bars = closed_bars(events, rejected)
    assert [b.symbol for b in bars] == ["BTCUSDT"]
    assert rejected == [
        "malformed_candle",
        "malformed_candle",
        "missing_field:candle",
        "missing_field:interval",
    ]
