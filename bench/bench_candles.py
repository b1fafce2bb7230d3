"""Benchmark of the candles flow. Not a test: run it by hand.

    .venv/bin/python bench/bench_candles.py                 # both parts, ~6 minutes
    .venv/bin/python bench/bench_candles.py --skip-latency  # throughput and scale-out

1. Throughput: the same trades (default 500,000: 10 symbols, ~100 trades/s of
   market time, so ~83 minutes of candles) through
   * ours, end to end: the raw log in Redis (binance-ws messages as the feeds write
     them) -> the production candles flow (``streaming.flows.candles``, with a
     recovery directory and 5 s snapshots) -> candles of every interval, late
     trades, DLQ, live candles and counters in Redis;
   * the seed's candle flow (seeds/bytewax-application-guide.ko.md section 2.1), a
     faithful copy in memory: JSON in from a TestingSource in batches of 1,000 (the
     Kafka source's default), float prices, EventClock + TumblingWindower(1m) +
     fold_window folding item by item, the same formatting, into a sink that keeps
     nothing (no I/O).
   Each runs in its own process, alternately, ``--rounds`` times; the table shows
   the best round of each and the ratio. Times exclude interpreter start-up and
   building the input; ours also excludes the idle second that ends its input.
2. Scale-out: the same trades in a raw log of ``--shards`` shards (default 4), read by
   ``cryptopipe stream run candles`` with 1 and with 2 processes (bytewax ``-i/-a``,
   as the supervisor runs it with ``CRYPTOPIPE_CANDLES_PROCESSES=2``; workers per
   process as few as spread the shards evenly over the two), each whole
   command minus the same command's start-up on an empty raw log; candles checked
   against the reference after every run.
3. Latency at a steady rate (default 5,000 trades/s over 50 symbols, 250 s): the
   flow runs as ``cryptopipe stream run candles``; a writer appends trades stamped
   with the wall clock, and, as the feeds do, progress marks of its venues every
   ``MARK_EVERY_S``. Besides the busy venue (binance) a quiet one (kraken: 5 symbols,
   a trade every ~20 s each) whose windows only its marks can close. For every
   closed candle, the delay from its window's end plus the allowed lateness to the
   moment it was readable in Redis (the id of its closed-candle event, written in
   the same pipeline as the candle), per venue (targets: p99 under 50 ms busy, under
   1 s quiet); CPU share and peak memory of the flow process.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redisstore.keys import (  # noqa: E402  (after the path: run as a script)
    CANDLES_PATTERN,
    CLOSED_EVENTS_STREAM,
    DLQ_STREAM,
    LATE_STREAM,
    RAW_STREAM,
    flow_pattern,
    written_key,
)
from redisstore.streamids import id_ms  # noqa: E402

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
IDLE_S = 0.25


# ---- data ---------------------------------------------------------------------------


def make_trades(n: int, symbols: int, rate: float, seed: int = 1) -> list[tuple]:
    """``n`` trades as (symbol, trade_id, price_e8, qty_e8, event_time, maker)."""
    rng = random.Random(seed)
    syms = [f"S{i:02d}USDT" for i in range(symbols)]
    price = {s: rng.randrange(10**9, 10**13) for s in syms}
    next_id = dict.fromkeys(syms, 1_000_000)
    t = float(T0)
    out = []
    for _ in range(n):
        t += rng.expovariate(rate / 1000.0)
        s = syms[rng.randrange(symbols)]
        price[s] = max(10**6, price[s] + rng.randrange(-(10**6), 10**6 + 1))
        out.append((s, next_id[s], price[s], rng.randrange(1, 10**9), int(t), rng.random() < 0.5))
        next_id[s] += 1
    return out


# ---- children -----------------------------------------------------------------------


def _usage() -> tuple[float, int]:
    """CPU seconds so far and peak resident memory (KiB) of this process.

    VmHWM, not ru_maxrss: the latter carries over the parent's peak across fork+exec.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF)
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ru.ru_utime + ru.ru_stime, hwm


def child_seed(trades_file: str) -> dict:
    """The seed's flow, section 2.1, in memory (Kafka replaced by memory, nothing else)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from marketdata.decimals import format_e8

    trades = pickle.loads(Path(trades_file).read_bytes())
    msgs = [
        json.dumps(
            {
                "symbol": s,
                "price": format_e8(p),
                "quantity": format_e8(q),
                "timestamp": datetime.fromtimestamp(t / 1000, tz=UTC).isoformat(),
                "trade_id": tid,
            }
        )
        for s, tid, p, q, t, _ in trades
    ]
    out: list[int] = [0]

    class _Null(StatelessSinkPartition):
        def write_batch(self, items: list) -> None:
            out[0] += len(items)

    class NullSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Null:
            return _Null()

    def parse_trade(kafka_msg: str) -> dict | None:
        try:
            data = json.loads(kafka_msg)
            required_fields = ["symbol", "price", "quantity", "timestamp"]
            if not all(f in data for f in required_fields):
                return None
            return {
                "symbol": data["symbol"],
                "price": float(data["price"]),
                "quantity": float(data["quantity"]),
                "timestamp": datetime.fromisoformat(data["timestamp"]),
                "trade_id": data.get("trade_id"),
            }
        except (json.JSONDecodeError, ValueError, KeyError):
            return None

    def create_empty_candle() -> dict:
        return {
            "open": None,
            "high": float("-inf"),
            "low": float("inf"),
            "close": None,
            "volume": 0.0,
            "trade_count": 0,
        }

    def update_candle(candle: dict, trade: dict) -> dict:
        price = trade["price"]
        quantity = trade["quantity"]
        if candle["open"] is None:
            candle["open"] = price
        candle["high"] = max(candle["high"], price)
        candle["low"] = min(candle["low"], price)
        candle["close"] = price
        candle["volume"] += quantity
        candle["trade_count"] += 1
        return candle

    def merge_candles(a: dict, b: dict) -> dict:
        return {
            "open": a["open"],
            "high": max(a["high"], b["high"]),
            "low": min(a["low"], b["low"]),
            "close": b["close"],
            "volume": a["volume"] + b["volume"],
            "trade_count": a["trade_count"] + b["trade_count"],
        }

    def format_candle(item: tuple) -> dict:
        key, (window_id, candle) = item
        return {
            "symbol": key,
            "interval": "1m",
            "window_id": window_id,
            "open": candle["open"],
            "high": candle["high"],
            "low": candle["low"],
            "close": candle["close"],
            "volume": candle["volume"],
            "trade_count": candle["trade_count"],
            "timestamp": datetime.now(UTC).isoformat(),
        }

    def format_late(item: tuple) -> dict:
        key, (window_id, trade) = item
        return {
            "type": "late_trade",
            "symbol": key,
            "window_id": window_id,
            "trade": trade,
            "detected_at": datetime.now(UTC).isoformat(),
        }

    flow = Dataflow("candle_generator")
    raw_trades = op.input("kafka_source", flow, TestingSource(msgs, batch_size=1000))
    valid_trades = op.filter_map("parse", raw_trades, parse_trade)
    keyed_trades = op.key_on("by_symbol", valid_trades, lambda x: x["symbol"])
    clock = EventClock(
        ts_getter=lambda trade: trade["timestamp"], wait_for_system_duration=timedelta(seconds=5)
    )
    windower = TumblingWindower(
        length=timedelta(minutes=1), align_to=datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    )
    candles_out = fold_window(
        "ohlcv_1m",
        keyed_trades,
        clock,
        windower,
        builder=create_empty_candle,
        folder=update_candle,
        merger=merge_candles,
    )
    op.output("kafka_sink", op.map("format", candles_out.down, format_candle), NullSink())
    op.output("dlq_sink", op.map("format_late", candles_out.late, format_late), NullSink())
    cpu0, _ = _usage()
    t0 = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t0
    cpu1, rss = _usage()
    return {"seconds": seconds, "cpu": cpu1 - cpu0, "maxrss_kb": rss, "candles_1m": out[0]}


def child_ours(redis_url: str, home: str) -> dict:
    """The production candles flow, as ``python -m bytewax.run`` runs it, with recovery."""
    os.environ["REDIS_URL"] = redis_url
    os.environ["CRYPTOPIPE_HOME"] = home
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig

    from cryptopipe.commands.stream import ensure_recovery_dir
    from streaming.flows.candles import get_flow

    recovery = Path(home) / "recovery" / "candles"
    ensure_recovery_dir(recovery)
    flow = get_flow(exit_when_idle=IDLE_S)
    cpu0, _ = _usage()
    t0 = time.perf_counter()
    cli_main(
        flow,
        workers_per_process=1,
        epoch_interval=timedelta(seconds=5),
        recovery_config=RecoveryConfig(str(recovery), timedelta(seconds=0)),
    )
    seconds = time.perf_counter() - t0 - IDLE_S
    cpu1, rss = _usage()
    return {"seconds": seconds, "cpu": cpu1 - cpu0, "maxrss_kb": rss}


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- parts --------------------------------------------------------------------------


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def quiesce(client) -> None:
    """Rewrite the AOF now and wait for it: writing the raw log grows the AOF enough to
    start a background rewrite (a forked child on one of the two cores) that would
    otherwise land in the middle of a measured round."""
    import redis

    if client.info("persistence").get("aof_enabled"):
        try:
            client.bgrewriteaof()
        except redis.ResponseError:  # one is already running
            pass
    while True:
        info = client.info("persistence")
        if not (
            info.get("aof_rewrite_in_progress")
            or info.get("aof_rewrite_scheduled")
            or info.get("rdb_bgsave_in_progress")
        ):
            return
        time.sleep(0.2)


def reset(client) -> None:
    """Remove what a candles flow wrote (candles, side streams, its state keys)."""
    for key in client.scan_iter(CANDLES_PATTERN):
        client.delete(key)
    for stream in (LATE_STREAM, DLQ_STREAM, CLOSED_EVENTS_STREAM):
        client.delete(stream, written_key(stream))
    for key in client.scan_iter(flow_pattern("candles")):
        client.delete(key)
    quiesce(client)


def check_candles(client, objs: list) -> dict:
    """The candles in Redis, checked equal to the reference fold of ``objs`` (every interval)."""
    from marketdata.candle import fold_trades
    from marketdata.interval import Interval
    from serving.stream import StreamCandleReader

    reader = StreamCandleReader(client)
    got = {}
    for iv in Interval:
        for sym in sorted({t.symbol for t in objs}):
            for rec in reader.read(sym, iv):
                got[rec.candle.key] = rec.candle.fields()
    ref = {}
    for iv in Interval:
        ref.update({k: c.fields() for k, c in fold_trades(objs, iv).items()})
    assert got == ref, "candles differ from the reference"
    return got


def bench_trades(n: int, symbols: int) -> tuple[list[tuple], list, list]:
    """The bench's trades as tuples, as :class:`Trade` and as the feeds' raw messages."""
    from marketdata.rawmessage import RawMessage
    from marketdata.simulator import trade_payload
    from marketdata.trade import Trade

    trades = make_trades(n, symbols, rate=100.0)
    objs = [
        Trade(
            exchange="binance",
            symbol=s,
            trade_id=tid,
            price_e8=p,
            quantity_e8=q,
            event_time=t,
            is_buyer_maker=m,
        )
        for s, tid, p, q, t, m in trades
    ]
    msgs = [
        RawMessage(trade_payload(tr), "binance", tr.event_time, symbol=tr.symbol) for tr in objs
    ]
    return trades, objs, msgs


def even_workers(streams: list[str]) -> int:
    """The fewest workers per process that spread ``streams`` evenly over two processes.

    Which process folds which shard follows bytewax's key hash (streaming.placement).
    """
    from streaming.placement import placement

    for w in range(1, 5):
        spread = placement(streams, 2, w)
        sizes = [len(v) for v in spread.values()]
        if max(sizes) - min(sizes) <= 1 or w == 4:
            print(
                f"2 processes x {w} workers: "
                + "; ".join(f"process {p}: {', '.join(v) or '-'}" for p, v in spread.items())
            )
            return w
    raise AssertionError


def scale_out(url: str, work: Path, n: int, symbols: int, rounds: int, shards: int) -> None:
    """``cryptopipe stream run candles`` with 1 and 2 processes over a sharded raw log."""
    import redis

    from redisstore.keys import heartbeat_key, raw_stream_names
    from streaming.flows.runtime import process_key
    from streaming.rawlog import RawLogWriter

    _, objs, msgs = bench_trades(n, symbols)
    client = redis.Redis.from_url(url)
    client.flushall()
    writer = RawLogWriter(client, shards=shards)
    for i in range(0, n, 5000):
        writer.write(msgs[i : i + 5000])
    quiesce(client)
    empty = url.rsplit("/", 1)[0] + "/1"  # nothing to read: start-up and idle exit only

    streams = raw_stream_names(shards)
    workers2 = even_workers(streams)
    staged = [f"bench:staged:{x}" for x in streams]
    for live, keep in zip(streams, staged, strict=True):
        client.rename(live, keep)
    idle_s = 4.0  # long enough for the flow to be up before its input appears

    def run(processes: int, redis_url: str, home: Path, data: bool) -> tuple[float, float]:
        """Wall seconds from the moment the raw log appears to the end of the work, and CPU."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
        env.update(REDIS_URL=redis_url, CRYPTOPIPE_HOME=str(home))
        env["CRYPTOPIPE_RAW_SHARDS"] = str(shards)
        argv = [sys.executable, "-m", "cryptopipe", "stream", "run", "candles"]
        argv += ["--processes", str(processes), "--exit-when-idle", str(idle_s)]
        if processes == 2:
            argv += ["--workers", str(workers2)]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        beats = [heartbeat_key("candles")]
        beats += [process_key("candles", i) for i in range(1, processes)]
        flow_client = redis.Redis.from_url(redis_url)
        while not all(flow_client.exists(b) for b in beats):
            if proc.poll() is not None:
                raise RuntimeError(f"{processes} processes ended early:\n{proc.stderr.read()}")
            time.sleep(0.01)
        t0 = time.perf_counter()
        if data:
            for live, keep in zip(streams, staged, strict=True):
                client.rename(keep, live)
        _, err = proc.communicate()
        seconds = time.perf_counter() - t0 - idle_s
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{processes} processes failed:\n{err[-3000:]}")
        if data:
            for live, keep in zip(streams, staged, strict=True):
                client.rename(live, keep)
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        return seconds, cpu

    results: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for r in range(rounds):
        for processes in (1, 2):
            reset(client)
            client.delete(heartbeat_key("candles"), process_key("candles", 1))
            _, base_cpu = run(processes, empty, work / f"empty{processes}-{r}", False)
            client.delete(heartbeat_key("candles"), process_key("candles", 1))
            redis0 = redis_cpu(client)
            seconds, cpu = run(processes, url, work / f"scale{processes}-{r}", True)
            rcpu = redis_cpu(client) - redis0
            check_candles(client, objs)
            results[processes].append((seconds, cpu - base_cpu, rcpu))
            print(f"round {r + 1}, {processes} process(es): {seconds:.2f} s")
    print(f"\nscale-out: {n:,} trades, {symbols} symbols, raw log in {shards} shards")
    print(
        f"{'processes':>9s} {'seconds':>8s} {'trades/s':>10s} {'speed-up':>9s} "
        f"{'flow cpu s':>10s} {'redis cpu s':>11s}"
    )
    one = min(results[1])[0]
    for processes, runs in results.items():
        best, cpu, rcpu = min(runs)
        print(
            f"{processes:9d} {best:8.2f} {n / best:10,.0f} {one / best:8.2f}x "
            f"{cpu:10.2f} {rcpu:11.2f}"
        )
    print(
        "(seconds: from the raw log's appearing, the flow already up, to the end of its work;"
        " flow CPU: the whole command's minus the same command's on an empty raw log; this"
        f" machine has {os.cpu_count()} cores, Redis included)"
    )


def throughput(url: str, work: Path, n: int, symbols: int, rounds: int) -> None:
    import redis

    from streaming.rawlog import RawLogWriter

    trades, objs, msgs = bench_trades(n, symbols)
    trades_file = work / "trades.pickle"
    trades_file.write_bytes(pickle.dumps(trades))
    client = redis.Redis.from_url(url)
    client.flushall()
    writer = RawLogWriter(client)
    for i in range(0, n, 5000):
        writer.write(msgs[i : i + 5000])
    print(
        f"raw log: {client.xlen(RAW_STREAM):,} entries of {symbols} symbols, "
        f"{(trades[-1][4] - trades[0][4]) / 60000:.0f} minutes of market"
    )
    quiesce(client)

    seed_runs, ours_runs = [], []
    for r in range(rounds):
        seed_runs.append(run_child(["--child", "seed", str(trades_file)]))
        reset(client)
        home = work / f"home{r}"
        shutil.rmtree(home, ignore_errors=True)
        cpu0 = redis_cpu(client)
        res = run_child(["--child", "ours", url, str(home)])
        res["redis_cpu"] = redis_cpu(client) - cpu0
        ours_runs.append(res)
        print(
            f"round {r + 1}: seed {seed_runs[-1]['seconds']:.2f} s, "
            f"ours {ours_runs[-1]['seconds']:.2f} s"
        )

    # Ours must be right, not just fast: every interval equals the reference.
    got = check_candles(client, objs)
    n1m = sum(1 for k in got if k[2] == "1m")
    assert seed_runs[-1]["candles_1m"] == n1m, (seed_runs[-1]["candles_1m"], n1m)

    best_seed = min(seed_runs, key=lambda x: x["seconds"])
    best_ours = min(ours_runs, key=lambda x: x["seconds"])
    rows = [
        ("seed (in memory, 1m only, floats)", best_seed, n1m, None),
        ("ours (Redis -> Redis, 6 intervals)", best_ours, len(got), best_ours["redis_cpu"]),
    ]
    print()
    print(
        f"{'flow':38s} {'seconds':>8s} {'trades/s':>10s} {'candles':>8s} "
        f"{'cpu s':>6s} {'redis cpu s':>11s} {'peak MB':>8s}"
    )
    for name, res, candles, rcpu in rows:
        print(
            f"{name:38s} {res['seconds']:8.2f} {n / res['seconds']:10,.0f} {candles:8,d} "
            f"{res['cpu']:6.2f} {'-' if rcpu is None else f'{rcpu:.2f}':>11s} "
            f"{res['maxrss_kb'] / 1024:8.0f}"
        )
    ratio = best_seed["seconds"] / best_ours["seconds"]
    cpu_seed = min(x["cpu"] for x in seed_runs)
    cpu_ours = min(x["cpu"] + x["redis_cpu"] for x in ours_runs)
    all_seed = ", ".join(f"{x['seconds']:.2f}" for x in seed_runs)
    all_ours = ", ".join(f"{x['seconds']:.2f}" for x in ours_runs)
    print(
        f"\nratio ours/seed throughput: {ratio:.2f}x  (target >= 3x; "
        f"best of {rounds} rounds; all: seed {all_seed}; ours {all_ours})"
    )
    print(
        f"ratio by CPU time (ours including the Redis server's): {cpu_seed / cpu_ours:.2f}x "
        f"(seed {cpu_seed:.2f} s, ours {cpu_ours:.2f} s)"
    )


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latency(url: str, work: Path, rate: int, symbols: int, seconds: float) -> None:
    import redis

    from marketdata.interval import Interval
    from marketdata.rawmessage import ProgressMark, RawMessage
    from marketdata.settings import DEFAULT_LATENESS_MS
    from marketdata.simulator import trade_payload
    from marketdata.trade import Trade
    from redisstore.keys import CLOSED_EVENTS_STREAM
    from streaming.feeds.pacing import MARK_EVERY_S
    from streaming.rawlog import RawLogWriter

    client = redis.Redis.from_url(url)
    client.flushall()
    home = work / "latency-home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptopipe",
            "stream",
            "run",
            "candles",
            "--redis-url",
            url,
            "--home",
            str(home),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    writer = RawLogWriter(client)
    rng = random.Random(2)
    syms = [f"L{i:02d}USDT" for i in range(symbols)]
    quiet = [f"Q{i:02d}USDT" for i in range(5)]
    next_id = dict.fromkeys(syms + quiet, 1)
    step = 0.005

    def trade(venue: str, s: str, ms: int) -> RawMessage:
        tr = Trade(
            exchange=venue,
            symbol=s,
            trade_id=next_id[s],
            price_e8=rng.randrange(10**9, 10**10),
            quantity_e8=rng.randrange(1, 10**8),
            event_time=ms,
            is_buyer_maker=rng.random() < 0.5,
        )
        next_id[s] += 1
        return RawMessage(trade_payload(tr), venue, ms, symbol=s)

    start = time.time()
    sent = 0
    last_mark = 0.0
    cpu0 = None
    t_cpu0 = 0.0
    try:
        while (now := time.time()) < start + seconds:
            if cpu0 is None and now > start + 5:  # steady state: after start-up
                cpu0, t_cpu0 = _proc_cpu(flow.pid), now
            k = int((now - start) * rate) - sent  # paced by elapsed time, not by steps
            sent += k
            ms = int(now * 1000)
            batch = [trade("binance", syms[rng.randrange(symbols)], ms) for _ in range(k)]
            # the quiet venue: a trade every ~20 s per symbol
            batch += [trade("kraken", s, ms) for s in quiet if rng.random() < step / 20]
            marks = []
            if now - last_mark >= MARK_EVERY_S:
                marks = [ProgressMark(v, ms, ms) for v in ("binance", "kraken")]
                last_mark = now
            writer.write(batch, marks)
            time.sleep(max(0.0, step - (time.time() - now)))
        cpu_share = (_proc_cpu(flow.pid) - (cpu0 or 0.0)) / (time.time() - t_cpu0)
        hwm = _proc_hwm_mb(flow.pid)
        time.sleep(DEFAULT_LATENESS_MS / 1000 + 2)
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(timeout=30)
    lat: dict[tuple[str, str], list[float]] = {}
    ms_of = {i.label: i.ms for i in Interval}
    end_ms = int((start + seconds) * 1000)
    for eid, f in client.xrange(CLOSED_EVENTS_STREAM):
        interval = f[b"interval"].decode()
        due = int(f[b"open_time"]) + ms_of[interval] + DEFAULT_LATENESS_MS
        if due > end_ms:
            continue  # closed by the writer stopping, not by time
        readable = id_ms(eid)
        venue = f.get(b"exchange", b"binance").decode()
        lat.setdefault((venue, interval), []).append(readable - due)
    written = writer.written
    print(
        f"\nsteady rate: {written / seconds:,.0f} trades/s over {symbols} symbols for "
        f"{seconds:.0f} s ({written:,} trades), a quiet venue of {len(quiet)} symbols, "
        f"marks every {MARK_EVERY_S:g} s"
    )
    print(
        f"{'venue':8s} {'interval':8s} {'candles':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}"
    )
    for venue, target in (("binance", 50), ("kraken", 1000)):
        everything = []
        for label in [i.label for i in Interval]:
            xs = sorted(lat.get((venue, label), []))
            if not xs:
                continue
            everything += xs
            print(
                f"{venue:8s} {label:8s} {len(xs):8d} {statistics.median(xs):7.1f} "
                f"{xs[min(len(xs) - 1, int(0.99 * len(xs)))]:7.1f} {xs[-1]:7.1f}"
            )
        everything.sort()
        if everything:
            p99 = everything[min(len(everything) - 1, int(0.99 * len(everything)))]
            print(
                f"{venue:8s} {'all':8s} {len(everything):8d} "
                f"{statistics.median(everything):7.1f} {p99:7.1f} {everything[-1]:7.1f}"
                f"   (target p99 < {target} ms)"
            )
    print(f"flow process: CPU {cpu_share * 100:.0f}% of one core, peak memory {hwm:.0f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--trades", type=int, default=500_000)
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--latency-symbols", type=int, default=50)
    p.add_argument("--latency-seconds", type=float, default=250.0)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-scale-out", action="store_true")
    p.add_argument("--shards", type=int, default=4, help="raw-log shards of the scale-out part")
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        res = child_seed(*rest) if kind == "seed" else child_ours(*rest)
        print(json.dumps(res))
        return 0
    from cryptopipe.localredis import LocalRedis, free_port

    with tempfile.TemporaryDirectory(prefix="bench-candles-") as tmp:
        work = Path(tmp)
        server = LocalRedis(work / "redis", free_port()).start()
        try:
            if not args.skip_throughput:
                throughput(server.url, work, args.trades, args.symbols, args.rounds)
            if not args.skip_scale_out:
                scale_out(server.url, work, args.trades, args.symbols, args.rounds, args.shards)
            if not args.skip_latency:
                latency(server.url, work, args.rate, args.latency_symbols, args.latency_seconds)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
