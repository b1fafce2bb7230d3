"""Time comes from the venues, through real processes (slow).

A replay paused while a second, live venue runs on: within the hold (the default
2 minutes) every trade of the paused venue is on time; past the hold its windows
close by the arrival clock, what it delivers afterwards is late, and reconciliation
against the batch layer explains every difference. Two live venues, one 30 s behind
the other: nothing late.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from test_candles_cli import flow_env, stored

from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.simulator import SimConfig, simulate, trade_payload
from marketdata.trade import Trade
from redisstore.keys import LATE_STREAM
from tests.processes import ROOT, cryptopipe_ok

pytestmark = pytest.mark.slow

T0 = 1_741_946_400_000  # 2025-03-14T10:00:00Z
DAY = "2025-03-14"
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def recording(path: Path, seconds: int, per_second: int, seed: int) -> list[Trade]:
    """A binance-ws recording: ``seconds`` of trades, in time order."""
    rng = random.Random(seed)
    trades = []
    n = seconds * per_second
    with path.open("wb") as f:
        for i in range(n):
            t = Trade(
                exchange="binance",
                symbol=rng.choice(SYMBOLS),
                trade_id=50_000 + i,
                price_e8=rng.randrange(10**9, 10**12),
                quantity_e8=rng.randrange(1, 10**9),
                event_time=T0 + i * 1000 // per_second,
                is_buyer_maker=rng.random() < 0.5,
            )
            trades.append(t)
            f.write(trade_payload(t) + b"\n")
    return trades


def start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", *args],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def paused_replay(
    tmp_path: Path, env: dict[str, str], *, pause_s: float, flows: tuple[str, ...]
) -> list[Trade]:
    """Replay 4 minutes of binance at 16x while kraken trades live; SIGSTOP the replay
    for ``pause_s`` after 5 s; the flows run throughout and end when all is idle."""
    trades = recording(tmp_path / "binance.jsonl", seconds=240, per_second=5, seed=41)
    live_s = 15 + pause_s + 10
    kraken = start(
        env,
        "feed",
        "simulate",
        "--exchanges",
        "kraken",
        "--symbols",
        "BTCUSDT",
        "--rate",
        "5",
        "--duration",
        str(live_s),
        log=tmp_path / "kraken.log",
    )
    running = [
        start(env, "stream", "run", name, "--exit-when-idle", "4", log=tmp_path / f"{name}.log")
        for name in flows
    ]
    replay = start(
        env,
        "feed",
        "replay",
        str(tmp_path / "binance.jsonl"),
        "--format",
        "binance-ws",
        "--speed",
        "16",
        log=tmp_path / "replay.log",
    )
    try:
        time.sleep(5)
        replay.send_signal(signal.SIGSTOP)  # the feed is silent: no trades, no marks
        time.sleep(pause_s)
        replay.send_signal(signal.SIGCONT)
        assert replay.wait(timeout=120) == 0, (tmp_path / "replay.log").read_text()[-2000:]
        assert kraken.wait(timeout=live_s + 60) == 0, (tmp_path / "kraken.log").read_text()[-2000:]
        for name, proc in zip(flows, running, strict=True):
            assert proc.wait(timeout=180) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in (replay, kraken, *running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    return trades


def test_a_replay_paused_within_the_hold_delivers_everything_on_time(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Silent for 60 s (half the default hold) while kraken's trades move the arrival
    clock on: binance's windows stay open, so nothing is late and binance's stream
    candles are those of every recorded trade."""
    env = flow_env(redis_url, tmp_path / "home")
    trades = paused_replay(tmp_path, env, pause_s=60, flows=("candles",))
    assert redis_client.xlen(LATE_STREAM) == 0
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    got = {k: v for k, v in stored(redis_client, set(SYMBOLS)).items() if k[0] == "binance"}
    assert got == expected


def test_a_feed_silent_past_the_hold_is_late_and_reconciliation_explains_it(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A hold of 5 s and a pause of 75 s: the arrival clock moves binance's clock more
    than a minute past its last trade (75 - 5 - the lateness of 5), so at least the
    rest of that minute's trades arrive late; the batch layer (which has every trade)
    differs from the stream only where late trades explain it."""
    env = flow_env(redis_url, tmp_path / "home", CRYPTOPIPE_HOLD_MS="5000")
    trades = paused_replay(tmp_path, env, pause_s=75, flows=("candles", "archive"))
    late = redis_client.xlen(LATE_STREAM)
    assert 0 < late < len(trades)
    cryptopipe_ok(env, "batch", "run", "--date", DAY, "--force", timeout=600)
    report = json.loads(
        cryptopipe_ok(env, "reconcile", "--date", DAY, "--format", "json", timeout=600)
    )
    counts = report["counts"]
    assert counts.get("explained_by_late", 0) > 0, report
    for outcome in ("mismatch", "missing_in_stream", "extra_in_stream"):
        assert counts.get(outcome, 0) == 0, report
    # the batch layer has every recorded trade
    batch = json.loads(
        "["
        + ",".join(
            cryptopipe_ok(
                env,
                "candles",
                "BTCUSDT",
                "--interval",
                "1d",
                "--source",
                "batch",
                "--exchange",
                "binance",
                "--format",
                "json",
            ).splitlines()
        )
        + "]"
    )
    ref = fold_trades([t for t in trades if t.symbol == "BTCUSDT"], Interval.D1)
    assert [b["trade_count"] for b in batch] == [c.trade_count for c in ref.values()]


def test_two_live_venues_one_lagging_30s_behind_the_other_lose_nothing(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """binance live and kraken live but 30 s behind (six times the allowed lateness),
    both simulators with their progress marks, the candles flow running alongside:
    nothing is late and both venues' candles are those of their trades."""
    env = flow_env(redis_url, tmp_path / "home")
    now = int(time.time() * 1000)
    feeds = []
    configs = []
    for venue, start_ms, seed in (("binance", now, 1), ("kraken", now - 30_000, 2)):
        configs.append(
            SimConfig(
                symbols=SYMBOLS,
                exchanges=(venue,),
                rate=20,
                start_ms=start_ms,
                duration_s=40,
                seed=seed,
                first_trade_id=start_ms * 10,
            )
        )
        args = ["--symbols", ",".join(SYMBOLS), "--rate", "20", "--duration", "40"]
        feeds.append(
            start(
                env,
                "feed",
                "simulate",
                "--exchanges",
                venue,
                "--start",
                str(start_ms),
                "--seed",
                str(seed),
                *args,
                log=tmp_path / f"{venue}.log",
            )
        )
    flow = start(env, "stream", "run", "candles", "--exit-when-idle", "4", log=tmp_path / "c.log")
    try:
        for venue, proc in zip(("binance", "kraken"), feeds, strict=True):
            assert proc.wait(timeout=120) == 0, (tmp_path / f"{venue}.log").read_text()[-2000:]
        assert flow.wait(timeout=120) == 0, (tmp_path / "c.log").read_text()[-3000:]
    finally:
        for proc in (*feeds, flow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert redis_client.xlen(LATE_STREAM) == 0
    trades = [m.trade for cfg in configs for m in simulate(cfg) if m.trade is not None]
    assert {t.exchange for t in trades} == {"binance", "kraken"} and len(trades) > 1000
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(trades, iv).items()}
    assert stored(redis_client, set(SYMBOLS)) == expected
