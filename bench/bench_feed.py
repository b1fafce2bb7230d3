"""Benchmark of ``cryptopipe feed replay --speed max``. Not a test: run it by hand.

    .venv/bin/python bench/bench_feed.py                  # ~5 minutes
    .venv/bin/python bench/bench_feed.py --trades 200000 --rounds 1 --redis aof

Generates two recordings of ``--trades`` trades each (default 1,000,000,
deterministic): a Binance spot trade dump (``BTCUSDT-trades-2025-03-14.csv``, µs
times, as ``data.binance.vision`` publishes them) and a websocket capture
(``binance-ws`` JSON lines, canonical ``@trade`` messages of four symbols). Then, for
each local redis-server on a free port (``aof``: as ``cryptopipe up`` starts it,
AOF with ``appendfsync everysec``; ``plain``: no persistence), it times whole
``cryptopipe feed replay FILE --format F --speed max`` processes of

* ``before``: the replay as it was before chunked writes, the project's own code at
  ``--baseline`` (default: the commit before them), from ``git archive`` into a
  temporary directory, run with the same Python;
* ``now``: this working tree;

alternately, ``--rounds`` times each, on an emptied Redis, and prints the best round
of each: seconds of the whole process (interpreter start-up included), trades/s over
it, trades/s of the replay itself as the command reports it (``now`` only: the
baseline's summary line had no time), and the ratio. After the last round of each
it compares the raw log's entries of the two: every field but ``recv_ms`` (the wall
clock), in order, and the last progress mark's time; any difference fails the run.
``redis-benchmark`` (when installed) gives the server's own ceiling for the same
``XADD`` from a C client, for comparison. The load average before and after is
printed: on a shared 2-core machine other work slows both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from cryptopipe.localredis import LocalRedis, free_port  # noqa: E402
from marketdata.rawmessage import F_MARK, F_RECV  # noqa: E402
from redisstore.keys import RAW_STREAM  # noqa: E402

#: The commit before chunked replay writes: the baseline.
BASELINE = "626d7dd470f8360ebde704b9f491c203688c335d"
TARGET = 300_000  # trades/s of the replay, issue 18
T0_US = 1_741_910_400_000_000  # 2025-03-14T00:00:00Z in µs
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
REDIS_ARGS = {"aof": [], "plain": ["--appendonly", "no"]}
FORMATS = {"csv": "binance-csv", "ws": "binance-ws"}


# ---- data ---------------------------------------------------------------------------


def csv_rows(n: int, seed: int = 1) -> Iterator[str]:
    """A spot trade dump: ``id,price,qty,quoteQty,time(µs),isBuyerMaker,isBestMatch``."""
    rng = random.Random(seed)
    price, t = 8_400_000, T0_US
    for i in range(n):
        t += rng.randrange(0, 160_000)
        price += rng.randrange(-50, 51)
        qty = rng.randrange(1, 10**8)
        quote = price * qty // 100  # 1e-8 units
        maker = "true" if rng.random() < 0.5 else "false"
        yield (
            f"{5_000_000_000 + i},{price // 100}.{price % 100:02d}000000,0.{qty:08d},"
            f"{quote // 10**8}.{quote % 10**8:08d},{t},{maker},true\n"
        )


def ws_rows(n: int, seed: int = 2) -> Iterator[str]:
    """A websocket capture: canonical ``@trade`` messages of four symbols, one a line."""
    rng = random.Random(seed)
    t = T0_US // 1000
    for i in range(n):
        t += rng.randrange(0, 160)
        price = rng.randrange(10**12, 10**13)
        qty = rng.randrange(1, 10**8)
        maker = "true" if rng.random() < 0.5 else "false"
        yield (
            f'{{"e":"trade","E":{t + 2},"s":"{SYMBOLS[i % 4]}","t":{4_000_000_000 + i},'
            f'"p":"{price // 10**8}.{price % 10**8:08d}","q":"0.{qty:08d}","T":{t},'
            f'"m":{maker},"M":true}}\n'
        )


def write_lines(path: Path, rows: Iterator[str]) -> None:
    """Write ``rows`` to ``path``, 100,000 at a time."""
    with path.open("w") as f:
        while batch := list(islice(rows, 100_000)):
            f.write("".join(batch))


# ---- runs ---------------------------------------------------------------------------


def replay(tree: Path, url: str, path: Path, fmt: str) -> tuple[float, float | None]:
    """Whole-process seconds of one replay, and the replay's own seconds when it says."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "cryptopipe", "feed", "replay", str(path), "--format", fmt]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--speed", "max", "--redis-url", url],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        msg = f"{' '.join(cmd)} failed with {proc.returncode}"
        raise SystemExit(msg)
    said = re.search(r" in ([0-9.]+) s \(", proc.stdout)
    return took, float(said.group(1)) if said else None


def digest(client: redis.Redis) -> tuple[str, int, int | None]:
    """The raw log's messages (every field but ``recv_ms``, in order) as one hash, how
    many, and the last progress mark's time."""
    h = hashlib.sha256()
    n, last_mark, start = 0, None, "-"
    while batch := client.xrange(RAW_STREAM, start, "+", count=50_000):
        for _, fields in batch:
            if F_MARK in fields:
                last_mark = int(fields[F_MARK])
                continue
            n += 1
            for k, v in fields.items():
                if k != F_RECV:
                    h.update(b"%d:%s%d:%s" % (len(k), k, len(v), v))
            h.update(b";")
        start = "(" + batch[-1][0].decode()
    return h.hexdigest(), n, last_mark


def empty(client: redis.Redis) -> None:
    """FLUSHALL, and the AOF rewritten (so it does not grow by every round's entries)."""
    client.flushall()
    if client.config_get("appendonly").get(b"appendonly") == b"yes":
        client.bgrewriteaof()
        while int(client.info("persistence")["aof_rewrite_in_progress"]) or int(
            client.info("persistence")["aof_rewrite_scheduled"]
        ):
            time.sleep(0.05)
    time.sleep(0.5)


def redis_ceiling(port: int, payload: str, fmt: str) -> float | None:
    """What redis-benchmark (a C client, 1,000 commands a pipeline) gets for such XADDs."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    fields = [
        "bench:ceiling",
        "*",
        "payload",
        payload,
        "exchange",
        "binance",
        "recv_ms",
        "1741910400000",
    ]
    if fmt != "binance-ws":
        fields += ["format", fmt]
    fields += ["symbol", "BTCUSDT"]
    out = subprocess.run(
        [exe, "-p", str(port), "-P", "1000", "-c", "1", "-n", "1000000", "-q", "XADD", *fields],
        capture_output=True,
        text=True,
    ).stdout
    found = re.findall(r"([0-9.]+) requests per second", out)
    return float(found[-1]) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=1_000_000, help="trades per file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="csv,ws", help="csv, ws or both")
    parser.add_argument("--redis", default="aof,plain", help="aof, plain or both")
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the baseline")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-feed-"))
    work.mkdir(parents=True, exist_ok=True)
    before = work / "before"
    if not before.exists():
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    trees = {"before": before, "now": ROOT}
    files = {"csv": work / "BTCUSDT-trades-2025-03-14.csv", "ws": work / "trades.jsonl"}
    formats = [f for f in args.formats.split(",") if f]
    t = time.monotonic()
    for kind in formats:
        if not files[kind].exists():
            write_lines(files[kind], (csv_rows if kind == "csv" else ws_rows)(args.trades))
    mb = sum(files[k].stat().st_size for k in formats) / 1e6
    made = time.monotonic() - t
    print(f"data: {args.trades:,} trades a file ({mb:,.0f} MB) in {work} [{made:.1f} s]")
    load0 = os.getloadavg()
    results: list[tuple[str, str, str, float, float | None, float | None]] = []
    same = True
    try:
        for config in [c for c in args.redis.split(",") if c]:
            server = LocalRedis(
                work / f"redis-{config}", free_port(), extra_args=REDIS_ARGS[config]
            )
            server.start()
            client = redis.Redis.from_url(server.url)
            try:
                for kind in formats:
                    fmt = FORMATS[kind]
                    best: dict[str, tuple[float, float | None]] = {}
                    digests = {}
                    for _ in range(args.rounds):
                        for name, tree in trees.items():
                            empty(client)
                            whole, own = replay(tree, server.url, files[kind], fmt)
                            if name not in best or whole < best[name][0]:
                                best[name] = (whole, own)
                            digests[name] = digest(client)
                    with files[kind].open("rb") as f:
                        first = f.readline().rstrip(b"\n").decode()
                    client.flushall()
                    ceiling = redis_ceiling(server.port, first, fmt)
                    for name in trees:
                        results.append((config, fmt, name, *best[name], ceiling))
                    ok = digests["before"] == digests["now"] and digests["now"][1] == args.trades
                    same = same and ok
                    print(
                        f"{config} {fmt}: raw log entries identical to the baseline's: "
                        f"{'yes' if ok else 'NO'} ({digests['now'][1]:,} messages, last mark "
                        f"{digests['now'][2]} / {digests['before'][2]})",
                        flush=True,
                    )
            finally:
                client.close()
                server.stop()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()

    print()
    head = f"{'redis':<6} {'format':<12} {'replay':<7} {'seconds':>8} {'trades/s':>10}"
    print(head + f" {'replay trades/s':>16} {'x before':>9} {'redis-benchmark':>16}")
    base: dict[tuple[str, str], float] = {}
    verdicts = []
    for config, fmt, name, whole, own, ceiling in results:
        if name == "before":
            base[config, fmt] = whole
        rate = args.trades / whole
        own_rate = f"{args.trades / own:16,.0f}" if own else f"{'-':>16}"
        ratio = base[config, fmt] / whole
        ceil = f"{ceiling:16,.0f}" if ceiling else f"{'-':>16}"
        row = f"{config:<6} {fmt:<12} {name:<7} {whole:8.2f} {rate:10,.0f} {own_rate}"
        print(f"{row} {ratio:9.2f} {ceil}")
        if name == "now":
            met = own is not None and args.trades / own >= TARGET
            verdicts.append(f"{config} {fmt} {'met' if met else 'NOT met'}")
    print()
    print(
        "seconds: the whole process, best of "
        f"{args.rounds}; replay trades/s: as the command reports it (start-up excluded)"
    )
    print("redis-benchmark: the same XADD from a C client, 1,000 a pipeline (the server's ceiling)")
    print(
        f"machine: {os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} -> "
        f"{load1[0]:.2f} {load1[1]:.2f} (shared machine: other work slows both sides)"
    )
    print(f"target >= {TARGET:,} replay trades/s: {', '.join(verdicts)}")
    print(f"same raw-log entries as the baseline: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
