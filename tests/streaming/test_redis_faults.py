"""Feeds across a Redis restart: they wait with backoff and lose nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cryptopipe.localredis import LocalRedis, free_port
from marketdata.rawmessage import F_MARK
from marketdata.simulator import SimConfig, simulate
from redisstore.retry import Backoff, OutageLog, call_with_retry

T0 = 1_741_910_400_000


@pytest.mark.slow
def test_simulated_feed_survives_a_redis_restart(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis", free_port()).start()
    args = [
        "--start",
        "2025-03-14T00:00:00Z",
        "--duration",
        "10",
        "--rate",
        "100",
        "--speed",
        "1",
        "--seed",
        "3",
    ]
    feed = subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", "feed", "simulate", "--redis-url", server.url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 20
        while client.xlen("md:trades:raw") < 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(2.0)  # the feed keeps producing meanwhile
        server.start()
        _, err = feed.communicate(timeout=60)
    finally:
        if feed.poll() is None:
            feed.kill()
        server.stop()
    assert feed.returncode == 0, err
    assert "Redis unavailable" in err and "Redis is back" in err
    server.start()
    try:
        entries = redis.Redis.from_url(server.url).xrange("md:trades:raw")
        stored = [f[b"payload"] for _, f in entries if F_MARK not in f]  # marks aside
    finally:
        server.stop()
    cfg = SimConfig(rate=100, duration_s=10, seed=3, start_ms=T0, first_trade_id=T0 * 10)
    expected = [m.payload for m in simulate(cfg)]
    # At-least-once: every message is there, in order; a retried batch may repeat some.
    assert set(stored) == set(expected)
    assert len(expected) <= len(stored) < len(expected) + 2_000
    deduped = list(dict.fromkeys(stored))
    assert deduped == list(dict.fromkeys(expected))


def test_call_with_retry_backs_off_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise redis.ConnectionError("down")
        return "ok"

    b = Backoff(base_s=0.1, cap_s=0.3)
    assert call_with_retry(flaky, what="t", backoff=b, sleep=sleeps.append) == "ok"
    assert len(sleeps) == 3 and all(0 <= s <= 0.3 for s in sleeps)
    with pytest.raises(InterruptedError):
        call_with_retry(lambda: flaky_forever(), what="t", should_stop=lambda: True)


def flaky_forever() -> None:
    raise redis.ConnectionError("down")


def test_non_transient_errors_are_raised() -> None:
    def bad() -> None:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        call_with_retry(bad, what="t")


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = OutageLog("md:trades:raw")
    with caplog.at_level(logging.INFO, logger="redisstore.retry"):
        outage.ok()  # nothing to say
        for _ in range(3):
            outage.failed(redis.ConnectionError("down"))
        outage.ok()
        outage.ok()
    assert [r.getMessage() for r in caplog.records] == [
        "md:trades:raw: Redis unavailable (down); retrying",
        "md:trades:raw: Redis is back",
    ]
