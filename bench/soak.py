"""Soak: every long-running process's memory at a steady rate.

Not a test: run it by hand (it takes as long as ``--minutes``, plus about a minute).

    .venv/bin/python bench/soak.py                      # 30 minutes, 1,000 trades/s, 20 symbols
    .venv/bin/python bench/soak.py --minutes 3          # a quick look
    ./dev bench soak --minutes 30 --out soak.csv

What runs, all real processes, in a temporary directory:

* a ``redis-server`` on a free loopback port (AOF on, as ``cryptopipe up`` starts it);
* ``cryptopipe stream run candles|metrics|archive`` with ``--home`` in the temporary
  directory (recovery directories, 5 s snapshots, the lake under ``<home>/lake``);
* ``cryptopipe feed simulate --rate R --speed 1``: a steady simulated market whose
  event time is the wall clock, with faults on (out of order 2%, duplicates 1%,
  late 0.1%, malformed 0.1% by default).

Every ``--interval`` seconds it samples each process's resident memory (VmRSS and its
anonymous part) and CPU time, each flow's recovery directory on disk and the size of
its state (the newest snapshot of every state key in the bytewax recovery database:
exactly what the flow holds, pickled), and Redis ``used_memory`` split by kind of key.

At the end (or on Ctrl-C) it stops the feed, lets the flows drain the raw log, stops
the flows and Redis, and prints:

1. per process, RSS at the start, after the warm-up (``--warmup``, default 2 min),
   at the middle and at the end, the maximum, and the slope of a least-squares line
   through the samples after the warm-up; **flat** when the end is within
   max(10%, 20 MB) of the warm-up value and the slope is below a third of what
   keeping 8 bytes per trade would cost (``rate x 8 B x 3600 / 3``, 9.6 MB/h at
   1,000 trades/s: the smallest leak that grows with the stream's length). The
   baseline row of our benchmark convention is each process's own RSS after the
   warm-up, in the same run;
2. per flow, the state size (snapshot bytes): bounded when the largest value in the
   second half of the post-warm-up samples is within 10% (or 64 KiB) of the largest in
   the first half (the state has a sawtooth within each minute, so maxima over
   halves, not single samples, are compared), and the recovery directory on disk;
3. Redis memory by kind of key (the raw log, closed candles, closed-candle events,
   the append-once ``:written`` sets, late/DLQ, metrics) at the same points;
4. counts: what the feed wrote by kind, what the candles flow counted, DLQ, late,
   candles, metrics, archived entries, lag and CPU per process, so the run was real.

**Bounded Redis** (``--bounded``): market time runs 24 times the wall clock (``--speed``;
the simulated market starts that far before now, so it ends at about now, and the
rate stays ``--rate`` trades per wall second), with the shortest candle retention
allowed (two days and the lateness of market time: filled after two wall hours), the
DLQ and late streams capped at 10,000, closed-candle events at 100,000 and the
append-once sets at 30 minutes. Every bound then fills within a 4-hour run, and the
third table says, per kind of key, whether Redis stayed flat over the last third,
and what a closed candle costs (bytes, and MB per symbol and day of retention)::

    .venv/bin/python bench/soak.py --bounded --minutes 240 --warmup 5

The archive flow trims the raw log to ``--raw-retention-minutes`` (default 10) behind
what it archived (``CRYPTOPIPE_ARCHIVE_RETENTION_MS``; the production default is
60 min, longer than a 30-minute soak, under which the raw log would only grow), so
the raw log reaches its steady size inside the run. Without ``--bounded``, candles,
closed-candle events and the ``:written`` sets grow for longer than a run by design
(candles kept 7 days, events up to 100,000, the append-once identities for 2 days).

Samples go to a CSV (``--out``, else ``soak.csv`` in the temporary directory, which is
kept with the processes' logs; Redis data, lake and recovery are removed at the end
unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import pickle
import re
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptopipe.procs import ProcessGroup  # noqa: E402  (after the path: run as a script)
from redisstore.keys import (  # noqa: E402
    CLOSED_EVENTS_STREAM,
    DLQ_STREAM,
    LATE_STREAM,
    RAW_STREAM,
    counts_key,
    heartbeat_key,
    series_key,
)
from redisstore.streamids import id_ms  # noqa: E402

FLOWS = ("candles", "metrics", "archive")
PROCS = (*FLOWS, "feed")
RAW = RAW_STREAM
MB = 1024 * 1024
#: Symbols with realistic profiles first (the simulator's), then synthetic ones.
KNOWN = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ETHBTC"]


def symbols(n: int) -> list[str]:
    return (KNOWN + [f"S{i:02d}USDT" for i in range(len(KNOWN), n)])[:n]


# ---- processes ----------------------------------------------------------------------


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---- measurements -------------------------------------------------------------------


def proc_mem(pid: int) -> tuple[float, float]:
    """VmRSS and RssAnon of ``pid`` in MB."""
    rss = anon = math.nan
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1]) / 1024
    return rss, anon


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _open_bucket_bytes(ser_change: bytes | None) -> int:
    """Pickled size of the open bucket in an archive flow's state (0 for other states).

    The archive holds the current minute's raw entries until it writes them: a
    sawtooth of up to a minute of the stream, sampled at arbitrary phases. What it
    holds beyond that is what must stay bounded.
    """
    if not ser_change:
        return 0
    try:
        inner = pickle.loads(ser_change)
        if not isinstance(inner, bytes) or not inner:
            return 0
        arch = pickle.loads(inner)
    except Exception:  # not an archive state
        return 0
    pending = getattr(arch, "pending", None)
    return len(pickle.dumps(pending, protocol=pickle.HIGHEST_PROTOCOL)) if pending else 0


def state_bytes(recovery: Path) -> tuple[int, int, int]:
    """Bytes of the newest snapshot of every (step, key), snapshot rows kept, and the
    bytes beyond an archive's open bucket.

    Read-only; the databases are in WAL mode, so a reader never blocks the flow.
    """
    total = rows = held = 0
    for db in sorted(recovery.glob("part-*.sqlite3")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            for (change,) in con.execute(
                "SELECT ser_change FROM snaps s WHERE snap_epoch = "
                "(SELECT max(snap_epoch) FROM snaps t "
                " WHERE t.step_id = s.step_id AND t.state_key = s.state_key)"
            ):
                size = len(change or b"")
                total += size
                held += size - _open_bucket_bytes(change)
            rows += con.execute("SELECT count(*) FROM snaps").fetchone()[0]
        finally:
            con.close()
    return total, rows, held


def key_kind(key: str) -> str:
    if key.startswith(RAW):
        return "raw_log"
    if key.endswith(":written"):
        return "written_sets"
    if key == CLOSED_EVENTS_STREAM:
        return "closed_events"
    family = key.split(":")[1] if ":" in key else ""  # md:<family>:... (redisstore.keys)
    if family == "candles":
        return "candles"
    if key in (LATE_STREAM, DLQ_STREAM):
        return "late_dlq"
    if family in ("metrics", "spread", "anomalies"):
        return "metrics"
    return "other"


REDIS_KINDS = (
    "raw_log",
    "candles",
    "closed_events",
    "written_sets",
    "late_dlq",
    "metrics",
    "other",
)


def redis_sample(client: Any) -> dict[str, float]:
    info = client.info("memory")
    out: dict[str, float] = {
        "redis_used_mb": info["used_memory"] / MB,
        "redis_rss_mb": info["used_memory_rss"] / MB,
    }
    by_kind = dict.fromkeys(REDIS_KINDS, 0)
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        by_kind[key_kind(key)] += client.memory_usage(key) or 0
    for k, v in by_kind.items():
        out[f"redis_{k}_mb"] = v / MB
    x = client.xinfo_stream(RAW)
    out["raw_len"] = x["length"]
    out["raw_added"] = x["entries-added"]
    first, last = x.get("first-entry"), x.get("last-entry")
    span = 0.0
    if first and last:
        span = (id_ms(last[0]) - id_ms(first[0])) / 60_000
    out["raw_span_min"] = span  # stream ids from the first entry left to the last
    for name, key in (
        ("late_len", LATE_STREAM),
        ("dlq_len", DLQ_STREAM),
        ("closed_len", CLOSED_EVENTS_STREAM),
    ):
        out[name] = client.xlen(key)
    return out


# ---- the run ------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    work: Path
    url: str
    home: Path
    procs: ProcessGroup
    client: Any
    stop: threading.Event
    samples: list[dict[str, float]] = field(default_factory=list)
    t0: float = 0.0
    died: str | None = None
    pids: dict[str, int] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        row: dict[str, float] = {"t_s": time.monotonic() - self.t0}
        for name in PROCS:
            pid = self.pids[name]
            try:
                row[f"{name}_rss_mb"], row[f"{name}_anon_mb"] = proc_mem(pid)
                row[f"{name}_cpu_s"] = proc_cpu(pid)
            except OSError:
                row[f"{name}_rss_mb"] = row[f"{name}_anon_mb"] = row[f"{name}_cpu_s"] = math.nan
        for name in FLOWS:
            rec = self.home / "recovery" / name
            row[f"{name}_recovery_bytes"] = dir_bytes(rec)
            try:
                (
                    row[f"{name}_state_bytes"],
                    row[f"{name}_snap_rows"],
                    row[f"{name}_held_bytes"],
                ) = state_bytes(rec)
            except sqlite3.Error:
                row[f"{name}_state_bytes"] = row[f"{name}_snap_rows"] = math.nan
                row[f"{name}_held_bytes"] = math.nan
        row["lake_bytes"] = dir_bytes(self.home / "lake")
        row["candles_1m"] = sum(
            self.client.hlen(k) for k in self.client.scan_iter(series_key("*", "*", "1m"))
        )
        row.update(redis_sample(self.client))
        for name in FLOWS:
            hb = self.client.hgetall(heartbeat_key(name))
            row[f"{name}_items_in"] = int(hb.get(b"items_in", 0))
            row[f"{name}_lag"] = int(hb.get(b"lag", 0))
            row[f"{name}_lag_ms"] = int(hb.get(b"lag_ms", 0))
        return row

    def check_alive(self) -> bool:
        for p in self.procs.children:
            if not p.alive():
                self.died = f"{p.name} exited with {p.proc.returncode}:\n{tail(p.log_path)}"
                return False
        return True


def bounds_env(a: argparse.Namespace) -> dict[str, str]:
    """The Redis bounds the flows run with (only those given)."""
    out = {}
    for var, value in (
        ("CRYPTOPIPE_CANDLE_RETENTION_MS", a.candle_retention_ms),
        ("CRYPTOPIPE_SIDE_STREAM_MAXLEN", a.side_maxlen),
        ("CRYPTOPIPE_CLOSED_EVENTS_MAXLEN", a.closed_maxlen),
        ("CRYPTOPIPE_APPEND_DEDUPE_MS", a.dedupe_ms),
    ):
        if value is not None:
            out[var] = str(value)
    return out


def start(run: Run, syms: Sequence[str]) -> None:
    a = run.args
    py = sys.executable
    common = ["--redis-url", run.url, "--home", str(run.home)]
    env = {"CRYPTOPIPE_ARCHIVE_RETENTION_MS": str(int(a.raw_retention_minutes * 60_000))}
    if a.archive_bucket_ms is not None:
        env["CRYPTOPIPE_ARCHIVE_BUCKET_MS"] = str(a.archive_bucket_ms)
    env |= bounds_env(a)
    for name in ("archive", "metrics", "candles"):
        run.procs.start(name, [py, "-m", "cryptopipe", *common, "stream", "run", name], env)
    # The flows are ready when each has beaten once (bytewax and pyarrow imports).
    deadline = time.monotonic() + 60
    while any(not run.client.exists(heartbeat_key(n)) for n in FLOWS):
        if time.monotonic() > deadline or not run.check_alive() or run.stop.is_set():
            msg = run.died or "the flows did not start within 60 s"
            raise RuntimeError(msg)
        time.sleep(0.2)
    feed = [
        py,
        "-m",
        "cryptopipe",
        *common,
        "feed",
        "simulate",
        "--symbols",
        ",".join(syms),
        "--rate",
        str(a.rate / a.speed),  # trades per second of market time
        "--speed",
        str(a.speed),
        "--start",
        str(int((time.time() - a.minutes * 60 * a.speed) * 1000)),
        "--seed",
        str(a.seed),
        "--out-of-order",
        str(a.out_of_order),
        "--duplicates",
        str(a.duplicates),
        "--late",
        str(a.late),
        "--malformed",
        str(a.malformed),
    ]
    run.procs.start("feed", feed)
    run.t0 = time.monotonic()
    run.pids = {p.name: p.proc.pid for p in run.procs.children}


def soak(run: Run) -> None:
    """Sample until ``--minutes`` have passed, a process dies, or a signal comes."""
    end = run.t0 + run.args.minutes * 60
    next_at = run.t0 + 5.0  # a first sample right after start-up
    csv_path = run.args.out
    writer = None
    with csv_path.open("w", newline="") as fh:
        while not run.stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                if not run.check_alive():
                    break
                row = run.sample()
                run.samples.append(row)
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                fh.flush()
                progress(run, row)
                if now >= end:
                    break
                k = math.floor((now - run.t0) / run.args.interval) + 1
                next_at = min(run.t0 + k * run.args.interval, end)
            run.stop.wait(max(0.05, min(next_at, end) - time.monotonic()))


def progress(run: Run, row: dict[str, float]) -> None:
    mem = "  ".join(f"{n} {row[f'{n}_rss_mb']:.0f}" for n in PROCS)
    print(
        f"[{row['t_s'] / 60:5.1f} min] RSS MB: {mem}  redis {row['redis_used_mb']:.0f}  "
        f"raw {int(row['raw_len']):,}/{int(row['raw_added']):,}  "
        f"lag ms {int(row['candles_lag_ms'])}",
        flush=True,
    )


def drain(run: Run, timeout: float = 30.0) -> float:
    """After the feed stopped: wait until the candles flow has read the whole raw log."""
    t = time.monotonic()
    added = run.client.xinfo_stream(RAW)["entries-added"]
    key = counts_key("candles", RAW)
    while time.monotonic() - t < timeout:
        if int(run.client.hget(key, "entries") or 0) >= added:
            break
        time.sleep(0.2)
    time.sleep(2.0)  # the other flows' last batches and heartbeats
    return time.monotonic() - t


# ---- report -------------------------------------------------------------------------


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if not math.isnan(y)]
    if len(pts) < 3:
        return math.nan
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    return math.nan if den == 0 else sum((t - mt) * (y - my) for t, y in pts) / den * 3600


def at(samples: list[dict[str, float]], t_s: float) -> dict[str, float]:
    return min(samples, key=lambda r: abs(r["t_s"] - t_s))


@dataclass
class Points:
    """The samples the tables show."""

    first: dict[str, float]
    base: dict[str, float]
    mid: dict[str, float]
    last: dict[str, float]
    post: list[dict[str, float]]


def points(samples: list[dict[str, float]], warmup_s: float) -> Points:
    last = samples[-1]
    base = at(samples, warmup_s)
    post = [r for r in samples if r["t_s"] >= base["t_s"]]
    return Points(
        first=samples[0], base=base, mid=at(samples, last["t_s"] / 2), last=last, post=post
    )


def fmt_min(r: dict[str, float]) -> str:
    return f"{r['t_s'] / 60:.1f}"


def report_rss(p: Points, rate: float) -> list[str]:
    limit = rate * 8 * 3600 / 3 / 1e6
    out = [
        f"\n1. Resident memory (VmRSS, MB). Baseline = each process's own RSS after the "
        f"warm-up (t = {fmt_min(p.base)} min), same run.",
        f"   flat = in the second half (steady state: an allocator first grows to its "
        f"working set), slope < {limit:.1f} MB/h (a third of 8 bytes per trade at "
        f"{rate:,.0f} trades/s) and end within max(5%, 10 MB) of the middle; "
        f"'slope' is over the whole run after the warm-up",
        f"{'process':9s} {'start':>7s} {'baseline':>9s} {'middle':>7s} {'end':>7s} "
        f"{'max':>7s} {'end-base':>9s} {'slope MB/h':>10s} {'2nd half':>9s} {'anon end':>9s}"
        f"  flat",
        f"{'(t min)':9s} {fmt_min(p.first):>7s} {fmt_min(p.base):>9s} {fmt_min(p.mid):>7s} "
        f"{fmt_min(p.last):>7s}",
    ]
    ts = [r["t_s"] for r in p.post]
    half = [r for r in p.post if r["t_s"] >= p.mid["t_s"]]
    for name in PROCS:
        k = f"{name}_rss_mb"
        base, end = p.base[k], p.last[k]
        peak = max(r[k] for r in p.post)
        slope = slope_per_hour(ts, [r[k] for r in p.post])
        slope2 = slope_per_hour([r["t_s"] for r in half], [r[k] for r in half])
        mid = p.mid[k]
        flat = slope2 < limit and abs(end - mid) <= max(0.05 * mid, 10.0)
        label = name if name in FLOWS else "feed*"
        out.append(
            f"{label:9s} {p.first[k]:7.1f} {base:9.1f} {mid:7.1f} {end:7.1f} "
            f"{peak:7.1f} {end - base:+9.1f} {slope:+10.2f} {slope2:+9.2f} "
            f"{p.last[f'{name}_anon_mb']:9.1f}  {'yes' if flat else 'NO'}"
        )
    out.append("   * the feed (simulator) is not a flow; shown because it is long-running too")
    return out


def report_state(p: Points) -> list[str]:
    out = [
        "\n2. Flow state: bytes of the newest snapshot of every state key (what the flow "
        "holds, pickled), KiB; for the archive, beyond its open bucket (the current "
        "minute's raw entries, shown in 'max total')",
        "   bounded = the floor (minimum) of the 2nd half of the post-warm-up samples within "
        "max(10%, 64 KiB) of the 1st half's floor:",
        "   state kept in proportion to the stream's length raises the floor; the feed's "
        "bursts and the sawtooth within each minute only move the peaks and medians",
        f"{'flow':9s} {'baseline':>9s} {'end':>9s} {'floor 1st':>9s} {'floor 2nd':>9s} "
        f"{'med 1st':>9s} {'med 2nd':>9s} {'max':>9s} {'max total':>9s} {'slope KiB/h':>11s} "
        f"{'snap rows':>9s} {'recovery MB':>12s}  bounded",
    ]
    ts = [r["t_s"] for r in p.post]
    half = len(p.post) // 2
    for name in FLOWS:
        k = f"{name}_held_bytes"
        ys = [r[k] / 1024 for r in p.post]
        total = max(r[f"{name}_state_bytes"] for r in p.post) / 1024
        first, second = ys[: max(1, half)], ys[half:]
        f1, f2 = min(first), min(second)
        m1, m2 = statistics.median(first), statistics.median(second)
        ok = f2 <= max(1.10 * f1, f1 + 64)
        r0, r1 = p.base[f"{name}_recovery_bytes"] / MB, p.last[f"{name}_recovery_bytes"] / MB
        rec = f"{r0:.1f} -> {r1:.1f}"
        out.append(
            f"{name:9s} {p.base[k] / 1024:9.1f} {p.last[k] / 1024:9.1f} {f1:9.1f} "
            f"{f2:9.1f} {m1:9.1f} {m2:9.1f} {max(ys):9.1f} {total:9.1f} "
            f"{slope_per_hour(ts, ys):+11.1f} {int(p.last[f'{name}_snap_rows']):9d} "
            f"{rec:>12s}  {'yes' if ok else 'NO'}"
        )
    return out


def report_redis(p: Points, args: argparse.Namespace, samples: list[dict[str, float]]) -> list[str]:
    """Redis by kind of key; flat or not over the last third of the run."""
    last = samples[-1]
    third = at(samples, last["t_s"] * 2 / 3)
    tail_rows = [r for r in samples if r["t_s"] >= third["t_s"]]
    out = [
        "\n3. Redis used_memory by kind of key (MEMORY USAGE, sampled), MB. Baseline = after "
        "the warm-up, same run.",
        "   flat = over the last third (every bound has filled by then in a --bounded run): "
        "end within max(5%, 2 MB) of the value at 2/3, and a slope under 5% of the end per "
        "hour (or 1 MB/h)",
        f"{'kind':14s} {'baseline':>9s} {'middle':>9s} {'at 2/3':>9s} {'end':>9s} "
        f"{'slope MB/h':>10s} {'last 1/3':>9s}  flat",
    ]
    ts = [r["t_s"] for r in p.post]
    t3 = [r["t_s"] for r in tail_rows]
    for kind in (*REDIS_KINDS, "used"):
        k = f"redis_{kind}_mb"
        s_all = slope_per_hour(ts, [r[k] for r in p.post])
        s_tail = slope_per_hour(t3, [r[k] for r in tail_rows])
        end, ref = last[k], third[k]
        flat = abs(end - ref) <= max(0.05 * ref, 2.0) and s_tail < max(0.05 * end, 1.0)
        out.append(
            f"{kind:14s} {p.base[k]:9.1f} {p.mid[k]:9.1f} {ref:9.1f} {end:9.1f} "
            f"{s_all:+10.1f} {s_tail:+9.1f}  {'yes' if flat else 'NO'}"
        )
    out.append(
        f"raw log length {int(p.base['raw_len']):,} -> {int(p.mid['raw_len']):,} -> "
        f"{int(p.last['raw_len']):,} (entries added {int(p.last['raw_added']):,}), "
        f"holding {p.base['raw_span_min']:.1f} -> {p.mid['raw_span_min']:.1f} -> "
        f"{p.last['raw_span_min']:.1f} min of stream ids (retention "
        f"{args.raw_retention_minutes:g} min behind the archive, plus the open bucket); "
        f"lake {p.last['lake_bytes'] / MB:.1f} MB"
    )
    out.append(
        f"streams at the end: DLQ {int(last['dlq_len']):,}, late {int(last['late_len']):,} "
        f"(cap {args.side_maxlen if args.side_maxlen is not None else 'default'}), "
        f"closed-candle events {int(last['closed_len']):,} "
        f"(cap {args.closed_maxlen if args.closed_maxlen is not None else 'default'}); "
        f"closed 1m candles held {int(last['candles_1m']):,}"
    )
    market_h = last["t_s"] * args.speed / 3600
    bounds = ", ".join(f"{k}={v}" for k, v in bounds_env(args).items()) or "defaults"
    out.append(f"market time covered {market_h:.1f} h (speed {args.speed:g}); bounds: {bounds}")
    if last["candles_1m"] > 0:
        # Candles per symbol and day over the six intervals: 1440+288+96+24+6+1.
        per_candle = last["redis_candles_mb"] * MB / (last["candles_1m"] * 1855 / 1440)
        per_day = per_candle * 1855 / MB
        out.append(
            f"closed candles cost {per_candle:,.0f} bytes each in Redis (hash field + index), "
            f"{per_day:.2f} MB per symbol and day of retention (1,855 candles over the six "
            "intervals)"
        )
    return out


FEED_LINE = re.compile(r"simulate: wrote (\d+) messages .*?((?:\w+=\d+ ?)+)$", re.M)


def lake_rows(lake: Path) -> tuple[int, int, int]:
    """Files, trade rows and reject rows in the lake."""
    import pyarrow.parquet as pq

    files = trades = rejects = 0
    for kind in ("trades", "rejects"):
        for f in (lake / kind).rglob("*.parquet"):
            if f.name.startswith("."):
                continue
            files += 1
            n = pq.read_metadata(f).num_rows
            if kind == "trades":
                trades += n
            else:
                rejects += n
    return files, trades, rejects


def report_counts(run: Run, elapsed: float, final: dict[str, Any]) -> list[str]:
    c = final["counts"]
    p_last = run.samples[-1]
    kinds = final["feed_kinds"]
    added = final["raw_added"]
    parts = sum(int(c.get(k, 0)) for k in ("trades", "duplicates", "late", "rejected"))
    out = [
        "\n4. Counts (the run was real)",
        f"feed: {final['feed_written']:,} messages in {elapsed / 60:.1f} min = "
        f"{final['feed_written'] / elapsed:,.0f}/s (target {run.args.rate:,.0f} trades/s + "
        f"faults); by kind: {kinds}",
        f"raw log: {added:,} entries added, {final['raw_len']:,} left after trimming",
        "candles flow: "
        + ", ".join(
            f"{k} {int(v):,}"
            for k, v in sorted(c.items())
            if not k.startswith(("rejected:", "last_id"))
        ),
        f"  entries = trades + duplicates + late + rejected + marks: "
        f"{int(c.get('entries', 0)):,} = {parts + int(c.get('marks', 0)):,}",
        f"streams: DLQ {final['dlq_len']:,}, late {final['late_len']:,}, closed-candle "
        f"events {final['closed_len']:,} ({final['closed_1m']:,} closed 1m candles stored)",
        f"metrics flow: {final['metrics_in']:,} events read, {final['metrics_out']:,} records "
        "written",
        f"archive flow: {final['lake'][0]:,} lake files, {final['lake'][1]:,} trade rows + "
        f"{final['lake'][2]:,} reject rows = {final['lake'][1] + final['lake'][2]:,} of "
        f"{added:,} entries (the open bucket stays in the snapshot at a stop)",
    ]
    dur = p_last["t_s"] - run.samples[0]["t_s"]
    cpu = ", ".join(
        f"{n} {(p_last[f'{n}_cpu_s'] - run.samples[0][f'{n}_cpu_s']) / dur * 100:.0f}%"
        for n in PROCS
    )
    lag = ", ".join(f"{n} max {max(r[f'{n}_lag_ms'] for r in run.samples):,} ms" for n in FLOWS)
    out.append(f"CPU (share of one core): {cpu}; lag behind the raw log's tip: {lag}")
    return out


def final_counts(run: Run) -> dict[str, Any]:
    cl = run.client
    counts = {k.decode(): v.decode() for k, v in cl.hgetall(counts_key("candles", RAW)).items()}
    feed_log = run.procs.child("feed").log_path.read_text(errors="replace")
    m = FEED_LINE.search(feed_log)
    written, kinds = (int(m.group(1)), m.group(2).strip()) if m else (-1, "(no summary)")
    x = cl.xinfo_stream(RAW)
    closed_1m = sum(cl.hlen(k) for k in cl.scan_iter(series_key("*", "*", "1m")))
    hb = {n: cl.hgetall(heartbeat_key(n)) for n in FLOWS}
    return {
        "counts": {k: v for k, v in counts.items() if k not in ("watermark",)},
        "feed_written": written,
        "feed_kinds": kinds,
        "raw_added": x["entries-added"],
        "raw_len": x["length"],
        "dlq_len": cl.xlen(DLQ_STREAM),
        "late_len": cl.xlen(LATE_STREAM),
        "closed_len": cl.xlen(CLOSED_EVENTS_STREAM),
        "closed_1m": closed_1m,
        "metrics_in": int(hb["metrics"].get(b"items_in", 0)),
        "metrics_out": int(hb["metrics"].get(b"items_out", 0)),
    }


# ---- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1000.0, help="trades/s (default 1000)")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up minutes (default 2)")
    p.add_argument("--raw-retention-minutes", type=float, default=10.0)
    p.add_argument(
        "--archive-bucket-ms",
        type=int,
        default=None,
        help="CRYPTOPIPE_ARCHIVE_BUCKET_MS of the archive flow (default: the flow's, 60000)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="market time runs this many times the wall clock (default 1); the run starts "
        "that much before now, so it ends at about now",
    )
    p.add_argument(
        "--candle-retention-ms",
        type=int,
        default=None,
        help="CRYPTOPIPE_CANDLE_RETENTION_MS (default: the production default, 7 days)",
    )
    p.add_argument("--side-maxlen", type=int, default=None, help="CRYPTOPIPE_SIDE_STREAM_MAXLEN")
    p.add_argument(
        "--closed-maxlen", type=int, default=None, help="CRYPTOPIPE_CLOSED_EVENTS_MAXLEN"
    )
    p.add_argument("--dedupe-ms", type=int, default=None, help="CRYPTOPIPE_APPEND_DEDUPE_MS")
    p.add_argument(
        "--bounded",
        action="store_true",
        help="every Redis bound short enough to fill within the run: --speed 24, the "
        "shortest candle retention allowed, side streams 10,000, closed-candle events "
        "100,000, append dedupe 30 min (each unless given)",
    )
    p.add_argument("--out-of-order", type=float, default=0.02)
    p.add_argument("--duplicates", type=float, default=0.01)
    p.add_argument("--late", type=float, default=0.001)
    p.add_argument("--malformed", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="CSV of the samples")
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temp)")
    p.add_argument("--keep", action="store_true", help="keep Redis data, lake and recovery")
    a = p.parse_args(argv)
    if a.bounded:
        from marketdata.settings import DEFAULT_LATENESS_MS, min_candle_retention_ms

        if a.speed == 1.0:
            a.speed = 24.0
        if a.candle_retention_ms is None:
            a.candle_retention_ms = min_candle_retention_ms(DEFAULT_LATENESS_MS)
        a.side_maxlen = 10_000 if a.side_maxlen is None else a.side_maxlen
        a.closed_maxlen = 100_000 if a.closed_maxlen is None else a.closed_maxlen
        a.dedupe_ms = 1_800_000 if a.dedupe_ms is None else a.dedupe_ms
    if a.speed <= 0:
        p.error("--speed must be positive")
    if a.minutes <= a.warmup:
        p.error(f"--minutes must be longer than the warm-up ({a.warmup} min)")
    if not 1 <= a.symbols <= 100:
        p.error("--symbols: 1 to 100")
    return a


def install_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM/SIGHUP end the soak (once); returns a function that restores them."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def handler(signum: int, _frame: object) -> None:
        if not stop.is_set():
            print(f"\n{signal.Signals(signum).name}: stopping (the report follows)", flush=True)
        stop.set()

    for s in old:
        if s != signal.SIGHUP or old[s] is not signal.SIG_IGN:  # keep nohup's
            signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cryptopipe.localredis import LocalRedis, free_port
    from redisstore.conn import connect

    work = args.dir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out = args.out or work / "soak.csv"
    home = work / "home"
    (work / "logs").mkdir(exist_ok=True)
    stop = threading.Event()
    restore = install_signals(stop)
    syms = symbols(args.symbols)
    bucket = f", archive bucket {args.archive_bucket_ms} ms" if args.archive_bucket_ms else ""
    print(
        f"soak: {args.minutes:g} min at {args.rate:,.0f} trades/s over {len(syms)} symbols, "
        f"market time at {args.speed:g}x, bounds {bounds_env(args) or 'default'}, "
        f"samples every {args.interval:g} s, warm-up {args.warmup:g} min, raw-log retention "
        f"{args.raw_retention_minutes:g} min{bucket}; work dir {work}",
        flush=True,
    )
    server = LocalRedis(work / "redis", free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("CRYPTOPIPE_SYMBOLS", None)
    procs = ProcessGroup(work / "logs", env=env, cwd=ROOT, die_with_parent=True)
    run: Run | None = None
    drained = 0.0
    final: dict[str, Any] | None = None
    elapsed = 0.0
    status = 0
    try:
        server.start()
        client = connect(server.url)
        run = Run(
            args=args,
            work=work,
            url=server.url,
            home=home,
            procs=procs,
            client=client,
            stop=stop,
        )
        start(run, syms)
        soak(run)
        elapsed = time.monotonic() - run.t0
        print("stopping the feed; letting the flows drain the raw log", flush=True)
        procs.stop("feed", timeout=20.0)
        if run.died is None:
            drained = drain(run)
            final = final_counts(run)
    except Exception as exc:  # report what we have, then clean up
        print(f"soak failed: {exc}", flush=True)
        status = 1
    finally:
        for name in ("candles", "metrics", "archive"):
            code = procs.stop(name, timeout=20.0)
            if code not in (None, 0, -signal.SIGTERM):
                print(f"  {name} exited with {code} at the stop; log {procs.child(name).log_path}")
        procs.stop_all(timeout=20.0)
        server.stop()
        restore()
    if run is not None and run.died:
        print(f"\nA PROCESS DIED: {run.died}")
        status = 1
    if run is not None and len(run.samples) >= 3:
        p = points(run.samples, args.warmup * 60)
        lines = report_rss(p, args.rate) + report_state(p) + report_redis(p, args, run.samples)
        if final is not None:
            final["lake"] = lake_rows(home / "lake")
            lines += report_counts(run, elapsed, final)
        n, minutes = len(run.samples), run.samples[-1]["t_s"] / 60
        lines.append(
            f"\n{n} samples over {minutes:.1f} min (drain after the feed stopped: "
            f"{drained:.1f} s); CSV {args.out}"
        )
        print("\n".join(lines))
        if p.last["t_s"] - p.base["t_s"] < 600:
            print(
                "note: under ~10 minutes after the warm-up, slopes are noisy; the verdicts "
                "are for a long run"
            )
    if not args.keep:
        for sub in ("redis", "home"):
            shutil.rmtree(work / sub, ignore_errors=True)
    print(f"logs in {work / 'logs'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
