"""Aggregate trades (Binance ``aggTrade``) through the speed layer's candles and archive."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_candles_data import T0, batches
from test_candles_flow import run_flow, stored

from lake.arrow import trades_from_table
from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.rawmessage import RawMessage
from marketdata.simulator import agg_trade_payload, trade_payload
from marketdata.trade import Trade, aggregate
from redisstore.streamids import join_id
from streaming.archive import ArchiveConfig, PartitionArchiver
from streaming.candleagg import ShardAggregator, WindowConfig
from streaming.flows.runtime import stop_heartbeats
from tests.batch.binance_files import spot_aggtrades, um_aggtrades
from tests.processes import run_cryptopipe


@pytest.fixture(autouse=True)
def _no_heartbeat_leftovers() -> Iterator[None]:
    """Flows run in this process (run_flow) leave heartbeat threads: stop them, so no
    later test sees a flow of this process beating in its Redis."""
    yield
    stop_heartbeats()


def _trades(seed: int, n: int = 3000) -> list[Trade]:
    """Trades in runs of one time, price and side, consecutive ids (so they aggregate)."""
    rng = random.Random(seed)
    out: list[Trade] = []
    tid, t = 1000, T0
    while len(out) < n:
        t += rng.choice([0, 3, 250, 1500])
        price = rng.randint(90_000, 90_100) * 10**8
        maker = rng.random() < 0.5
        for _ in range(rng.randint(1, 8)):
            qty = rng.randint(1, 10**8)
            for sym in ("BTCUSDT",):
                out.append(Trade("binance-um", sym, tid, price, qty, t, maker))
            tid += 1
    return out


def _entries(msgs: list[tuple[Trade, bytes]]) -> tuple[list[bytes], list[list[bytes]]]:
    ids, fields = [], []
    for k, (t, payload) in enumerate(msgs):
        msg = RawMessage(payload, t.exchange, t.event_time + 5, symbol=t.symbol)
        flat: list[bytes] = []
        for key, v in msg.to_fields().items():
            flat += [key, v]
        ids.append(join_id(t.event_time + 5, k))
        fields.append(flat)
    return ids, fields


@pytest.mark.parametrize("exact", [False, True])
def test_aggregate_trades_give_the_candles_of_their_trades(exact: bool) -> None:
    trades = _trades(1)
    aggs = aggregate(trades)
    assert len(aggs) < len(trades) // 2
    # Some plain trade messages among the aggregates (a feed may mix them per symbol).
    msgs = [
        (a, agg_trade_payload(a, k) if a.span > 1 or k % 3 else trade_payload(a))
        for k, a in enumerate(aggs)
    ]
    ids, fields = _entries(msgs)
    agg = ShardAggregator("s", WindowConfig(lateness_ms=5000))
    agg.exact = exact
    closed = []
    for chunk in batches(list(range(len(ids))), random.Random(2), high=400):
        closed += agg.process([ids[i] for i in chunk], [fields[i] for i in chunk]).closed
    closed += agg.flush_all()
    got = {c.key: c.fields() for c in closed}
    want = {k: c.fields() for i in Interval for k, c in fold_trades(trades, i).items()}
    assert got == want
    assert agg.counters["trades"] == len(aggs)  # raw-log entries taken, not exchange trades
    assert agg.counters.get("rejected", 0) == 0
    assert sum(c.trade_count for c in closed if c.interval is Interval.M1) == len(trades)


def test_a_late_aggregate_keeps_its_span() -> None:
    a = Trade("binance", "BTCUSDT", 10, 10**10, 10**8, T0 + 1000, False, span=4)
    later = Trade("binance", "BTCUSDT", 50, 10**10, 10**8, T0 + 200_000, False)
    ids, fields = _entries([(later, trade_payload(later)), (a, agg_trade_payload(a, 1))])
    agg = ShardAggregator("s", WindowConfig(lateness_ms=5000))
    out = agg.process(ids, fields)
    assert [lt.trade for lt in out.late] == [a]
    assert out.late[0].trade.span == 4


def test_the_archive_keeps_each_aggregates_span() -> None:
    trades = _trades(3, n=500)
    aggs = aggregate(trades)
    ids, fields = _entries([(a, agg_trade_payload(a, k)) for k, a in enumerate(aggs)])
    arch = PartitionArchiver("s", ArchiveConfig())
    works = arch.process(ids, fields) + arch.finish(write_open=True)
    stored = [t for w in works if w.source is not None for t in trades_from_table(w.trades)]
    assert sorted(stored) == sorted(aggs)
    assert sum(t.span for t in stored) == len(trades)


def test_a_replayed_capture_of_agg_trade_messages_gives_the_trades_candles(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    """A websocket capture of ``@aggTrade`` frames (combined-stream wrapper), replayed by
    the real command, then the real candles flow: the candles of the underlying trades."""
    trades = [t._replace(exchange="binance") for t in _trades(4, n=2000)]
    aggs = aggregate(trades)
    lines = [
        json.dumps({"stream": "btcusdt@aggTrade", "data": json.loads(agg_trade_payload(a, k))})
        for k, a in enumerate(aggs)
    ]
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(lines) + "\n")
    out = run_cryptopipe(
        os.environ,
        "feed",
        "replay",
        str(capture),
        "--format",
        "binance-ws",
        "--speed",
        "max",
        "--redis-url",
        redis_url,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    run_flow(redis_url)
    want = {k: c.fields() for i in Interval for k, c in fold_trades(trades, i).items()}
    assert stored(redis_client, ("BTCUSDT",)) == want
    assert redis_client.xlen("md:trades:dlq") == 0


@pytest.mark.parametrize("market", ["spot", "um"])
def test_a_replayed_aggtrades_dump_gives_the_trades_candles(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, market: str
) -> None:
    """``feed replay --format binance-aggtrades`` of a spot (8 columns, µs) or USD-M
    (header, 7 columns) dump, through the real command and the candles flow."""
    exchange = "binance" if market == "spot" else "binance-um"
    trades = [t._replace(exchange=exchange) for t in _trades(5, n=1500)]
    render = spot_aggtrades if market == "spot" else um_aggtrades
    dump = tmp_path / "BTCUSDT-aggTrades-2025-03-14.csv"
    dump.write_bytes(render(aggregate(trades)))
    out = run_cryptopipe(
        os.environ,
        *("feed", "replay", str(dump), "--format", "binance-aggtrades", "--exchange", exchange),
        *("--redis-url", redis_url),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    run_flow(redis_url)
    want = {k: c.fields() for i in Interval for k, c in fold_trades(trades, i).items()}
    assert stored(redis_client, ("BTCUSDT",)) == want
    assert redis_client.xlen("md:trades:dlq") == 0


def test_a_replay_of_what_carries_no_trades_is_refused_in_one_line(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    kline = {
        "e": "kline",
        "E": 1741910460000,
        "s": "BTCUSDT",
        "k": {"t": 1741910400000, "T": 1741910459999, "s": "BTCUSDT", "i": "1m", "o": "1"},
    }
    capture = tmp_path / "klines.jsonl"
    capture.write_text("\n".join(json.dumps(kline) for _ in range(30)) + "\n")
    aggs = tmp_path / "BTCUSDT-aggTrades-2025-03-14.csv"
    aggs.write_bytes(spot_aggtrades(aggregate(_trades(6, n=50))))
    cases = [
        (capture, "binance-ws", "none of its 30 messages is a trade (by event type: kline 30)"),
        (aggs, "binance-csv", "it looks like binance-aggtrades; pass --format binance-aggtrades"),
    ]
    for path, fmt, says in cases:
        out = run_cryptopipe(
            os.environ,
            *("feed", "replay", str(path), "--format", fmt, "--redis-url", redis_url),
            timeout=60,
        )
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    assert redis_client.xlen("md:trades:raw") == 0  # nothing written
