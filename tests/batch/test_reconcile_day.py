"""``cryptopipe reconcile`` on real Redis, the real candles flow and a real lake.

The batch side is given here as the reference fold of the day's valid trades (the
Spark job has its own tests against the same reference); what is under test is the
reading of the stream's candles and late trades, the exact comparison, the report
and the serving switch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis

from batch.reconcile import stream_day_trimmed
from lake.candles import read_day_candles, write_day_candles
from marketdata.candle import fold_trades
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.parsing import parse_message
from marketdata.records import SOURCE_BATCH, SOURCE_STREAM
from marketdata.simulator import SimConfig, simulate
from marketdata.trade import Trade
from streaming.candlestore import CandleStore, CandleWrites
from streaming.spill import SideStreamSpiller

DAY = date(2025, 3, 14)
START = 1_741_993_200_000  # 2025-03-14T23:00:00Z
CFG = SimConfig(
    symbols=("BTCUSDT", "ETHUSDT"),
    rate=15,
    start_ms=START,
    duration_s=3000,
    seed=21,
    late=0.01,
    duplicates=0.02,
    malformed=0.01,
    out_of_order=0.03,
    first_trade_id=START * 10,
)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cryptopipe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}


def valid_trades() -> list[Trade]:
    return [t for m in simulate(CFG) if isinstance(t := parse_message(m.payload), Trade)]


def batch_candles(trades: list[Trade]) -> dict:
    out = {}
    for iv in ALL_INTERVALS:
        out.update(fold_trades(trades, iv))
    return out


def run_stream(env: dict[str, str], drop_every: int = 0, client: redis.Redis | None = None) -> None:
    args = [
        "feed",
        "simulate",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--rate",
        "15",
        "--start",
        str(START),
        "--duration",
        "3000",
        "--seed",
        "21",
        "--late",
        "0.01",
        "--duplicates",
        "0.02",
        "--malformed",
        "0.01",
        "--out-of-order",
        "0.03",
        "--speed",
        "max",
    ]
    assert cli(env, *args).returncode == 0
    if drop_every and client is not None:  # the stream "loses" raw entries
        ids = [i for i, _ in client.xrange("md:trades:raw")][::drop_every]
        client.xdel("md:trades:raw", *ids)
    out = cli(env, "stream", "run", "candles", "--exit-when-idle", "1.5")
    assert out.returncode == 0, out.stderr[-2000:]


def merged_sources(env: dict[str, str]) -> set[str]:
    """Where ``cryptopipe candles`` (merged) takes DAY's 1m BTCUSDT candles from."""
    day = ["--start", str(DAY), "--end", str(DAY + timedelta(days=1))]
    out = cli(env, "candles", "BTCUSDT", "-i", "1m", *day, "--format", "json")
    assert out.returncode == 0, out.stderr
    return {json.loads(line)["source"] for line in out.stdout.splitlines()}


def reconcile_json(env: dict[str, str]) -> dict:
    out = cli(env, "reconcile", "--date", str(DAY), "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_late_trades_are_all_explained(env: dict[str, str], redis_client: redis.Redis) -> None:
    out = cli(env, "reconcile", "--date", str(DAY))
    assert out.returncode == 2 and "batch run --date 2025-03-14" in out.stderr
    run_stream(env)
    lake = Path(env["CRYPTOPIPE_HOME"]) / "lake"
    expected = batch_candles(valid_trades())
    write_day_candles(lake, SOURCE_BATCH, DAY, expected.values())
    summary = reconcile_json(env)
    assert set(summary["counts"]) == {
        "match",
        "explained_by_late",
        "mismatch",
        "missing_in_stream",
        "extra_in_stream",
    }
    assert summary["unexplained"] == 0 and summary["ok"]
    assert summary["explained_by_late"] > 0 and summary["match"] > 0
    assert summary["match"] == summary["counts"]["match"]
    assert summary["match"] + summary["explained_by_late"] == len(expected)
    assert summary["late_trades"] == redis_client.xlen("md:trades:late") > 0
    # Passed: readers get the batch candles of the day from now on.
    assert summary["served_from"] == "batch" and merged_sources(env) == {"batch"}
    # The stream's candles are kept in the lake beside the batch's, as stored in Redis.
    stored = read_day_candles(lake, SOURCE_STREAM, DAY)
    assert stored is not None and len(stored) == summary["stream_candles"]
    report = json.loads((lake / "reconciliation" / f"date={DAY}" / "report.json").read_text())
    assert len(report["differences"]) == summary["explained_by_late"]
    status = cli(env, "status")
    assert f"reconciliation: {DAY}" in status.stdout and "explained_by_late=" in status.stdout

    # Bounded Redis: the late stream copied to the lake and trimmed to nothing, the
    # day's candles trimmed by the retention (a week later, every series moves on).
    # Reconciliation reads both from the lake and gives the same answer.
    SideStreamSpiller(redis_client, lake, maxlen=0).run()
    assert redis_client.xlen("md:trades:late") == 0
    later = START + 8 * 86_400_000
    week_on = [
        Trade(t.exchange, t.symbol, 10**15 + i, t.price_e8, t.quantity_e8, later, False)
        for i, t in enumerate({t.symbol: t for t in valid_trades()}.values())
    ]
    CandleStore(redis_client, trim_every_s=0).write(
        [CandleWrites("md:trades:raw", closed=list(batch_candles(week_on).values()))]
    )
    assert stream_day_trimmed(redis_client, DAY)
    again = reconcile_json(env)
    assert {k: again[k] for k in ("counts", "unexplained", "late_trades", "ok")} == {
        k: summary[k] for k in ("counts", "unexplained", "late_trades", "ok")
    }
    assert read_day_candles(lake, SOURCE_STREAM, DAY) == stored


def test_stream_that_lost_trades_is_unexplained(
    env: dict[str, str], redis_client: redis.Redis
) -> None:
    trades = valid_trades()
    run_stream(env, drop_every=997, client=redis_client)
    write_day_candles(
        Path(env["CRYPTOPIPE_HOME"]) / "lake", SOURCE_BATCH, DAY, batch_candles(trades).values()
    )
    summary = reconcile_json(env)
    assert summary["unexplained"] > 0 and not summary["ok"]
    assert summary["mismatch"] + summary["missing_in_stream"] > 0
    assert summary["extra_in_stream"] == 0
    worst = summary["worst"][0]
    assert worst["outcome"] in ("mismatch", "missing_in_stream")
    assert worst["interval"] == "1d"  # the biggest gap: every lost trade is in it
    # Readers keep the stream's candles of a day whose reconciliation failed...
    assert summary["served_from"] == "stream" and merged_sources(env) == {"stream"}
    out = cli(env, "reconcile", "--date", str(DAY), "--fail-on-unexplained")
    assert out.returncode == 1 and "UNEXPLAINED" in out.stdout
    assert "readers keep the stream's candles" in out.stdout and "--accept-batch" in out.stdout
    assert merged_sources(env) == {"stream"}
    # ...until someone who read the report accepts the batch.
    out = cli(env, "reconcile", "--date", str(DAY), "--accept-batch")
    assert out.returncode == 0 and "readers now get the batch candles" in out.stdout
    assert merged_sources(env) == {"batch"}
    mark = Path(env["CRYPTOPIPE_HOME"]) / "lake" / "serving" / "published" / f"date={DAY}.json"
    assert json.loads(mark.read_text())["accepted_unexplained"] == summary["unexplained"]


def test_archive_that_lost_a_window_is_extra_in_stream(env: dict[str, str]) -> None:
    trades = valid_trades()
    gone = Interval.M1.floor(START + 600_000)
    in_gone = lambda t: t.symbol == "ETHUSDT" and Interval.M1.floor(t.event_time) == gone  # noqa: E731
    archived = [t for t in trades if not in_gone(t)]
    run_stream(env)
    write_day_candles(
        Path(env["CRYPTOPIPE_HOME"]) / "lake", SOURCE_BATCH, DAY, batch_candles(archived).values()
    )
    summary = reconcile_json(env)
    extra = [d for d in summary["worst"] if d["outcome"] == "extra_in_stream"]
    assert summary["extra_in_stream"] == 1
    assert (extra[0]["symbol"], extra[0]["interval"], extra[0]["open_time"]) == (
        "ETHUSDT",
        "1m",
        gone,
    )
    assert summary["mismatch"] >= 5  # the coarser ETHUSDT windows holding it differ too
