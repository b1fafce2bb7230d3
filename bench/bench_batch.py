"""Benchmark: ``cryptopipe batch run`` (PySpark, whole process) vs DuckDB, same candles.

Not a test. Generates three Binance-format daily dumps (BTCUSDT, ETHUSDT, SOLUSDT,
``--rows`` trades each, deterministic), loads them with ``cryptopipe lake import``,
then times in one run:

* ``cryptopipe batch run --date D`` as a whole process (Python start, JVM start,
  Spark job, Parquet writes): candles of every interval and the daily aggregates;
* the same with ``--dedup always`` (the deduplication shuffle even though the
  lake's trade-id index proves there is nothing to remove);
* the same, twice, against a local Spark Connect server (:mod:`batch.connect_server`)
  started and warmed up before (what ``cryptopipe up --spark-connect`` gives
  Dagster's batch runs);
* DuckDB computing the same candles (dedupe, exact 1m candles with (event_time,
  trade_id) order, roll-ups to 5m .. 1d, half-even VWAP) straight from the CSV
  files, written to Parquet.

Then it checks that DuckDB's candles equal the batch layer's, row for row.

    .venv/bin/python bench/bench_batch.py [--rows 2000000] [--workdir DIR] [--keep]

DuckDB is a benchmark-only dependency (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lake.arrow import decimal_unscaled  # noqa: E402
from marketdata.interval import Interval  # noqa: E402

DAY = "2025-03-14"
DAY_START_MS = 1_741_910_400_000
SYMBOLS = {  # symbol: (start price, price tick, quantity tick), in 1e-8 units
    "BTCUSDT": (84_000 * 10**8, 10**6, 10**3),
    "ETHUSDT": (1_900 * 10**8, 10**6, 10**4),
    "SOLUSDT": (130 * 10**8, 10**6, 10**5),
}
TARGET_RATIO = 4.0  # the whole local batch run process
TARGET_CONNECT_RATIO = 2.0  # the batch run against a warm Connect server
TARGET_SECONDS = 60.0


# --------------------------------------------------------------------------- data


def _e8_text(values: np.ndarray) -> pa.Array:
    whole = pa.array(values // 10**8).cast(pa.string())
    frac = pc.utf8_lpad(pa.array(values % 10**8).cast(pa.string()), 8, "0")
    return pc.binary_join_element_wise(whole, frac, ".")


def generate_dump(path: Path, symbol: str, rows: int, seed: int) -> None:
    """One day of trades in Binance's dump format (microsecond times, no header)."""
    price0, tick, qtick = SYMBOLS[symbol]
    rng = np.random.default_rng(seed)
    trade_id = np.arange(rows, dtype=np.int64) + 3_000_000_000 + seed * 10**9
    steps = rng.integers(-3, 4, rows) * tick
    price = np.maximum(price0 + np.cumsum(steps), tick)
    qty = (rng.geometric(0.002, rows).astype(np.int64)) * qtick
    t_us = DAY_START_MS * 1000 + np.sort(rng.integers(0, 86_400_000_000, rows))
    maker = rng.random(rows) < 0.5
    quote = (price // 10**4) * (qty // 10**4) // 10**8  # what Binance shows; ignored
    cols = [
        pa.array(trade_id).cast(pa.string()),
        _e8_text(price),
        _e8_text(qty),
        _e8_text(quote),
        pa.array(t_us).cast(pa.string()),
        pc.if_else(pa.array(maker), "True", "False"),
        pa.array(np.full(rows, "True")),
    ]
    lines = pc.binary_join_element_wise(*cols, ",").cast(pa.binary())
    with path.open("wb") as f:
        chunk = 500_000
        for i in range(0, rows, chunk):
            part = lines.slice(i, chunk).to_pylist()
            f.write(b"\n".join(part) + b"\n")


# --------------------------------------------------------------------------- duckdb

DUCKDB_SQL = """
WITH raw AS (
    SELECT * FROM read_csv({files}, header = false, filename = true, delim = ',',
        quote = '', escape = '', auto_detect = false,
        columns = {'trade_id': 'BIGINT', 'price': 'DECIMAL(18,8)', 'qty': 'VARCHAR',
                   'quote': 'VARCHAR', 't': 'BIGINT', 'maker': 'BOOLEAN', 'best': 'VARCHAR'})
),
trades AS (  -- exact integers of 1e-8 units; quantities up to 10^12 need HUGEINT
    SELECT 'binance' AS exchange,
           split_part(parse_filename(filename), '-', 1) AS symbol,
           trade_id,
           CAST(CAST(price AS DECIMAL(38,8)) * 100000000 AS BIGINT) AS p,
           -- parsing DECIMAL(20,8) directly is slow in DuckDB; 18 digits cover real data
           CAST(CAST(COALESCE(TRY_CAST(qty AS DECIMAL(18,8)), CAST(qty AS DECIMAL(20,8)))
                     AS DECIMAL(38,8)) * 100000000 AS HUGEINT) AS q,
           CASE WHEN t >= 100000000000000 THEN t // 1000 ELSE t END AS event_time,
           maker
    FROM raw
),
uniq AS (
    SELECT exchange, symbol, trade_id, any_value(p) AS p, any_value(q) AS q,
           any_value(event_time) AS event_time, any_value(maker) AS maker
    FROM trades GROUP BY exchange, symbol, trade_id
),
m1 AS (
    SELECT exchange, symbol, event_time - event_time % 60000 AS open_time,
           arg_min(p, {'t': event_time, 'id': trade_id}) AS open_e8,
           max(p) AS high_e8, min(p) AS low_e8,
           arg_max(p, {'t': event_time, 'id': trade_id}) AS close_e8,
           sum(q) AS volume_e8, sum(p * q) AS quote_e16, count(*) AS trade_count,
           sum(CASE WHEN NOT maker THEN q ELSE 0 END) AS taker_e8,
           min({'t': event_time, 'id': trade_id}) AS first_key,
           max({'t': event_time, 'id': trade_id}) AS last_key
    FROM uniq GROUP BY ALL
),
coarse AS (
    SELECT m1.*, iv.label, iv.ms FROM m1,
        (VALUES ('5m', 300000), ('15m', 900000), ('1h', 3600000), ('4h', 14400000),
                ('1d', 86400000)) AS iv(label, ms)
),
rolled AS (
    SELECT label AS interval, exchange, symbol, open_time - open_time % ms AS open_time,
           arg_min(open_e8, first_key) AS open_e8, max(high_e8) AS high_e8,
           min(low_e8) AS low_e8, arg_max(close_e8, last_key) AS close_e8,
           sum(volume_e8) AS volume_e8, sum(quote_e16) AS quote_e16,
           sum(trade_count) AS trade_count, sum(taker_e8) AS taker_e8,
           min(first_key) AS first_key, max(last_key) AS last_key
    FROM coarse GROUP BY ALL
),
candles AS (
    SELECT '1m' AS interval, * FROM m1
    UNION ALL
    SELECT * FROM rolled
)
SELECT interval, exchange, symbol, open_time, open_e8, high_e8, low_e8, close_e8,
       -- HUGEINT would go to Parquet as DOUBLE: keep it exact
       CAST(volume_e8 AS DECIMAL(38,0)) AS volume_e8, CAST(quote_e16 AS DECIMAL(38,0)) AS quote_e16,
       trade_count, CAST(taker_e8 AS DECIMAL(38,0)) AS taker_e8,
       -- VWAP half-even in integers: DuckDB's ROUND is half away from zero
       CAST(quote_e16 // volume_e8 + CASE
           WHEN 2 * (quote_e16 % volume_e8) > volume_e8 THEN 1
           WHEN 2 * (quote_e16 % volume_e8) = volume_e8 AND (quote_e16 // volume_e8) % 2 = 1
               THEN 1
           ELSE 0 END AS BIGINT) AS vwap_e8,
       first_key.id AS first_trade_id, last_key.id AS last_trade_id,
       first_key.t AS first_event_time, last_key.t AS last_event_time
FROM candles
"""

COMPARED = [
    "interval",
    "exchange",
    "symbol",
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "taker_buy_volume",
    "vwap",
    "first_trade_id",
    "last_trade_id",
    "first_event_time",
    "last_event_time",
]


def run_duckdb(files: list[Path], out: Path, threads: int) -> None:
    """DuckDB: the candles from the CSV files, written to one Parquet file."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    sql = DUCKDB_SQL.replace("{files}", "[" + ", ".join(f"'{f}'" for f in files) + "]")
    con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
    con.close()


def duckdb_rows(path: Path) -> list[tuple[object, ...]]:
    t = ds.dataset(path).to_table()
    names = {
        "open_e8": "open",
        "high_e8": "high",
        "low_e8": "low",
        "close_e8": "close",
        "volume_e8": "volume",
        "quote_e16": "quote_volume",
        "taker_e8": "taker_buy_volume",
        "vwap_e8": "vwap",
    }
    cols = {
        names.get(n, n): [int(v) if isinstance(v, Decimal) else v for v in t.column(n).to_pylist()]
        for n in t.column_names
    }
    return sorted(zip(*(cols[c] for c in COMPARED), strict=True))


def batch_rows(lake: Path) -> list[tuple[object, ...]]:
    t = ds.dataset(lake / "candles" / "source=batch", partitioning="hive").to_table()
    cols = {}
    for name in COMPARED:
        col = t.column(name)
        if pa.types.is_decimal(col.type):
            cols[name] = decimal_unscaled(col)
        elif pa.types.is_dictionary(col.type):
            cols[name] = [str(v) for v in col.to_pylist()]
        else:
            cols[name] = col.to_pylist()
    return sorted(zip(*(cols[c] for c in COMPARED), strict=True))


# --------------------------------------------------------------------------- main


def timed_cli(args: list[str], home: Path, **extra: str) -> tuple[float, str]:
    env = dict(os.environ, CRYPTOPIPE_HOME=str(home), **extra)
    env.pop("CRYPTOPIPE_LAKE_URI", None)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cryptopipe", *args], env=env, capture_output=True, text=True
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        msg = f"cryptopipe {' '.join(args)} failed with {proc.returncode}"
        raise SystemExit(msg)
    return elapsed, proc.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="trades per file")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    try:
        files = []
        t = time.monotonic()
        for seed, symbol in enumerate(SYMBOLS, start=1):
            path = work / f"{symbol}-trades-{DAY}.csv"
            if not path.exists():
                generate_dump(path, symbol, args.rows, seed)
            files.append(path)
        gen_s = time.monotonic() - t
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"data: 3 files x {args.rows:,} trades ({size_mb:,.0f} MB) in {work} [{gen_s:.1f} s]",
            flush=True,
        )
        if home.exists():
            shutil.rmtree(home)
        load0 = os.getloadavg()[0]
        import_s, _ = timed_cli(["lake", "import", *map(str, files)], home)
        batch_s, batch_out = timed_cli(["batch", "run", "--date", DAY], home)
        local_rows = batch_rows(home / "lake")
        dedup_s, _ = timed_cli(["batch", "run", "--date", DAY, "--dedup", "always"], home)
        warm_up_s, connect_first_s, connect_s = connect_runs(home, work)
        duck_out = work / "duckdb-candles.parquet"
        t = time.monotonic()
        run_duckdb(files, duck_out, args.threads)
        duck_s = time.monotonic() - t
        load1 = os.getloadavg()[0]
        duck_rows = duckdb_rows(duck_out)
        # Both sides' candles: the local run's, and the Connect runs' that replaced them.
        same = local_rows == duck_rows == batch_rows(home / "lake")
        n = ds.dataset(duck_out).count_rows()

        rows = [
            ("cryptopipe lake import (3 files)", import_s, None),
            ("cryptopipe batch run (whole process)", batch_s, batch_s / duck_s),
            ("  same, --dedup always", dedup_s, dedup_s / duck_s),
            ("Connect server: its warm-up (once, at its start)", warm_up_s, None),
            ("batch run, Connect server: first run", connect_first_s, connect_first_s / duck_s),
            ("batch run, Connect server: second run", connect_s, connect_s / duck_s),
            (f"DuckDB {duckdb_version()} from the CSVs ({args.threads} threads)", duck_s, 1.0),
        ]
        print()
        print(f"{'step':<48} {'seconds':>8} {'x DuckDB':>9}")
        for name, secs, ratio in rows:
            r = "" if ratio is None else f"{ratio:9.2f}"
            print(f"{name:<48} {secs:8.2f} {r:>9}")
        print()
        print(f"batch run said: {batch_out}")
        print(
            f"candles identical to DuckDB's (local and Connect runs): {'yes' if same else 'NO'} "
            f"({n:,} rows, "
            f"{len(list(Interval))} intervals)"
        )
        print(
            f"machine: {os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f} "
            "(shared machine: other work inflates both sides)"
        )
        ok = (
            batch_s <= TARGET_RATIO * duck_s
            and max(connect_first_s, connect_s) <= TARGET_CONNECT_RATIO * duck_s
            and batch_s < TARGET_SECONDS
            and same
        )
        print(
            f"target (batch run <= {TARGET_RATIO:g}x DuckDB, on a warm Connect server <= "
            f"{TARGET_CONNECT_RATIO:g}x, < {TARGET_SECONDS:g} s, same candles): "
            f"{'met' if ok else 'NOT met'}"
        )
        return 0 if ok else 1
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def connect_runs(home: Path, work: Path) -> tuple[float, float, float]:
    """A Connect server started here and warmed up (as ``up`` does); ``batch run`` twice.

    Returns the warm-up's seconds and both runs'.
    """
    from batch.connect_server import ConnectServer
    from cryptopipe.localredis import free_port

    with ConnectServer(free_port(), work / "connect-server.log") as server:
        t = time.monotonic()
        server.warm_up()
        warm_up_s = time.monotonic() - t
        argv = ["batch", "run", "--date", DAY]
        first, _ = timed_cli(argv, home, CRYPTOPIPE_SPARK_MASTER=server.url)
        second, _ = timed_cli(argv, home, CRYPTOPIPE_SPARK_MASTER=server.url)
    return warm_up_s, first, second


def duckdb_version() -> str:
    import duckdb

    return str(duckdb.__version__)


if __name__ == "__main__":
    sys.exit(main())
