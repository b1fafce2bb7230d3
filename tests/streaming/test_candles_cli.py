"""The candles flow through the command line, as real processes (slow).

``cryptopipe stream run candles`` with recovery, killed with SIGKILL during a
real-time replay; one worker, two workers and two processes over a sharded raw log;
``cryptopipe candles`` in every format; ``stream start/status/stop``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
from test_candles_data import T0, gen_day, ref_map

from marketdata.candle import fold_trades
from marketdata.hostile import GENERATORS
from marketdata.interval import Interval
from marketdata.rawmessage import RawMessage, shard_of
from marketdata.simulator import trade_payload
from marketdata.timeutil import format_ms
from marketdata.trade import Trade
from redisstore.keys import (
    CLOSED_EVENTS_STREAM,
    DLQ_STREAM,
    LATE_STREAM,
    counts_key,
    raw_stream_names,
)
from serving.stream import StreamCandleReader
from streaming.heartbeat import read_heartbeat
from streaming.rawlog import RawLogWriter
from tests.processes import ROOT, run_cryptopipe

pytestmark = pytest.mark.slow


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_cryptopipe(os.environ if env is None else env, *args, timeout=timeout)


def flow_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    return {**env, "REDIS_URL": url, "CRYPTOPIPE_HOME": str(home), **extra}


def stored(client: redis.Redis, symbols: set[str]) -> dict:
    reader = StreamCandleReader(client)
    return {
        rec.candle.key: rec.candle.fields()
        for sym in sorted(symbols)
        for iv in Interval
        for rec in reader.read(sym, iv)
    }


class RealTimeFeed(threading.Thread):
    """Trades stamped with the wall clock, a few out of order (inside the lateness),
    duplicated or malformed, written as a feed would (auto ids), for ``seconds``."""

    def __init__(self, client: redis.Redis, seconds: float, lateness_ms: int) -> None:
        super().__init__(daemon=True)
        self.writer = RawLogWriter(client)
        self.seconds = seconds
        self.lateness_ms = lateness_ms
        self.trades: list[Trade] = []
        self.duplicates = 0
        self.malformed = 0
        self.rng = random.Random(5)
        self.stop = threading.Event()  # a failing test stops it: nothing writes on

    def run(self) -> None:
        rng = self.rng
        syms = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
        next_id = dict.fromkeys(syms, 10_000)
        pending: list[tuple[float, int, RawMessage]] = []
        seq = 0
        end = time.time() + self.seconds
        while not self.stop.is_set() and (now := time.time()) < end:
            ms = int(now * 1000)
            for _ in range(rng.randrange(1, 8)):
                s = rng.choice(syms)
                t = Trade(
                    exchange="binance",
                    symbol=s,
                    trade_id=next_id[s],
                    price_e8=rng.randrange(10**9, 10**12),
                    quantity_e8=rng.randrange(1, 10**9),
                    event_time=ms,
                    is_buyer_maker=rng.random() < 0.5,
                )
                next_id[s] += 1
                self.trades.append(t)
                msg = RawMessage(trade_payload(t), "binance", ms, symbol=s)
                delay = 0.0
                if rng.random() < 0.05:  # out of order, well inside the lateness
                    delay = rng.uniform(0, 0.6 * self.lateness_ms / 1000)
                heapq.heappush(pending, (now + delay, seq, msg))
                seq += 1
                if rng.random() < 0.03:
                    heapq.heappush(pending, (now + delay + rng.uniform(0, 0.3), seq, msg))
                    seq += 1
                    self.duplicates += 1
                if rng.random() < 0.01:
                    base = orjson.loads(trade_payload(t))
                    kind = rng.choice([k for k in GENERATORS if k not in ("valid", "oversized")])
                    payload, _ = GENERATORS[kind](rng, base)
                    heapq.heappush(pending, (now, seq, msg._replace(payload=payload)))
                    seq += 1
                    self.malformed += 1
            due = []
            while pending and pending[0][0] <= now:
                due.append(heapq.heappop(pending)[2])
            self.writer.write(due)
            time.sleep(0.02)
        self.writer.write([m for _, _, m in sorted(pending)])


def test_sigkill_during_a_real_time_replay_loses_nothing_and_counts_nothing_twice(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Killed four times (once by SIGTERM), down 2.5 s each time (more than the 1 s
    allowed lateness).

    One kill lands just before a minute boundary: the backlog read after the restart
    then holds trades of a minute that ended more than the lateness ago in wall-clock
    time. A watermark that followed the wall clock across the downtime (bytewax's
    EventClock) would send them to the late stream; ours must fold them.
    """
    lateness = 1000
    home = tmp_path / "home"
    env = flow_env(redis_url, home, CRYPTOPIPE_LATENESS_MS=str(lateness))
    start = time.time()
    boundary = (int(start // 60) + 1) * 60
    if boundary - start < 16:
        boundary += 60
    feed = RealTimeFeed(redis_client, seconds=boundary + 8 - start, lateness_ms=lateness)
    args = [
        sys.executable,
        "-m",
        "cryptopipe",
        "stream",
        "run",
        "candles",
        "--exit-when-idle",
        "3",
        "--snapshot-interval",
        "1",
    ]
    feed.start()
    flow = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        terms = _kills_and_restarts(flow, args, env, redis_client, start, boundary)
        feed.join()
    finally:  # a failure leaves nothing writing into the session's Redis
        feed.stop.set()
        feed.join(10)
    symbols = {t.symbol for t in feed.trades}
    code, took, term_err = terms[0]
    assert code == 0 and took < 5.0, (code, took, term_err[-3000:])
    assert "SIGTERM received" in term_err
    before = [t for t in feed.trades if t.event_time < boundary * 1000]
    assert before and len(before) < len(feed.trades)
    expected = {}
    for iv in Interval:
        expected.update({k: c.fields() for k, c in fold_trades(feed.trades, iv).items()})
    # Nothing lost, nothing twice; the backlogs after downtime were not late.
    assert stored(redis_client, symbols) == expected
    assert redis_client.xlen(LATE_STREAM) == 0
    counts = redis_client.hgetall(counts_key("candles", "md:trades:raw"))
    assert int(counts[b"trades"]) == len(feed.trades)
    assert int(counts[b"duplicates"]) == feed.duplicates
    assert int(counts[b"rejected"]) == redis_client.xlen(DLQ_STREAM) == feed.malformed
    events = redis_client.xrange(CLOSED_EVENTS_STREAM)
    assert len(events) == len(expected)


def _kills_and_restarts(
    flow: subprocess.Popen[bytes],
    args: list[str],
    env: dict[str, str],
    redis_client: redis.Redis,
    start: float,
    boundary: int,
) -> list[tuple[int, float, str]]:
    """Check the heartbeat, then kill the flow four times and restart it; wait for the end.

    Whatever happens, no flow process is left running.
    """
    try:
        time.sleep(4)
        # The heartbeat: the flow's own pid, beating.
        hb1 = read_heartbeat(redis_client, "candles")
        time.sleep(2.2)
        hb2 = read_heartbeat(redis_client, "candles")
        assert hb1 is not None and hb2 is not None
        assert int(hb2["pid"]) == flow.pid
        # It beats (every second; how promptly on a loaded machine is the benchmarks' business).
        assert 0 < int(hb2["heartbeat_at"]) - int(hb1["heartbeat_at"]) <= 5000
        assert int(hb2["items_in"]) > 0 and hb2["last_source_id"]
        assert {"started_at", "items_out", "lag", "restarts"} <= set(hb2)
        kills = sorted(
            {
                start + 6.5,
                start + 6.5 + (boundary - 1 - start - 6.5) / 2,
                boundary - 1.0,
                boundary + 3.5,
            }
        )
        terms = []
        for i, when in enumerate(kills):
            time.sleep(max(0.0, when - time.time()))
            if i == 1:
                # SIGTERM (what the supervisor sends): a final snapshot, a prompt exit 0,
                # and open windows left to the snapshot, not written as closed.
                t0 = time.monotonic()
                flow.send_signal(signal.SIGTERM)
                _, err = flow.communicate(timeout=30)
                terms.append((flow.returncode, time.monotonic() - t0, err.decode()))
            else:
                flow.send_signal(signal.SIGKILL)
                flow.wait()
            time.sleep(2.5)  # down for longer than the allowed lateness
            flow = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE)
        _, err = flow.communicate(timeout=120)
        assert flow.returncode == 0, err.decode()[-3000:]
        return terms
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()


def counts(client: redis.Redis, shards: int = 2) -> list[dict]:
    """The candles flow's counters of each shard, but the watermark (a position, not a count)."""
    return [
        {k: v for k, v in client.hgetall(counts_key("candles", s)).items() if k != b"watermark"}
        for s in raw_stream_names(shards)
    ]


def _write_sharded(client: redis.Redis, entries: list, ids: list[bytes], shards: int) -> None:
    streams = raw_stream_names(shards)
    pipe = client.pipeline(transaction=False)
    for (_, msg), eid in zip(entries, ids, strict=True):
        pipe.xadd(streams[shard_of(msg.symbol, shards)], msg.to_fields(), id=eid)
    pipe.execute()


def test_two_workers_and_two_processes_give_the_candles_of_one(
    redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(
        31,
        n=20_000,
        symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"),
        exchanges=("binance", "okx"),
        duplicates=0.05,
        malformed=0.02,
        out_of_order=0.08,
    )
    ids = day.stream_ids()
    base = redis_url.rsplit("/", 1)[0]
    results = []
    for db, extra in ((1, []), (2, ["--workers", "2"]), (3, ["--processes", "2"])):
        url = f"{base}/{db}"
        client = redis.Redis.from_url(url)
        _write_sharded(client, day.entries, ids, 2)
        env = flow_env(url, tmp_path / f"home{db}", CRYPTOPIPE_RAW_SHARDS="2")
        out = cli("stream", "run", "candles", "--exit-when-idle", "2", *extra, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        symbols = {t.symbol for t in day.trades}
        results.append((stored(client, symbols), client.xlen(DLQ_STREAM), counts(client)))
    one, two_workers, two_processes = results
    assert one == two_workers == two_processes
    assert one[0] == ref_map(day)
    assert one[1] == day.rejected


def test_dagster_starts_the_candles_flow_at_its_configured_scale(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRYPTOPIPE_CANDLES_PROCESSES/_WORKERS reach the flow Dagster's start job runs; the
    two processes count what one counts; a SIGKILL of the flow's pid takes both."""

    from orchestration.resources import FlowSupervisorResource, PipelineResource
    from orchestration.speed_layer.jobs import start_flows
    from streaming import proctable

    day = gen_day(32, n=20_000, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"))
    ids = day.stream_ids()
    base = redis_url.rsplit("/", 1)[0]
    one_url, scaled_url = f"{base}/4", f"{base}/5"
    one, scaled = redis.Redis.from_url(one_url), redis.Redis.from_url(scaled_url)
    for client in (one, scaled):
        _write_sharded(client, day.entries, ids, 2)
    # The reference: one process, to the end of its input.
    env = flow_env(one_url, tmp_path / "one", CRYPTOPIPE_RAW_SHARDS="2")
    out = cli("stream", "run", "candles", "--exit-when-idle", "2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    for key in [k for k in os.environ if k.startswith("CRYPTOPIPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CRYPTOPIPE_RAW_SHARDS", "2")
    monkeypatch.setenv("CRYPTOPIPE_CANDLES_PROCESSES", "2")
    monkeypatch.setenv("CRYPTOPIPE_CANDLES_WORKERS", "2")
    resource = FlowSupervisorResource(
        pipeline=PipelineResource(redis_url=scaled_url, home=str(tmp_path / "scaled")),
        flows=["candles"],
    )
    sup = resource.supervisor()
    try:
        result = start_flows.execute_in_process(
            run_config={"ops": {"start_flow": {"config": {"flow": "candles"}}}},
            resources={"flow_supervisor": resource},
        )
        assert result.success
        pid = sup.pid("candles")
        assert pid is not None
        deadline = time.monotonic() + 90
        while counts(scaled) != counts(one):
            assert time.monotonic() < deadline, (counts(scaled), counts(one))
            time.sleep(0.5)
        beat = read_heartbeat(scaled, "candles")
        assert beat is not None
        assert (beat["processes"], beat["workers"]) == ("2", "2")
        members = proctable.group_members(pid)
        assert len(members) == 3, members  # the flow's pid and its two processes
        # Every candle the scaled flow closed is the reference's.
        ref = ref_map(day)
        got = stored(scaled, {t.symbol for t in day.trades})
        assert got and all(ref[k] == v for k, v in got.items())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while [m for m in members if proctable.state(m) not in (None, "Z")]:
            assert time.monotonic() < deadline, "a process of the flow outlived it"
            time.sleep(0.2)
    finally:
        sup.stop("candles", timeout=10)


def test_candles_command_reads_back_in_every_format(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    day = gen_day(
        41,
        n=4000,
        span_ms=3 * 3_600_000,
        exchanges=("binance", "okx"),
        symbols=("BTCUSDT",),
        malformed=0.01,
    )
    day.write(redis_client)
    env = flow_env(redis_url, tmp_path / "home")
    out = cli("stream", "run", "candles", "--exit-when-idle", "1.5", env=env)
    assert out.returncode == 0, out.stderr
    ref = {k: c for k, c in day.reference().items()}
    # Loud: the flow's log sums up what it rejected, by reason, and where it is kept.
    assert day.rejected > 0
    summary = [line for line in out.stderr.splitlines() if "rejected" in line]
    assert summary and "(DLQ md:trades:dlq)" in summary[-1], out.stderr
    logged = sum(
        int(n.replace(",", "")) for n in re.findall(r"rejected ([\d,]+) in the last", out.stderr)
    )
    assert logged == day.rejected
    # status: the totals by reason, and the late count, from the flow's counters.
    status = cli("status", "--format", "json", env=env)
    rejections = json.loads(status.stdout)["rejections"]
    assert rejections["by_reason"] == day.reasons and rejections["rejected"] == day.rejected
    assert rejections["late"] == len(day.late)
    assert "rejected (in md:trades:dlq)" in cli("status", env=env).stdout

    out = cli("candles", "BTCUSDT", "--interval", "15m", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    want = [
        ref[k].to_json_dict(closed=True, source="stream")
        for k in sorted(k for k in ref if k[2] == "15m")
    ]
    assert rows == want
    assert all(isinstance(r["open"], str) and isinstance(r["open_time"], int) for r in rows)

    # One exchange, a range: --start inclusive, --end exclusive (ISO or ms).
    start, end = T0 + 3_600_000, T0 + 2 * 3_600_000
    out = cli(
        "candles",
        "btcusdt",
        "-i",
        "1m",
        "--exchange",
        "okx",
        "--start",
        format_ms(start),
        "--end",
        str(end),
        "--format",
        "json",
        env=env,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(r["exchange"] == "okx" and start <= r["open_time"] < end for r in rows)
    assert len(rows) == sum(
        1 for k in ref if k[0] == "okx" and k[2] == "1m" and start <= k[3] < end
    )

    # Gap filling: every minute of the range, previous close at zero volume where empty.
    out = cli(
        "candles",
        "BTCUSDT",
        "-i",
        "1m",
        "--exchange",
        "okx",
        "--start",
        str(start),
        "--end",
        str(end),
        "--fill",
        "--format",
        "json",
        env=env,
    )
    filled = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["open_time"] for r in filled] == list(range(start, end, 60_000))
    real = {r["open_time"]: r for r in rows}
    for prev, r in itertools.pairwise(filled):
        if r["filled"]:
            assert r["open"] == r["close"] == prev["close"] and r["volume"] == "0.00000000"
        else:
            assert {k: v for k, v in r.items() if k != "filled"} == real[r["open_time"]]

    csv_out = cli("candles", "BTCUSDT", "-i", "1h", "--format", "csv", env=env).stdout.splitlines()
    assert csv_out[0].startswith("exchange,symbol,interval,open_time,open,high,low,close,volume")
    assert len(csv_out) == 1 + sum(1 for k in ref if k[2] == "1h")
    table = cli("candles", "BTCUSDT", "-i", "1h", env=env).stdout.splitlines()
    assert table[0].split()[:3] == ["open_time", "exchange", "open"]
    assert len(table) == 1 + sum(1 for k in ref if k[2] == "1h")
    merged = cli(
        "candles", "BTCUSDT", "-i", "1h", "--source", "merged", "--format", "json", env=env
    )
    stream = cli(
        "candles", "BTCUSDT", "-i", "1h", "--source", "stream", "--format", "json", env=env
    )
    assert merged.stdout == stream.stdout
    # The batch layer has computed nothing here: its view is empty, not an error.
    batch = cli("candles", "BTCUSDT", "-i", "1h", "--source", "batch", "--format", "json", env=env)
    assert batch.returncode == 0 and batch.stdout == "", batch.stderr

    # Times as ISO, or seconds, ms or µs since the epoch (a kline's open time in µs):
    # the same window from every form, from the stream and the merged view alike.
    t = T0 + 3_600_000
    want_rows = None
    for form in (format_ms(t), str(t // 1000), str(t), str(t * 1000)):
        for source in ("stream", "merged"):
            argv = ["candles", "BTCUSDT", "-i", "15m", "--start", form, "--end", str(t + 1_800_000)]
            out = cli(*argv, "--source", source, "--format", "json", env=env)
            assert out.returncode == 0, out.stderr
            got = [json.loads(line) for line in out.stdout.splitlines()]
            assert got and all(t <= r["open_time"] < t + 1_800_000 for r in got)
            want_rows = want_rows or got
            assert got == want_rows, (form, source)
    # Out of range, in any source: one line, no traceback.
    for bad in ("41029999999999999", "9999-01-01", "soon"):
        for source in ("stream", "merged", "batch"):
            out = cli("candles", "BTCUSDT", "-i", "1m", "--start", bad, "--source", source, env=env)
            assert out.returncode == 2 and "--start" in out.stderr, (bad, out.stderr)
            assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_stream_start_status_stop(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    env = flow_env(redis_url, tmp_path / "home")
    out = cli("stream", "start", "candles", env=env)
    assert out.returncode == 0, out.stderr
    try:
        deadline = time.monotonic() + 30
        state = None
        while time.monotonic() < deadline:
            res = cli("stream", "status", "candles", "--format", "json", env=env)
            state = json.loads(res.stdout)[0]
            if state["state"] == "running":
                break
            time.sleep(0.5)
        assert state is not None and state["state"] == "running", state
        assert (tmp_path / "home" / "run" / "candles.pid").exists()
        assert (tmp_path / "home" / "recovery" / "candles").stat().st_mode & 0o777 == 0o700
    finally:
        out = cli("stream", "stop", "candles", env=env)
    assert out.returncode == 0 and "stopped" in out.stdout
    res = cli("stream", "status", "candles", "--format", "json", env=env)
    assert json.loads(res.stdout)[0]["state"] == "stopped"


def test_a_second_venues_hour_replayed_after_the_first_is_on_time(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Time comes from the venues (docs/architecture.md section 4): the same 20
    minutes of market replayed as binance, then as kraken; kraken's trades are judged
    by kraken's clock, so nothing is late and both venues' candles are the reference."""
    rng = random.Random(31)
    trades: dict[str, list[Trade]] = {}
    for venue in ("binance", "kraken"):
        path = tmp_path / f"{venue}.jsonl"
        trades[venue] = []
        with path.open("wb") as f:
            for i in range(2400):
                t = Trade(
                    exchange=venue,
                    symbol=rng.choice(("BTCUSDT", "ETHUSDT")),
                    trade_id=10_000 + i,
                    price_e8=rng.randrange(10**9, 10**12),
                    quantity_e8=rng.randrange(1, 10**9),
                    event_time=T0 + i * 500,
                    is_buyer_maker=rng.random() < 0.5,
                )
                trades[venue].append(t)
                f.write(trade_payload(t) + b"\n")
    env = flow_env(redis_url, tmp_path / "home")
    for venue in ("binance", "kraken"):
        out = cli(
            "feed",
            "replay",
            str(tmp_path / f"{venue}.jsonl"),
            "--format",
            "binance-ws",
            "--exchange",
            venue,
            env=env,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    out = cli("stream", "run", "candles", "--exit-when-idle", "2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert redis_client.xlen(LATE_STREAM) == 0
    every = trades["binance"] + trades["kraken"]
    expected = {k: c.fields() for iv in Interval for k, c in fold_trades(every, iv).items()}
    got = stored(redis_client, {"BTCUSDT", "ETHUSDT"})
    assert {k[0] for k in got} == {"binance", "kraken"}
    assert got == expected
