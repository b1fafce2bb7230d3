"""Prometheus ``/metrics`` of a running flow and a running feed (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from cryptopipe.localredis import free_port
from marketdata.hostile import hostile_messages
from marketdata.rawmessage import RawMessage
from marketdata.simulator import trade_payload
from marketdata.trade import Trade
from redisstore.keys import DLQ_STREAM, RAW_STREAM, counts_key
from streaming.rawlog import RawLogWriter
from tests.processes import ROOT

T0 = 1_741_910_400_000


def scrape(port: int) -> dict[str, list]:
    """Samples by name: [(labels, value)]."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def wait_for(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := pred():
                return value
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_flow_fed_hostile_lines_counts_its_rejections_as_the_dlq_holds_them(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    messages = [
        RawMessage(payload, "binance", T0 + i)
        for i, (_, payload, _) in enumerate(hostile_messages(3_000, seed=5))
    ]
    # and one valid trade of now: the venue's clock moves on, the windows before close
    now = int(time.time() * 1000)
    late_trade = Trade("binance", "BTCUSDT", 10**12, 100 * 10**8, 10**8, now, False)
    messages.append(RawMessage(trade_payload(late_trade), "binance", now))
    RawLogWriter(redis_client).write(messages)
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    port = free_port()
    flow = start(env, "stream", "run", "candles", "--metrics-port", str(port))
    try:
        key = counts_key("candles", RAW_STREAM)
        wait_for(
            lambda: int(redis_client.hget(key, "entries") or 0) == len(messages),
            120,
            "the flow to read every entry",
        )
        m = wait_for(
            lambda: (
                (got := scrape(port))
                and sum(v for _, v in got.get("cryptopipe_entries_read_total", [])) == len(messages)
                and got
            ),
            30,
            "/metrics to show every entry",
        )
        rejected = Counter()
        for labels, value in m["cryptopipe_trades_rejected_total"]:
            rejected[labels["reason"]] += int(value)
        dlq = Counter(f[b"reason"].decode() for _, f in redis_client.xrange(DLQ_STREAM))
        assert sum(rejected.values()) == redis_client.xlen(DLQ_STREAM) > 0
        assert rejected == dlq
        counts = {k.decode(): int(v) for k, v in redis_client.hgetall(key).items() if v.isdigit()}
        (accepted,) = [v for _, v in m["cryptopipe_trades_accepted_total"]]
        assert accepted == counts["trades"] > 0
        (closed,) = [v for _, v in m["cryptopipe_candles_closed_total"]]
        (delays,) = [v for _, v in m["cryptopipe_candle_close_delay_seconds_count"]]
        assert closed == counts["closed"] == delays > 0
        (read,) = [
            v for lb, v in m["cryptopipe_flow_entries_read_total"] if lb["flow"] == "candles"
        ]
        assert read == len(messages)
        assert [lb for lb, _ in m["cryptopipe_flow_lag_entries"]] == [{"flow": "candles"}]
        # Snapshots (every 5 s): how long the state took to serialise, and its size.
        snap = wait_for(
            lambda: (g := scrape(port)) and g.get("cryptopipe_snapshot_seconds_count") and g,
            30,
            "a snapshot",
        )
        assert [lb for lb, _ in snap["cryptopipe_snapshot_seconds_count"]] == [{"flow": "candles"}]
        assert snap["cryptopipe_snapshot_seconds_count"][0][1] >= 1
        (size,) = [v for lb, v in snap["cryptopipe_snapshot_bytes"] if lb["flow"] == "candles"]
        assert size > 1_000  # the aggregator: the windows of several symbols and venues
    finally:
        flow.terminate()
        assert flow.wait(30) == 0


def test_a_feed_counts_what_it_wrote(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path)}
    port = free_port()
    feed = start(
        env, "feed", "simulate", "--rate", "4", "--duration", "60", "--metrics-port", str(port)
    )

    def trades() -> int:
        return sum(1 for _, f in redis_client.xrange(RAW_STREAM) if b"mark" not in f)

    try:
        wait_for(lambda: redis_client.exists(RAW_STREAM) and trades() >= 5, 30, "trades")
        # A quiet moment (4 trades/s): the raw log holds the same before and after the
        # scrape, and the counter says exactly that many (it is raised just after each
        # write returns, so a scrape may fall in between: asked again then).
        for _ in range(50):
            before = trades()
            written = scrape(port)["cryptopipe_feed_messages_written_total"]
            if trades() == before and written and written[0][1] == before:
                break
            time.sleep(0.05)
        assert [lb for lb, _ in written] == [{"feed": "simulate"}]
        assert written[0][1] == before >= 5
    finally:
        feed.send_signal(signal.SIGTERM)
        feed.wait(30)
