"""The archive flow end to end: simulator -> raw log -> ``cryptopipe stream run archive`` -> lake.

Real Redis, real bytewax (through the CLI, with recovery), real Parquet lake. What
the lake must hold is known independently: the simulator, run again in-process
with the same configuration, says which messages it sent (trades, duplicates,
malformed ones).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import redis

from lake.layout import Lake
from lake.trades import read_rejects, read_trades
from marketdata.rawmessage import RawMessage
from marketdata.simulator import KIND_MALFORMED, SimConfig, simulate
from marketdata.timeutil import DAY_MS, day_start_ms, parse_time
from marketdata.trade import Trade
from redisstore.keys import (
    ARCHIVE_PARTITIONS_KEY,
    ARCHIVE_PROGRESS_KEY,
    ARCHIVE_WATERMARK_KEY,
    DLQ_STREAM,
    LATE_STREAM,
    RAW_STREAM,
    raw_stream_names,
    series_key,
)
from redisstore.streamids import parse_id
from streaming.fastparse import parse_raw_message
from tests.processes import cryptopipe_ok

LATENESS_MS = 5_000


@pytest.fixture
def env(redis_url: str, home: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CRYPTOPIPE_HOME": str(home)}


def sim_args(
    start: str,
    duration: int,
    rate: float,
    seed: int,
    symbols: str,
    exchanges: str = "binance",
    **faults: Any,
) -> tuple[list[str], SimConfig]:
    """``feed simulate`` arguments, and the SimConfig the command builds from them."""
    start_ms = parse_time(start)
    args = [
        "feed",
        "simulate",
        "--start",
        start,
        "--duration",
        str(duration),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        "--symbols",
        symbols,
        "--exchanges",
        exchanges,
    ]
    for name, share in faults.items():
        args += [f"--{name.replace('_', '-')}", str(share)]
    cfg = SimConfig(
        symbols=tuple(symbols.split(",")),
        exchanges=tuple(exchanges.split(",")),
        rate=rate,
        start_ms=start_ms,
        duration_s=duration,
        seed=seed,
        lateness_ms=LATENESS_MS,
        first_trade_id=start_ms * 10,
    )
    return args, replace(cfg, **faults)


def truth(*cfgs: SimConfig) -> tuple[Counter[Trade], Counter[bytes]]:
    """Trades as delivered (a duplicate twice) and malformed payloads, per the simulator."""
    trades: Counter[Trade] = Counter()
    bad: Counter[bytes] = Counter()
    for cfg in cfgs:
        for m in simulate(cfg):
            if m.kind == KIND_MALFORMED:
                bad[m.payload] += 1
            elif m.trade is not None:
                trades[m.trade] += 1
    return trades, bad


def lake_trades(lake: Lake) -> Counter[Trade]:
    return Counter(t for day in lake.list_days("trades") for t in read_trades(lake, day))


def lake_rejects(lake: Lake) -> list[dict[str, object]]:
    return [r for day in lake.list_days("rejects") for r in read_rejects(lake, day).to_pylist()]


def lake_files(lake: Lake) -> dict[str, Counter[tuple[object, ...]]]:
    """Relative path -> multiset of rows, for every visible Parquet file."""
    out: dict[str, Counter[tuple[object, ...]]] = {}
    for top in ("trades", "rejects"):
        for day in lake.list_days(top):
            directory = lake.path(top, f"date={day.isoformat()}")
            for name in lake.list_files(directory):
                table = pq.read_table(f"{directory}/{name}", partitioning=None)
                rows = zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
                out[f"{top}/date={day.isoformat()}/{name}"] = Counter(rows)
    return out


def file_ranges(lake: Lake) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(stream, first, last) of every archived range (one per name, across days)."""
    names = {p.rsplit("/", 1)[1] for p in lake_files(lake)}
    out = []
    for n in names:
        kind, stream, first, last = n.removesuffix(".parquet").split("~")
        assert kind == "stream"
        f, la = parse_id(first), parse_id(last)
        out.append((stream, f, la))
    return sorted(out)


def assert_disjoint(ranges: list[tuple[str, tuple[int, int], tuple[int, int]]]) -> None:
    """No raw entry is in two files."""
    for (s1, _, l1), (s2, f2, _) in pairwise(ranges):
        assert s1 != s2 or l1 < f2, (l1, f2)


def sealed(client: Any, lake: Lake, day: date) -> bool:
    """The batch layer's sealing check for ``day``."""
    raw = client.get(ARCHIVE_WATERMARK_KEY)
    try:
        from batch.sealing import parse_watermark, seal_status
    except ImportError:  # the rule ARCHIVE_WATERMARK_KEY documents
        return raw is not None and int(raw) >= day_start_ms(day) + DAY_MS + LATENESS_MS
    st = seal_status(lake, day, lateness_ms=LATENESS_MS, watermark=lambda: parse_watermark(raw))
    return st.sealed


# --------------------------------------------------------------------------- (1)


def test_every_message_is_archived_once_per_raw_entry(
    env: dict[str, str], redis_client: Any, home: Path
) -> None:
    args, cfg = sim_args(
        "2025-03-14T10:00:00Z",
        3600,
        3,
        11,
        "BTCUSDT,ETHUSDT,SOLUSDT",
        duplicates=0.03,
        malformed=0.02,
        out_of_order=0.05,
    )
    cryptopipe_ok(env, *args, "--speed", "max")
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "1")
    lake = Lake(home / "lake")
    trades, bad = truth(cfg)
    assert lake.list_days("trades") == [date(2025, 3, 14)]
    assert Counter(read_trades(lake, date(2025, 3, 14))) == trades
    assert sum(trades.values()) - len(trades) > 100  # duplicates: one row per raw entry
    # Every malformed message is kept once, with the reference parser's reason and
    # the id of the raw entry that held it.
    rejects = lake_rejects(lake)
    assert Counter(r["payload"] for r in rejects) == bad and len(bad) > 50
    raw = {i.decode(): f for i, f in redis_client.xrange(RAW_STREAM)}
    for r in rejects:
        fields = raw[r["source_id"]]
        assert fields[b"payload"] == r["payload"]
        ref = parse_raw_message(RawMessage.from_fields(fields))
        assert not isinstance(ref, Trade)
        assert (r["reason"], r["source"]) == (ref.reason, RAW_STREAM)
    # Files cover disjoint id ranges; the watermark is published after them.
    assert_disjoint(file_ranges(lake))
    last_event = max(t.event_time for t in trades)
    wm = int(redis_client.get(ARCHIVE_WATERMARK_KEY))
    assert wm >= last_event - LATENESS_MS
    assert int(redis_client.hget(ARCHIVE_PARTITIONS_KEY, RAW_STREAM)) == wm
    assert redis_client.hget(ARCHIVE_PROGRESS_KEY, RAW_STREAM)


@pytest.mark.slow
def test_two_archive_processes_over_four_shards_archive_every_message_once(
    env: dict[str, str], redis_client: Any, home: Path
) -> None:
    """Scale-out: two processes of two workers (each reading the shards it folds);
    the lake is the one process's, and the watermark the minimum of the partitions."""
    env = {**env, "CRYPTOPIPE_RAW_SHARDS": "4"}
    args, cfg = sim_args(
        "2025-03-14T10:00:00Z", 3600, 3, 12, "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT", malformed=0.02
    )
    cryptopipe_ok(env, *args, "--speed", "max")
    cryptopipe_ok(
        env, "stream", "run", "archive", "--exit-when-idle", "1", "--processes", "2", "-w", "2"
    )
    lake = Lake(home / "lake")
    trades, bad = truth(cfg)
    assert Counter(read_trades(lake, date(2025, 3, 14))) == trades
    assert Counter(r["payload"] for r in lake_rejects(lake)) == bad and len(bad) > 50
    assert_disjoint(file_ranges(lake))
    parts = partition_watermarks(redis_client)
    assert len(parts) == 4
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == min(parts.values())


# --------------------------------------------------------------------------- (3)


def partition_watermarks(client: Any) -> dict[str, int]:
    return {
        k.decode(): int(v)
        for k, v in client.hgetall(ARCHIVE_PARTITIONS_KEY).items()
        if not k.startswith(b"@")  # the archived position each value belongs to
    }


@pytest.mark.slow
def test_a_day_seals_only_when_every_venue_of_every_partition_has_archived_past_it(
    env: dict[str, str], redis_client: Any, home: Path
) -> None:
    """binance's BTCUSDT and kraken's SOLUSDT on two shards; each feed's progress marks
    reach both shards. The day seals once both venues have passed it everywhere."""
    env = {**env, "CRYPTOPIPE_RAW_SHARDS": "2"}  # BTCUSDT -> shard 0, SOLUSDT -> shard 1
    lake = Lake(home / "lake")
    day = date(2025, 3, 14)
    seals_at = day_start_ms(day) + DAY_MS + LATENESS_MS
    # Both venues up to 23:59:30: watermarks 23:59:25, the day is not sealed.
    a, cfg_a = sim_args("2025-03-14T23:58:30Z", 60, 20, 1, "BTCUSDT")
    a2, cfg_a2 = sim_args("2025-03-14T23:58:30Z", 60, 20, 4, "SOLUSDT", exchanges="kraken")
    cryptopipe_ok(env, *a, "--speed", "max")
    cryptopipe_ok(env, *a2, "--speed", "max")
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "1")
    assert not sealed(redis_client, lake, day)
    parts = partition_watermarks(redis_client)
    assert set(parts) == set(raw_stream_names(2))
    assert int(redis_client.get(ARCHIVE_WATERMARK_KEY)) == min(parts.values())
    # binance passes midnight + lateness; kraken has not: still not sealed anywhere.
    b, cfg_b = sim_args("2025-03-15T00:00:00Z", 30, 20, 2, "BTCUSDT")
    cryptopipe_ok(env, *b, "--speed", "max")
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "1")
    parts = partition_watermarks(redis_client)
    assert all(v < seals_at for v in parts.values()), parts
    assert not sealed(redis_client, lake, day)
    # kraken too: sealed, and everything of the day is in the lake exactly once
    # (the open buckets written at each end of input were superseded, not doubled).
    c, cfg_c = sim_args("2025-03-15T00:00:00Z", 30, 20, 3, "SOLUSDT", exchanges="kraken")
    cryptopipe_ok(env, *c, "--speed", "max")
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "1")
    assert sealed(redis_client, lake, day)
    assert all(v >= seals_at for v in partition_watermarks(redis_client).values())
    assert not sealed(redis_client, lake, date(2025, 3, 15))
    trades, _ = truth(cfg_a, cfg_a2, cfg_b, cfg_c)
    assert lake_trades(lake) == trades
    assert_disjoint(file_ranges(lake))


# --------------------------------------------------------------------------- (4)


@pytest.mark.slow
def test_trimming_never_removes_an_entry_the_archive_has_not_written(
    env: dict[str, str], redis_client: Any, home: Path
) -> None:
    env = {**env, "CRYPTOPIPE_ARCHIVE_RETENTION_MS": "0", "CRYPTOPIPE_ARCHIVE_BUCKET_MS": "200"}
    args, cfg = sim_args(
        "2025-03-14T08:00:00Z", 1200, 5, 4, "BTCUSDT,ETHUSDT", duplicates=0.02, malformed=0.01
    )
    cryptopipe_ok(env, *args, "--speed", "max")
    before = redis_client.xrange(RAW_STREAM)
    # Trimming needs two snapshots since the entries were written: idle long enough.
    cryptopipe_ok(
        env,
        "stream",
        "run",
        "archive",
        "--exit-when-idle",
        "5",
        "--snapshot-interval",
        "1",
        "--batch-size",
        "500",
    )
    after = redis_client.xrange(RAW_STREAM)
    assert len(after) < len(before) // 2, "the archive should have trimmed the raw log"
    trimmed = before[: len(before) - len(after)]
    assert [i for i, _ in before[len(trimmed) :]] == [i for i, _ in after]
    lake = Lake(home / "lake")
    ranges = file_ranges(lake)
    assert_disjoint(ranges)
    # Every trimmed entry is inside an archived range, and the lake holds everything.
    for entry_id, _ in trimmed:
        assert any(f <= parse_id(entry_id) <= la for _, f, la in ranges), entry_id
    trades, bad = truth(cfg)
    assert lake_trades(lake) == trades
    assert Counter(r["payload"] for r in lake_rejects(lake)) == bad
    hb = redis_client.hgetall("md:flow:archive:heartbeat")
    assert hb[b"lost_entries"] == b"0"


# --------------------------------------------------------------------------- (2)


def _mirror(src: Any, dst: Any, stop: threading.Event) -> None:
    """Copy the raw log, same ids, as it grows (the archive trims the original)."""
    last = b"0-0"
    while True:
        done = stop.is_set()
        reply = src.xread({RAW_STREAM: last}, count=2000, block=50)
        for _, entries in reply or []:
            pipe = dst.pipeline(transaction=False)
            for entry_id, fields in entries:
                pipe.xadd(RAW_STREAM, fields, id=entry_id)
                last = entry_id
            pipe.execute()
        if done and not reply:
            return


@pytest.fixture
def mirror(redis_url: str) -> Iterator[tuple[Any, str, threading.Event]]:
    src = redis.Redis.from_url(redis_url)
    copy_url = redis_url.rsplit("/", 1)[0] + "/1"
    dst = redis.Redis.from_url(copy_url)
    stop = threading.Event()
    thread = threading.Thread(target=_mirror, args=(src, dst, stop), daemon=True)
    thread.start()
    yield dst, copy_url, stop
    stop.set()
    thread.join(10)
    src.close()
    dst.close()


def wait_running(client: Any, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the flow started by ``proc`` beats (it has read the raw log)."""
    deadline = time.monotonic() + timeout
    while client.hget("md:flow:archive:heartbeat", "pid") != str(proc.pid).encode():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the archive flow did not start"
        time.sleep(0.1)


@pytest.mark.slow
def test_kills_during_a_live_feed_leave_the_lake_of_a_clean_run(
    env: dict[str, str],
    redis_client: Any,
    home: Path,
    tmp_path: Path,
    mirror: tuple[Any, str, threading.Event],
) -> None:
    copy, copy_url, stop_mirror = mirror
    # Buckets of 1 s (~300 entries at 30x) cut into files of 64 entries: kills land
    # between and within both kinds of cut.
    env = {
        **env,
        "CRYPTOPIPE_ARCHIVE_BUCKET_MS": "1000",
        "CRYPTOPIPE_ARCHIVE_RETENTION_MS": "0",
        "CRYPTOPIPE_ARCHIVE_MAX_FILE_ENTRIES": "64",
    }
    args, cfg = sim_args(
        "2025-03-14T16:00:00Z",
        600,
        10,
        8,
        "BTCUSDT,ETHUSDT,SOLUSDT",
        duplicates=0.02,
        malformed=0.01,
        out_of_order=0.05,
    )
    feed = subprocess.Popen(
        [sys.executable, "-m", "cryptopipe", *args, "--speed", "30"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run = [
        sys.executable,
        "-m",
        "cryptopipe",
        "stream",
        "run",
        "archive",
        "--snapshot-interval",
        "1",
        "--batch-size",
        "50",
    ]
    rng = random.Random(3)
    kills = 0
    terms: list[tuple[int, float]] = []
    while feed.poll() is None or kills < 3:
        proc = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_running(redis_client, proc)
        time.sleep(rng.uniform(1.0, 3.0))
        if kills == 1:
            # SIGTERM: a final snapshot, then a prompt, clean exit.
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            terms.append((proc.returncode, time.monotonic() - t0))
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    assert feed.wait() == 0, feed.stderr.read() if feed.stderr else ""
    cryptopipe_ok(
        env, "stream", "run", "archive", "--exit-when-idle", "2", "--snapshot-interval", "1"
    )
    assert kills >= 3
    assert terms and terms[0][0] == 0 and terms[0][1] < 5.0, terms
    hb = redis_client.hgetall("md:flow:archive:heartbeat")
    assert hb[b"lost_entries"] == b"0"
    info = redis_client.xinfo_stream(RAW_STREAM)
    assert info["entries-added"] > info["length"], "the archive should have trimmed"

    # A clean run over an identical raw log (the mirror), into another lake.
    stop_mirror.set()
    time.sleep(0.5)
    assert copy.xlen(RAW_STREAM) == info["entries-added"]
    clean_home = tmp_path / "clean"
    clean_env = {**env, "REDIS_URL": copy_url, "CRYPTOPIPE_HOME": str(clean_home)}
    cryptopipe_ok(clean_env, "stream", "run", "archive", "--exit-when-idle", "2")

    killed, clean = Lake(home / "lake"), Lake(clean_home / "lake")
    killed_files, clean_files = lake_files(killed), lake_files(clean)
    assert sorted(killed_files) == sorted(clean_files)  # the same file names
    assert killed_files == clean_files  # the same rows in each
    assert len(clean_files) > 10
    per_range = Counter()
    for path, rows in clean_files.items():
        per_range[path.rsplit("/", 1)[1]] += sum(rows.values())
    assert max(per_range.values()) == 64, per_range.most_common(3)
    trades, bad = truth(cfg)
    assert lake_trades(killed) == trades
    assert Counter(r["payload"] for r in lake_rejects(killed)) == bad


def test_an_entry_with_more_than_65535_fields_is_rejected_not_a_crash(
    env: dict[str, str], redis_client: Any, home: Path
) -> None:
    args, cfg = sim_args("2025-03-14T10:00:00Z", 60, 5, 3, "BTCUSDT")
    cryptopipe_ok(env, *args, "--speed", "max")
    fields = {f"f{i}".encode(): b"x" for i in range(70_000)}
    poison = redis_client.xadd(RAW_STREAM, fields).decode()
    cryptopipe_ok(env, *args, "--speed", "max")  # the same trades again, after it
    # Both flows get through it and end (a crash-loop would fail or never end).
    cryptopipe_ok(env, "stream", "run", "archive", "--exit-when-idle", "1")
    cryptopipe_ok(env, "stream", "run", "candles", "--exit-when-idle", "1")
    # The archive: the entry in the lake's rejects with its reason, every valid trade kept.
    lake = Lake(home / "lake")
    rejected = {r["source_id"]: r["reason"] for r in lake_rejects(lake)}
    assert rejected[poison] == "too_many_fields"
    trades, _ = truth(cfg)
    assert lake_trades(lake) == trades + trades
    assert Counter(r["reason"] for r in lake_rejects(lake))["too_many_fields"] == 1
    # The candles flow: the entry in the DLQ with its reason and a bounded payload.
    dlq = [e for _, e in redis_client.xrange(DLQ_STREAM)]
    ours = [e for e in dlq if e[b"source_id"] == poison.encode()]
    assert len(ours) == 1
    assert ours[0][b"reason"] == b"too_many_fields"
    assert b"70000 fields" in ours[0][b"detail"]
    assert len(ours[0][b"payload"]) == 0  # no payload field: never the whole entry
    # ... and every valid trade candled once (or kept as late): the poison broke nothing.
    candles = [orjson.loads(v) for v in redis_client.hvals(series_key("binance", "BTCUSDT", "1m"))]
    counted = sum(c["trade_count"] for c in candles)
    assert counted + redis_client.xlen(LATE_STREAM) == len(trades)
    assert counted > 0


def test_a_snapshot_with_16_bit_field_counts_still_loads() -> None:
    import pickle
    from array import array

    from streaming.archive import _Chunk

    chunk = _Chunk([b"1-0", b"2-0"], [[b"a", b"1"], [b"b", b"2", b"c", b"3"]])
    ids, data = chunk.entries()
    blob = (b"1-0 2-0", array("H", [2, 4]).tobytes(), *chunk._blob[2:])
    old = _Chunk.__new__(_Chunk)
    old.__setstate__((blob, 2))  # what a snapshot of the earlier code holds
    assert old.entries() == (ids, data)
    assert pickle.loads(pickle.dumps(chunk)).entries() == (ids, data)
