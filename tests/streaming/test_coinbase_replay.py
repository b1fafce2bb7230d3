"""Captured Coinbase Exchange frames replayed (``feed replay --format coinbase-ws``).

A capture as the websocket delivers it: the ``subscriptions`` reply, a ``last_match``
per product, ``match`` frames of two products, a ``heartbeat`` per product every
second, one ``error`` frame and one line that is not JSON. The trades' candles must
be the reference folded from the frames; the protocol frames are not written; what
carries no trade reaches the DLQ with its reason.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from test_candles_cli import cli, flow_env, stored

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.parsing import FORMAT_COINBASE_WS, parse_message
from marketdata.simulator import coinbase_match_payload
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, LATE_STREAM
from streaming.feeds.replay import check_replayable

T0 = 1_741_946_400_000  # 2025-03-14T10:00:00Z
PRODUCTS = ("BTC-USD", "ETH-USD")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def capture(path: Path, seconds: int, seed: int) -> list[Trade]:
    """``seconds`` of two products' frames at about 2 trades a second; the trades."""
    rng = random.Random(seed)
    last_id = {p: 1000 * (i + 1) for i, p in enumerate(PRODUCTS)}
    seq = 1
    trades: list[Trade] = []
    lines = [
        json.dumps(
            {
                "type": "subscriptions",
                "channels": [
                    {"name": "matches", "product_ids": list(PRODUCTS)},
                    {"name": "heartbeat", "product_ids": list(PRODUCTS)},
                ],
            }
        ).encode()
    ]

    def trade(product: str, at: int) -> Trade:
        last_id[product] += 1
        return Trade(
            exchange="coinbase",
            symbol=product,
            trade_id=last_id[product],
            price_e8=rng.randrange(10**9, 10**12),
            quantity_e8=rng.randrange(1, 10**9),
            event_time=at,
            is_buyer_maker=rng.random() < 0.5,
        )

    for p in PRODUCTS:  # the last trade before subscribing: a trade like any other
        t = trade(p, T0)
        trades.append(t)
        lines.append(coinbase_match_payload(t, seq, micros=rng.randrange(1000), kind="last_match"))
        seq += 1
    for s in range(seconds):
        at = T0 + s * 1000
        for _ in range(rng.randrange(0, 5)):
            t = trade(rng.choice(PRODUCTS), at + rng.randrange(1000))
            trades.append(t)
            lines.append(coinbase_match_payload(t, seq, micros=rng.randrange(1000)))
            seq += 1
        for p in PRODUCTS:
            hb = {
                "type": "heartbeat",
                "sequence": seq,
                "last_trade_id": last_id[p],
                "product_id": p,
                "time": iso(at + 999),
            }
            lines.append(json.dumps(hb).encode())
        if s == seconds // 2:
            lines.append(b'{"type":"error","message":"Failed to subscribe","reason":"x"}')
            lines.append(b"not json at all")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return trades


@pytest.mark.slow
def test_a_coinbase_capture_replays_to_the_reference_candles(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    trades = capture(tmp_path / "coinbase.jsonl", seconds=300, seed=5)
    env = flow_env(redis_url, tmp_path / "home")
    out = cli(
        "feed", "replay", str(tmp_path / "coinbase.jsonl"), "--format", "coinbase-ws", env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Written: every trade frame, the error and the bad line (the DLQ's); not the protocol.
    assert f"wrote {len(trades) + 2} messages" in out.stdout, out.stdout
    assert "not written: heartbeat 600, subscriptions 1" in out.stderr, out.stderr
    assert "error 1, not JSON 1" in out.stderr and "match and last_match" in out.stderr
    out = cli("stream", "run", "candles", "--exit-when-idle", "2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert redis_client.xlen(LATE_STREAM) == 0
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    got = stored(redis_client, set(PRODUCTS))
    assert {k[0] for k in got} == {"coinbase"}
    assert got == expected
    dlq = sorted(f[b"reason"].decode() for _, f in redis_client.xrange(DLQ_STREAM))
    assert dlq == ["malformed_json", "unsupported_event"]


def test_frames_parse_to_the_trades_they_were_made_from(tmp_path: Path) -> None:
    trades = capture(tmp_path / "c.jsonl", seconds=30, seed=7)
    parsed = []
    for line in (tmp_path / "c.jsonl").read_bytes().splitlines():
        got = parse_message(line, fmt=FORMAT_COINBASE_WS, exchange="coinbase")
        if isinstance(got, Trade):
            parsed.append(got)
    assert parsed == trades and any(t.is_buyer_maker for t in trades)
    assert not all(t.is_buyer_maker for t in trades)


def test_a_capture_without_trades_is_refused_saying_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "heartbeats.jsonl"
    hb = {"type": "heartbeat", "sequence": 1, "last_trade_id": 5, "product_id": "BTC-USD"}
    path.write_text("\n".join(json.dumps({**hb, "time": iso(T0 + i)}) for i in range(3)) + "\n")
    with pytest.raises(ValueError, match=r"heartbeat 3\); only match and last_match"):
        check_replayable(path, FORMAT_COINBASE_WS)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(coinbase_match_payload(capture_trade(), 1).replace(b'"sell"', b'"up"') + b"\n")
    with pytest.raises(ValueError, match="rejected: bad_bool:is_buyer_maker 1"):
        check_replayable(bad, FORMAT_COINBASE_WS)


def capture_trade() -> Trade:
    return Trade("coinbase", "BTC-USD", 1, 10**10, 10**8, T0, False)
