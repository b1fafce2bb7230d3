"""A Redis restart while every flow runs (slow).

The simulated feed and the three flows (candles, metrics, archive) run as real
processes against a real ``redis-server`` with AOF ``everysec``; in the middle of the
run the server goes away for a few seconds and comes back:

* stopped cleanly (SIGTERM: Redis writes its AOF and exits): the flows stay up, each
  logs the outage once and the recovery once, and the candles equal the candles of
  the simulated trades exactly;
* killed (SIGKILL: the last second of writes may be lost): the flows stay up and carry
  on; what Redis lost is bounded by about a second of the feed, and after the batch
  job, reconciliation flags every window whose streamed candle differs from the batch
  one, and only windows next to the crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest
import redis

from cryptopipe.localredis import LocalRedis, free_port
from lake.candles import read_day_candles
from marketdata.candle import fold_trades
from marketdata.interval import ALL_INTERVALS, Interval
from marketdata.parsing import parse_message
from marketdata.rawmessage import F_RECV
from marketdata.records import SOURCE_BATCH
from marketdata.simulator import SimConfig, simulate
from marketdata.trade import Trade
from redisstore.keys import metrics_key
from serving.stream import StreamCandleReader
from tests.processes import run_cryptopipe

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DAY = date(2025, 3, 14)
START = 1_741_953_600_000  # 2025-03-14T12:00:00Z
SYMBOLS = ("BTCUSDT", "ETHUSDT")
RATE = 20  # trades/s of market time
SPEED = 60  # a minute of market a second: a 1m window closes every second of the run
DURATION = 24 * SPEED  # seconds of simulated market: 24 s of run
FLOWS = ("candles", "metrics", "archive")


def sim_config() -> SimConfig:
    return SimConfig(
        symbols=SYMBOLS,
        rate=RATE,
        start_ms=START,
        duration_s=DURATION,
        seed=9,
        duplicates=0.01,
        malformed=0.01,
        out_of_order=0.02,
        first_trade_id=START * 10,
    )


def valid_trades() -> list[Trade]:
    trades = {}
    for m in simulate(sim_config()):
        t = parse_message(m.payload)
        if isinstance(t, Trade):
            trades[t.key] = t
    return list(trades.values())


def candles_of(trades: list[Trade]) -> dict:
    out = {}
    for iv in ALL_INTERVALS:
        out.update({k: c.fields() for k, c in fold_trades(trades, iv).items()})
    return out


def stored(client: redis.Redis) -> dict:
    reader = StreamCandleReader(client)
    return {
        rec.candle.key: rec.candle.fields()
        for sym in SYMBOLS
        for iv in Interval
        for rec in reader.read(sym, iv)
    }


class AofSizes(threading.Thread):
    """Samples the size of the server's AOF (the file being appended) every 20 ms.

    A SIGKILL of ``redis-server`` loses nothing: what it wrote is in the kernel's
    page cache. What ``appendfsync everysec`` gives up is the last second when the
    machine itself fails. :meth:`lose_since` recreates that after the kill, cutting
    the file back to its size a moment earlier (Redis loads a truncated AOF:
    ``aof-load-truncated yes``, its default).
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__(daemon=True)
        manifest = (data_dir / "appendonlydir" / "appendonly.aof.manifest").read_text()
        incr = [ln.split()[1] for ln in manifest.splitlines() if ln.endswith("type i")]
        self.path = data_dir / "appendonlydir" / incr[-1]
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), self.path.stat().st_size))
            time.sleep(0.02)

    def lose_since(self, when: float) -> int:
        """Cut the file to its size at ``when`` (monotonic); bytes cut."""
        size = max(sz for t, sz in self.samples if t <= when)
        cut = self.path.stat().st_size - size
        os.truncate(self.path, size)
        return cut


def caught_up(client: redis.Redis, flow: str, stream: str, tip: bytes | None = None) -> bool:
    """Whether ``flow``'s heartbeat says it has read ``stream`` up to ``tip`` (its end)."""
    tip = tip or client.xinfo_stream(stream)["last-generated-id"]
    raw = client.hget(f"md:flow:{flow}:heartbeat", "streams")
    streams = json.loads(raw) if raw else {}
    return streams.get(stream, {}).get("last_id") == tip.decode()


def run_with_outage(tmp_path: Path, kill: bool) -> tuple[LocalRedis, dict[str, str], dict]:
    """Feed + flows, with the server stopped (or killed) for 3 s in the middle.

    Returns the server (started again, for the caller to read and stop), the
    environment, and per flow its exit code and stderr.
    """
    server = LocalRedis(tmp_path / "redis", free_port()).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env |= {"REDIS_URL": server.url, "CRYPTOPIPE_HOME": str(tmp_path / "home")}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in FLOWS:
            with (logs / f"{name}.log").open("wb") as out:
                procs[name] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cryptopipe",
                        "stream",
                        "run",
                        name,
                        "--snapshot-interval",
                        "1",
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=out,
                )
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while not all(client.exists(f"md:flow:{n}:heartbeat") for n in FLOWS):
            assert time.monotonic() < deadline, "the flows did not start"
            time.sleep(0.2)
        with (logs / "feed.log").open("wb") as out:
            procs["feed"] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cryptopipe",
                    "feed",
                    "simulate",
                    "--symbols",
                    ",".join(SYMBOLS),
                    "--rate",
                    str(RATE),
                    "--start",
                    str(START),
                    "--duration",
                    str(DURATION),
                    "--seed",
                    "9",
                    "--duplicates",
                    "0.01",
                    "--malformed",
                    "0.01",
                    "--out-of-order",
                    "0.02",
                    "--speed",
                    str(SPEED),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        sizes = AofSizes(server.data_dir)
        if kill:
            sizes.start()
        time.sleep(9.0)
        before = client.xinfo_stream("md:trades:raw")["entries-added"]
        assert before > 500
        # Market time at the crash: the arrival time of the last entry written.
        crash_ms = int(client.xrevrange("md:trades:raw", count=1)[0][1][F_RECV])
        if kill:
            # The feed is held while Redis is away and a second after it is back, so
            # that the flows read the shortened streams before anything new lands in
            # them (a feed that writes first hides the loss from the flows' check;
            # reconciliation finds it either way).
            procs["feed"].send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            # The flows read everything first (a loaded machine may lag them), so
            # that what the crash takes is something they had read.
            raw_tip = client.xinfo_stream("md:trades:raw")["last-generated-id"]
            deadline = time.monotonic() + 30
            while not (
                caught_up(client, "candles", "md:trades:raw", raw_tip)
                and caught_up(client, "archive", "md:trades:raw", raw_tip)
                and caught_up(client, "metrics", "md:candles:closed")
            ):
                assert time.monotonic() < deadline, "the flows did not catch up in 30 s"
                time.sleep(0.1)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            server.proc = None
            sizes.stop.set()
            sizes.join()
            # everysec loses up to about a second (up to two when a fsync is slow):
            # here the last 1.5 s of the feed's writes, and all after.
            assert sizes.lose_since(stopped_at - 1.5) > 0
        else:
            server.stop()
        client.close()
        time.sleep(3.0)  # longer than the 1 s heartbeat and the source's retry interval
        for name in FLOWS:
            assert procs[name].poll() is None, f"{name} died while Redis was away"
        server.start()
        if kill:
            time.sleep(1.5)
            procs["feed"].send_signal(signal.SIGCONT)
        assert procs["feed"].wait(timeout=60) == 0, (logs / "feed.log").read_text()[-2000:]
        time.sleep(3.0)  # the flows catch up
        out = {}
        for name in FLOWS:
            p = procs[name]
            assert p.poll() is None, f"{name} died after Redis came back"
            p.send_signal(signal.SIGTERM)
            code = p.wait(timeout=30)
            out[name] = {"code": code, "log": (logs / f"{name}.log").read_text()}
        # What was still open is written out by an idle-exit run (as a replay would).
        for name in FLOWS:
            done = run_cryptopipe(env, "stream", "run", name, "--exit-when-idle", "2")
            assert done.returncode == 0, done.stderr[-2000:]
        out["crash_ms"] = crash_ms
        return server, env, out
    except BaseException:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        server.stop()
        raise


def check_outage_logged(flows: dict) -> None:
    for name, r in flows.items():
        assert r["code"] == 0, (name, r["log"][-3000:])
        log = r["log"]
        assert "Traceback" not in log, (name, log[-3000:])
        # Noticed and reported once per component, not once per attempt.
        down = [ln for ln in log.splitlines() if "Redis unavailable" in ln]
        assert 1 <= len(down) <= 6, (name, down)
        assert "Redis is back" in log, (name, log[-3000:])


def test_flows_carry_on_across_a_clean_redis_restart(tmp_path: Path) -> None:
    server, _, flows = run_with_outage(tmp_path, kill=False)
    flows.pop("crash_ms")
    try:
        client = redis.Redis.from_url(server.url)
        check_outage_logged(flows)
        expected = candles_of(valid_trades())
        assert stored(client) == expected
        for name in FLOWS:
            assert int(client.hget(f"md:flow:{name}:heartbeat", "lost_entries") or 0) == 0
        # The metrics flow resumed after the outage and read every closed 1m candle.
        last = max(k[3] for k in expected if k[1] == "BTCUSDT" and k[2] == "1m")
        assert client.hget(metrics_key("binance", "BTCUSDT"), "open_time") == str(last).encode()
    finally:
        server.stop()


def test_a_redis_crash_loses_a_bounded_second_and_reconciliation_flags_it(
    tmp_path: Path,
) -> None:
    server, env, flows = run_with_outage(tmp_path, kill=True)
    try:
        client = redis.Redis.from_url(server.url)
        crash_ms = flows.pop("crash_ms")
        check_outage_logged(flows)
        # The flows had read entries Redis then lost: each sees its stream end before
        # its position and says so (once); none takes it for a re-created stream.
        for name in FLOWS:
            assert "DATA LOSS IN REDIS" in flows[name]["log"], (name, flows[name]["log"][-1500:])
        assert all(r["log"].count("DATA LOSS IN REDIS") <= 1 for r in flows.values())
        assert not any("created again" in r["log"] for r in flows.values())
        trades = valid_trades()
        # The loss is bounded: what reached the lake (the batch's input) lacks at most
        # about a second and a half of the feed's trades.
        # --force: the market is part of the day, so nothing seals it (the venue's
        # clock stops with its last trade; the flows stop before its hold passes).
        batch = run_cryptopipe(env, "batch", "run", "--date", str(DAY), "--force", timeout=600)
        assert batch.returncode == 0, batch.stderr[-3000:]
        rec = run_cryptopipe(env, "reconcile", "--date", str(DAY), "--format", "json", timeout=600)
        assert rec.returncode == 0, rec.stderr[-3000:]
        lake = Path(env["CRYPTOPIPE_HOME"]) / "lake"
        report = json.loads((lake / "reconciliation" / f"date={DAY}" / "report.json").read_text())
        day_candles = read_day_candles(lake, SOURCE_BATCH, DAY)
        assert day_candles
        batch_candles = {k: c.fields() for k, c in day_candles.items()}
        in_batch = {k for k in batch_candles if k[2] == "1m"}
        expected_1m = {k for k in candles_of(trades) if k[2] == "1m"}
        lost_trades = len(trades) - sum(int(batch_candles[k]["trade_count"]) for k in in_batch)
        assert 0 <= lost_trades <= 1.5 * RATE * SPEED * 1.5, lost_trades
        assert in_batch <= expected_1m
        # Every window where the streamed candle is not the batch one is flagged.
        streamed = stored(client)
        differing = {
            k
            for k in streamed.keys() | batch_candles.keys()
            if streamed.get(k) != batch_candles.get(k)
        }
        flagged = {
            (d["exchange"], d["symbol"], d["interval"], d["open_time"])
            for d in report["differences"]
        }
        assert differing, "the lost second held a closed candle: some window must differ"
        assert flagged == differing
        assert json.loads(rec.stdout)["unexplained"] == len(differing)
        # And only windows next to the crash: the 1.5 s lost are 90 s of market time.
        for k in differing:
            if k[2] == "1m":
                assert crash_ms - 180_000 <= k[3] <= crash_ms + 60_000, (k, crash_ms)
    finally:
        server.stop()
