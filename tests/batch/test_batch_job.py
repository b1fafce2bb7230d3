"""The daily Spark job against an independent reference (marketdata.candle.fold_trades).

Generated days carry duplicates (within and across files), rows out of event-time
order, rejected rows, trades sharing an event time, trades on window and day
boundaries, and VWAP ties in both rounding directions.
"""

from __future__ import annotations

import itertools
import math
import random
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from pyspark.sql import SparkSession

from batch.daily import NoTradesError, day_files, run_batch_day
from batch.dump_import import import_dump
from cryptopipe.cli import main
from lake.candles import read_aggregates, read_batch_candles
from lake.layout import Lake, SourceRange
from lake.writer import LakeWriter
from marketdata.candle import Candle, dedupe, fold_trades
from marketdata.decimals import decimal_to_e8, div_half_even, format_e8, format_e16
from marketdata.interval import Interval
from marketdata.timeutil import DAY_MS, day_start_ms
from marketdata.trade import Rejection, Trade

DAY = date(2025, 3, 14)
D0 = day_start_ms(DAY)
TIE_MINUTE = D0 + 600 * 60_000  # 10:00


def generate_trades(seed: int, per_key: int = 400) -> list[Trade]:
    """Valid trades of one day, in event-time order per key (shuffled later)."""
    rng = random.Random(seed)
    out: list[Trade] = []
    for ex in ("binance", "kraken"):
        for sym in ("BTCUSDT", "ETHUSDT"):
            tid = rng.randrange(10**6, 10**9)
            price = rng.randrange(10**12, 10**13)
            # A few busy minutes (many trades per window) and a sparse rest.
            busy = [rng.randrange(5) * 60_000 + rng.randrange(60_000) for _ in range(per_key)]
            times = sorted(D0 + rng.choice([rng.randrange(DAY_MS), b]) for b in busy)
            times[0], times[-1] = D0, D0 + DAY_MS - 1  # the day's first and last ms
            for i, t in enumerate(times):
                if i and rng.random() < 0.1:
                    t = times[i - 1]  # same ms as the previous trade: trade id decides
                    times[i] = t
                tid += rng.choice((1, 1, 1, 2, 7))
                price = max(1, price + rng.randrange(-(10**9), 10**9))
                qty = rng.randrange(1, 10**10)
                out.append(
                    Trade(
                        exchange=ex,
                        symbol=sym,
                        trade_id=tid,
                        price_e8=price,
                        quantity_e8=qty,
                        event_time=t,
                        is_buyer_maker=rng.random() < 0.5,
                    )
                )
    # VWAP ties at 8 digits: (1.00000001 + 1.00000002) / 2 rounds up to ...02 (even),
    # (1.00000000 + 1.00000001) / 2 rounds down to ...00 (even); half-up would not.
    out += [
        Trade(
            exchange="binance",
            symbol="TIEUSDT",
            trade_id=1,
            price_e8=100_000_001,
            quantity_e8=1,
            event_time=TIE_MINUTE + 5,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="TIEUSDT",
            trade_id=2,
            price_e8=100_000_002,
            quantity_e8=1,
            event_time=TIE_MINUTE + 5,
            is_buyer_maker=True,
        ),
        Trade(
            exchange="binance",
            symbol="TIEUSDT",
            trade_id=3,
            price_e8=100_000_000,
            quantity_e8=1,
            event_time=TIE_MINUTE + 60_000,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="TIEUSDT",
            trade_id=4,
            price_e8=100_000_001,
            quantity_e8=1,
            event_time=TIE_MINUTE + 119_999,
            is_buyer_maker=False,
        ),
    ]
    return out


def csv_line(t: Trade) -> bytes:
    return b"%d,%s,%s,0,%d,%s,True" % (
        t.trade_id,
        format_e8(t.price_e8).encode(),
        format_e8(t.quantity_e8).encode(),
        t.event_time * 1000,  # Binance dumps since 2025: microseconds
        b"True" if t.is_buyer_maker else b"False",
    )


def write_day(lake: Lake, tmp_path: Path, trades: list[Trade], seed: int) -> list[Trade]:
    """Spread trades over archive-style files and an imported dump, with duplicates.

    Returns every valid trade row stored (duplicates included): the reference input.
    """
    rng = random.Random(seed)
    dumped = [t for t in trades if t.symbol == "ETHUSDT" and t.exchange == "binance"]
    rest = [t for t in trades if (t.symbol, t.exchange) != ("ETHUSDT", "binance")]
    rng.shuffle(rest)  # out of event-time order within and across files
    half = len(rest) // 2
    dup_a = rng.sample(rest[:half], 20)  # duplicated inside the first file
    dup_b = rng.sample(rest[:half], 15)  # and across files
    writer = LakeWriter(lake, durable=False)
    rej = Rejection("malformed_json", b"{nope", "binance", "not JSON")
    writer.write_trades(
        rest[:half] + dup_a, [rej], SourceRange.stream("md:trades:raw", "1-0", "900-0")
    )
    writer.write_trades(
        rest[half:] + dup_b, [], SourceRange.stream("md:trades:raw", "901-0", "2000-0")
    )
    # One key comes from a Binance dump with bad rows (kept aside as rejects) and a
    # duplicated line.
    lines = [csv_line(t) for t in dumped]
    lines.insert(3, b"garbage,row")
    lines.insert(10, b"5,-1,1,1,1741910400000000,true")
    lines.append(csv_line(dumped[18]))
    dump = tmp_path / "ETHUSDT-trades-2025-03-14.csv"
    dump.write_bytes(b"\n".join(lines) + b"\n")
    res = import_dump(lake, dump, max_rejected_share=1.0)
    assert res.rejected == 2
    return rest + dup_a + dup_b + dumped + [dumped[18]]


def reference(trades: list[Trade], interval: Interval) -> dict[tuple[str, str], list[Candle]]:
    out: dict[tuple[str, str], list[Candle]] = {}
    for c in fold_trades(trades, interval).values():
        out.setdefault((c.exchange, c.symbol), []).append(c)
    for cs in out.values():
        cs.sort(key=lambda c: c.open_time)
    return out


def reference_aggregates(trades: list[Trade]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(t.exchange, t.symbol) for t in trades})
    uniq = dedupe(trades)
    for ex, sym in keys:
        ts = [t for t in uniq if (t.exchange, t.symbol) == (ex, sym)]
        (d,) = fold_trades(ts, Interval.D1).values()
        m1 = sorted(fold_trades(ts, Interval.M1).values(), key=lambda c: c.open_time)
        closes = [c.close_e8 / 1e8 for c in m1]
        rets = [math.log(b / a) for a, b in itertools.pairwise(closes)]
        big = max(ts, key=lambda t: (t.price_e8 * t.quantity_e8, -t.event_time, -t.trade_id))
        rows.append(
            {
                "exchange": ex,
                "symbol": sym,
                "open_time": D0,
                "open": format_e8(d.open_e8),
                "high": format_e8(d.high_e8),
                "low": format_e8(d.low_e8),
                "close": format_e8(d.close_e8),
                "volume": format_e8(d.volume_e8),
                "quote_volume": format_e16(d.quote_volume_e16),
                "vwap": format_e8(d.vwap_e8),
                "trade_count": d.trade_count,
                "taker_buy_volume": format_e8(d.taker_buy_volume_e8),
                "taker_buy_share": format_e8(
                    div_half_even(d.taker_buy_volume_e8 * 10**8, d.volume_e8)
                ),
                "first_trade_id": d.first_trade_id,
                "last_trade_id": d.last_trade_id,
                "realized_volatility": math.sqrt(sum(r * r for r in rets)),
                "return_count": len(rets),
                "active_minutes": len(m1),
                "trades_per_minute": format_e8(div_half_even(d.trade_count * 10**8, 1440)),
                "max_trades_per_minute": max(c.trade_count for c in m1),
                "largest_trade_id": big.trade_id,
                "largest_trade_time": big.event_time,
                "largest_trade_price": format_e8(big.price_e8),
                "largest_trade_quantity": format_e8(big.quantity_e8),
                "largest_trade_quote": format_e16(big.price_e8 * big.quantity_e8),
            }
        )
    return rows


def assert_candles_match(lake: Lake, trades: list[Trade]) -> None:
    keys = sorted({(t.exchange, t.symbol) for t in trades})
    stored = ds.dataset(
        lake.path("candles", "source=batch"), format="parquet", partitioning="hive"
    ).to_table()
    vwaps = {
        (r["exchange"], r["symbol"], r["interval"], r["open_time"]): r["vwap"]
        for r in stored.select(["exchange", "symbol", "interval", "open_time", "vwap"]).to_pylist()
    }
    for interval in Interval:
        ref = reference(trades, interval)
        for ex, sym in keys:
            got = read_batch_candles(lake, ex, sym, interval)
            assert got == ref[(ex, sym)], (ex, sym, interval.label)
            for c in got:
                assert decimal_to_e8(vwaps[(ex, sym, interval.label, c.open_time)]) == c.vwap_e8
    assert stored.num_rows == sum(len(fold_trades(trades, iv)) for iv in Interval)


def assert_aggregates_match(lake: Lake, trades: list[Trade]) -> None:
    got = read_aggregates(lake, DAY)
    want = reference_aggregates(trades)
    assert [r["symbol"] for r in got] == [r["symbol"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["realized_volatility"] == pytest.approx(w["realized_volatility"], rel=1e-9)
        g = {k: v for k, v in g.items() if k != "realized_volatility"}
        w = {k: v for k, v in w.items() if k != "realized_volatility"}
        assert g == w


@pytest.fixture(scope="module")
def messy_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, list[Trade]]:
    tmp = tmp_path_factory.mktemp("messy")
    lake = Lake(tmp / "lake")
    stored = write_day(lake, tmp, generate_trades(7), seed=7)
    return lake, stored


@pytest.mark.slow
def test_messy_day_matches_reference_and_reruns_idempotently(
    spark: SparkSession, messy_day: tuple[Lake, list[Trade]]
) -> None:
    lake, stored = messy_day
    res = run_batch_day(spark, lake, DAY)
    assert res.path == "fast"  # duplicates present: the index cannot prove otherwise
    assert res.duplicates == 36 and res.conflicts == 0
    assert res.trades == len(dedupe(stored))
    assert_candles_match(lake, stored)
    assert_aggregates_match(lake, stored)

    # The ties, spelled out: half-even, not Spark's half-up.
    tie = {c.open_time: c for c in read_batch_candles(lake, "binance", "TIEUSDT", "1m")}
    assert format_e8(tie[TIE_MINUTE].vwap_e8) == "1.00000002"
    assert format_e8(tie[TIE_MINUTE + 60_000].vwap_e8) == "1.00000000"
    # start inclusive, end exclusive, on open_time
    window = read_batch_candles(lake, "binance", "TIEUSDT", "1m", TIE_MINUTE, TIE_MINUTE + 60_000)
    assert [c.open_time for c in window] == [TIE_MINUTE]

    before = sorted(p.relative_to(lake.root) for p in Path(lake.root).rglob("*.parquet"))
    again = run_batch_day(spark, lake, DAY)
    after = sorted(p.relative_to(lake.root) for p in Path(lake.root).rglob("*.parquet"))
    assert again.candles == res.candles
    assert len(before) == len(after)  # replaced, not added to
    assert not [p for p in Path(lake.root, "candles").rglob(".*") if ".crc" not in p.name]
    assert_candles_match(lake, stored)


@pytest.mark.slow
def test_exact_path_equals_fast_path(
    spark: SparkSession, messy_day: tuple[Lake, list[Trade]]
) -> None:
    lake, stored = messy_day
    res = run_batch_day(spark, lake, DAY, exact_only=True)
    assert res.path == "exact"
    assert_candles_match(lake, stored)
    assert_aggregates_match(lake, stored)


@pytest.mark.slow
def test_values_beyond_the_fast_path_fall_back_to_exact(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    trades = [
        Trade(
            exchange="binance",
            symbol="BIGUSDT",
            trade_id=2**47 + 5,
            price_e8=10**18 - 1,
            quantity_e8=10**19 + 1,
            event_time=D0 + 10,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="BIGUSDT",
            trade_id=2**47 + 4,
            price_e8=10**18 - 1,
            quantity_e8=1,
            event_time=D0 + 10,
            is_buyer_maker=True,
        ),
        Trade(
            exchange="binance",
            symbol="BIGUSDT",
            trade_id=2**62,
            price_e8=5 * 10**17,
            quantity_e8=99 * 10**18,
            event_time=D0 + 61_000,
            is_buyer_maker=False,
        ),
        Trade(
            exchange="binance",
            symbol="BIGUSDT",
            trade_id=7,
            price_e8=1,
            quantity_e8=10**19 + 1,
            event_time=D0 + 3_600_000,
            is_buyer_maker=False,
        ),
    ]
    LakeWriter(lake, durable=False).write_trades(trades, [], SourceRange.rows("big", 1, 4))
    res = run_batch_day(spark, lake, DAY)
    assert res.path == "exact"
    assert_candles_match(lake, trades)
    assert_aggregates_match(lake, trades)


@pytest.mark.slow
def test_conflicting_duplicates_keep_one_whole_version(spark: SparkSession, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    writer = LakeWriter(lake, durable=False)
    base = [
        Trade(
            exchange="binance",
            symbol="XYZUSDT",
            trade_id=i,
            price_e8=10**8 + i,
            quantity_e8=10**6,
            event_time=D0 + i * 1000,
            is_buyer_maker=False,
        )
        for i in range(9)
    ]
    a = Trade(
        exchange="binance",
        symbol="XYZUSDT",
        trade_id=100,
        price_e8=2 * 10**8,
        quantity_e8=10**6,
        event_time=D0 + 500,
        is_buyer_maker=True,
    )
    b = a._replace(price_e8=3 * 10**8, quantity_e8=7)  # same key, other content
    writer.write_trades([*base, a], [], SourceRange.rows("one", 1, 10))
    writer.write_trades([b], [], SourceRange.rows("two", 1, 1))
    res = run_batch_day(spark, lake, DAY)
    assert res.path == "exact" and res.conflicts == 1 and res.duplicates == 1
    got = read_batch_candles(lake, "binance", "XYZUSDT", "1d")
    assert got in (
        reference([*base, a], Interval.D1)[("binance", "XYZUSDT")],
        reference([*base, b], Interval.D1)[("binance", "XYZUSDT")],
    )
    assert run_batch_day(spark, lake, DAY).trades == 10
    assert read_batch_candles(lake, "binance", "XYZUSDT", "1d") == got  # the same version again


@pytest.mark.slow
def test_rerun_replaces_the_days_partitions_only(spark: SparkSession, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    writer = LakeWriter(lake, durable=False)
    a = [
        Trade(
            exchange="binance",
            symbol="AAAUSDT",
            trade_id=i,
            price_e8=10**8 + i,
            quantity_e8=10**6,
            event_time=D0 + i * 7_000,
            is_buyer_maker=i % 2 == 0,
        )
        for i in range(50)
    ]
    b = [
        Trade(
            exchange="binance",
            symbol="BBBUSDT",
            trade_id=i,
            price_e8=10**9 + i,
            quantity_e8=10**5,
            event_time=D0 + i * 9_000,
            is_buyer_maker=False,
        )
        for i in range(30)
    ]
    other = [
        Trade(
            exchange="binance",
            symbol="AAAUSDT",
            trade_id=1000,
            price_e8=10**8,
            quantity_e8=10**6,
            event_time=D0 + DAY_MS + 5,
            is_buyer_maker=False,
        )
    ]
    writer.write_trades(a, [], SourceRange.rows("a", 1, 50))
    writer.write_trades(b, [], SourceRange.rows("b", 1, 30))
    writer.write_trades(other, [], SourceRange.rows("o", 1, 1))  # the next day
    run_batch_day(spark, lake, DAY)
    run_batch_day(spark, lake, date(2025, 3, 15))
    assert read_batch_candles(lake, "binance", "BBBUSDT", "1d") != []
    # B's file goes away (say, it was imported by mistake): the re-run drops its candles.
    lake.remove(f"{lake.trades_dir(DAY)}/{SourceRange.rows('b', 1, 30).file_name}")
    res = run_batch_day(spark, lake, DAY)
    assert res.path == "fast, no duplicates by index"
    assert read_batch_candles(lake, "binance", "BBBUSDT", "1d") == []
    assert_candles_match(lake, a + other)
    assert {r["symbol"] for r in read_aggregates(lake, DAY)} == {"AAAUSDT"}
    # The next day's partitions were left alone.
    nxt = read_batch_candles(lake, "binance", "AAAUSDT", "1m", D0 + DAY_MS, D0 + 2 * DAY_MS)
    assert [c.trade_count for c in nxt] == [1]


def test_no_trades_is_an_error(tmp_path: Path) -> None:
    # Checked before Spark is touched.
    with pytest.raises(NoTradesError, match="lake import"):
        day_files(Lake(tmp_path / "lake"), DAY)


@pytest.mark.slow
def test_cli_batch_run_on_imported_dumps(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    trades = [t for t in generate_trades(11, per_key=150) if t.exchange == "binance"]
    files = []
    for sym in ("BTCUSDT", "ETHUSDT", "TIEUSDT"):
        path = tmp_path / f"{sym}-trades-2025-03-14.csv"
        path.write_bytes(b"\n".join(csv_line(t) for t in trades if t.symbol == sym) + b"\n")
        files.append(str(path))
    assert main(["lake", "import", *files, "--home", str(home)]) == 0
    capsys.readouterr()
    # Sealed by import (no Redis involved); the index proves there are no duplicates.
    assert main(["batch", "run", "--date", "2025-03-14", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "sealed by import" in out and "no duplicates by index" in out
    lake = Lake(home / "lake")
    assert_candles_match(lake, trades)
    assert_aggregates_match(lake, trades)
    # Deduplicating anyway gives the same result.
    argv = ["batch", "run", "--date", "2025-03-14", "--dedup", "always", "--format", "json"]
    assert main([*argv, "--home", str(home)]) == 0
    assert '"path": "fast"' in capsys.readouterr().out
    assert_candles_match(lake, trades)
