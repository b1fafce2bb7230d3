"""Binance's real dump formats into the lake: markets side by side, aggregates, loud failures."""

from __future__ import annotations

import random
import zipfile
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from binance_files import (
    UM_TRADES_HEADER,
    spot_aggtrades,
    spot_trades,
    um_aggtrades,
    um_trades,
)
from pyspark.sql import SparkSession

from batch.dump_import import ImportFormatError, ImportRejectedError, import_dump, parse_block
from cryptopipe.cli import main
from lake.candles import read_batch_candles
from lake.layout import Lake, SourceRange
from lake.trades import read_trades
from lake.writer import LakeWriter
from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.trade import Trade, aggregate

DAY = date(2025, 3, 14)
D0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
DAY_MS = 86_400_000


def day_trades(seed: int, exchange: str, symbol: str, n: int = 600) -> list[Trade]:
    """Trades of one day: sweeps (runs at one time), minute edges, both ends of the day."""
    rng = random.Random(seed)
    times = [D0, D0 + DAY_MS - 1, D0 + 59_999, D0 + 60_000, D0 + 3_600_000 - 1]
    while len(times) < n // 3:
        times.append(D0 + rng.randrange(DAY_MS))
    times.sort()
    out: list[Trade] = []
    tid = rng.randrange(10**9, 10**10)
    for t in times:
        price = rng.randrange(8_000_000, 8_001_000) * 10**6
        maker = rng.random() < 0.5
        for _ in range(rng.choice([1, 1, 2, 5])):  # a sweep: several fills at one time
            if rng.random() < 0.2:
                price += 10**6  # a sweep walks the book, changing price within one time
            out.append(Trade(exchange, symbol, tid, price, rng.randrange(1, 10**9), t, maker))
            tid += 1
    return out


def stored(lake: Lake) -> list[Trade]:
    return sorted(read_trades(lake, DAY))


# --------------------------------------------------------------------------- side by side


def test_spot_and_usd_m_dumps_of_one_day_live_side_by_side(tmp_path: Path) -> None:
    spot = day_trades(1, "binance", "BTCUSDT")
    um = day_trades(2, "binance-um", "BTCUSDT")
    a, b = tmp_path / "spot", tmp_path / "um"
    a.mkdir()
    b.mkdir()
    # Binance names both the same.
    (a / "BTCUSDT-trades-2025-03-14.csv").write_bytes(spot_trades(spot))
    (b / "BTCUSDT-trades-2025-03-14.csv").write_bytes(um_trades(um))
    lake = Lake(tmp_path / "lake")
    r1 = import_dump(lake, a / "BTCUSDT-trades-2025-03-14.csv")
    r2 = import_dump(lake, b / "BTCUSDT-trades-2025-03-14.csv", exchange="binance-um")
    assert (r1.trades, r2.trades) == (len(spot), len(um))
    assert r2.removed == [] and r2.replaced_rows == 0
    assert stored(lake) == sorted(spot + um)
    # Re-importing the spot file replaces only the spot file's rows, and says how many.
    r3 = import_dump(lake, a / "BTCUSDT-trades-2025-03-14.csv")
    assert r3.replaced_rows == len(spot)
    assert stored(lake) == sorted(spot + um)


def test_two_files_of_one_name_for_different_symbols_live_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    btc = day_trades(3, "binance", "BTCUSDT", n=100)
    eth = [t._replace(symbol="ETHUSDT") for t in day_trades(4, "binance", "X", n=100)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "trades.csv").write_bytes(spot_trades(btc))
    (tmp_path / "b" / "trades.csv").write_bytes(spot_trades(eth))
    home = ["--home", str(tmp_path / "home")]
    assert (
        main(["lake", "import", str(tmp_path / "a" / "trades.csv"), "--symbol", "BTCUSDT", *home])
        == 0
    )
    assert (
        main(["lake", "import", str(tmp_path / "b" / "trades.csv"), "--symbol", "ETHUSDT", *home])
        == 0
    )
    out = capsys.readouterr().out
    assert "replaced" not in out
    assert stored(Lake(tmp_path / "home" / "lake")) == sorted(btc + eth)
    # The same file again: its own rows replaced, the summary says so.
    assert (
        main(["lake", "import", str(tmp_path / "b" / "trades.csv"), "--symbol", "ETHUSDT", *home])
        == 0
    )
    assert f"replaced {len(eth):,} rows" in capsys.readouterr().out
    assert stored(Lake(tmp_path / "home" / "lake")) == sorted(btc + eth)


def test_a_file_imported_by_an_older_version_is_replaced_only_when_it_is_the_same(
    tmp_path: Path,
) -> None:
    """Files named by the stem alone (before sources named exchange, symbol and kind)."""
    lake = Lake(tmp_path / "lake")
    btc = day_trades(5, "binance", "BTCUSDT", n=60)
    eth = day_trades(6, "binance", "ETHUSDT", n=60)
    writer = LakeWriter(lake, durable=False)
    writer.write_trades(btc, [], SourceRange.rows("BTCUSDT-trades-2025-03-14", 1, len(btc)))
    writer.write_trades(eth, [], SourceRange.rows("trades", 1, len(eth)))  # another symbol
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    path.write_bytes(spot_trades(btc))
    res = import_dump(lake, path)
    assert res.replaced_rows == len(btc) and len(res.removed) == 1
    assert stored(lake) == sorted(btc + eth)
    other = tmp_path / "trades.csv"
    other.write_bytes(spot_trades(btc))
    res = import_dump(lake, other, symbol="BTCUSDT", exchange="binance-um")
    assert res.replaced_rows == 0  # the old 'trades' file is ETHUSDT's: left alone
    assert len(stored(lake)) == 2 * len(btc) + len(eth)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("render", [spot_aggtrades, um_aggtrades])
def test_aggregate_trade_dumps_store_each_aggregate_with_its_span(tmp_path: Path, render) -> None:
    trades = day_trades(7, "binance", "BTCUSDT")
    aggs = aggregate(trades)
    assert len(aggs) < len(trades)
    path = tmp_path / "BTCUSDT-aggTrades-2025-03-14.csv"
    path.write_bytes(render(aggs))
    lake = Lake(tmp_path / "lake")
    res = import_dump(lake, path)  # the name says aggTrades
    assert (res.trades, res.trade_count, res.rejected) == (len(aggs), len(trades), 0)
    assert stored(lake) == sorted(aggs)
    for interval in (Interval.M1, Interval.D1):
        got = {k: c.fields() for k, c in fold_trades(stored(lake), interval).items()}
        want = {k: c.fields() for k, c in fold_trades(trades, interval).items()}
        assert got == want
    names = [p.name for p in (tmp_path / "lake" / "trades" / "date=2025-03-14").iterdir()]
    assert any(n.startswith("import~binance.BTCUSDT.aggtrades.") for n in names)
    # The fast path gives the parser's outcome, aggregates and rejections alike.
    data = render(aggs[:50]) + b"9,1.5,1,100,99,1741910400000,true\n9,1.5,1,1,2,x,true\n"
    fast = parse_block(data, 1, exchange="binance", symbol="BTCUSDT", fmt="binance-aggtrades")
    slow = parse_block(
        data, 1, exchange="binance", symbol="BTCUSDT", fmt="binance-aggtrades", fast=False
    )
    assert fast.trades.drop_columns(["span"]).equals(slow.trades.drop_columns(["span"]))
    assert fast.trades.column("span").fill_null(1).equals(slow.trades.column("span").fill_null(1))
    assert [(n, r.reason) for n, r in fast.rejections] == [
        (n, r.reason) for n, r in slow.rejections
    ]
    assert {r.reason for _, r in fast.rejections} == {"bad_number:last_trade_id", "bad_timestamp"}


def test_wrong_format_fails_naming_the_format_it_looks_like(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(8, "binance", "BTCUSDT", n=90)
    agg = tmp_path / "agg.csv"
    agg.write_bytes(spot_aggtrades(aggregate(trades)))
    kl = tmp_path / "kl.csv"
    kl.write_bytes(
        b"1741910400000,84000.1,84001,83999,84000.5,1.5,1741910459999,126000.75,12,0.5,42000.25,0\n"
    )
    home = ["--home", str(tmp_path / "home")]
    for path, looks in ((agg, "binance-aggtrades"), (kl, "binance-klines")):
        argv = ["lake", "import", str(path), "--symbol", "BTCUSDT", "--format", "binance-trades"]
        assert main([*argv, *home]) == 2
        err = capsys.readouterr().err
        assert f"looks like {looks}" in err and f"--format {looks}" in err
        assert "Traceback" not in err
    assert read_trades(Lake(tmp_path / "home" / "lake"), DAY) == []
    # A name that says aggTrades, forced as trades: refused by the name.
    named = tmp_path / "BTCUSDT-aggTrades-2025-03-14.csv"
    named.write_bytes(agg.read_bytes())
    with pytest.raises(ImportFormatError, match="named like a binance-aggtrades dump"):
        import_dump(Lake(tmp_path / "lake"), named, fmt="binance-trades")


def test_rows_no_format_fits_fail_with_reasons_and_examples(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    path.write_bytes(b"hello,world\n" * 50)
    with pytest.raises(ImportRejectedError) as exc:
        import_dump(Lake(tmp_path / "lake"), path)
    msg = str(exc.value)
    assert "none of its 50 rows" in msg and "line 1:" in msg and "Nothing imported" in msg
    assert exc.value.result.reasons.most_common(1)[0][1] == 50


def test_coin_m_dumps_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "BTCUSD_PERP-trades-2025-03-14.csv"
    path.write_bytes(
        b"id,price,qty,base_qty,time,is_buyer_maker\n1,84000.1,10,0.0119,1741910400000,true\n"
    )
    assert main(["lake", "import", str(path), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err.strip()
    assert "COIN-M" in err and "contracts" in err and len(err.splitlines()) == 1
    # By the header alone, under another name, too.
    other = tmp_path / "coin.csv"
    other.write_bytes(path.read_bytes())
    with pytest.raises(ImportFormatError, match="COIN-M"):
        import_dump(Lake(tmp_path / "lake"), other, symbol="BTCUSD")


def test_usd_m_header_and_zip(tmp_path: Path) -> None:
    trades = day_trades(9, "binance-um", "ETHUSDT", n=60)
    zpath = tmp_path / "ETHUSDT-trades-2025-03-14.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ETHUSDT-trades-2025-03-14.csv", um_trades(trades))
    lake = Lake(tmp_path / "lake")
    res = import_dump(lake, zpath, exchange="binance-um")
    assert (res.trades, res.skipped, res.rejected) == (len(trades), 1, 0)
    assert stored(lake) == sorted(trades)
    assert um_trades(trades).startswith(UM_TRADES_HEADER)
    schema = pq.read_schema(res.files[0])
    assert schema.field("span").nullable


# --------------------------------------------------------------------------- with Spark


def _import_all(home: Path, files: list[tuple[Path, str]]) -> None:
    for path, exchange in files:
        assert main(["lake", "import", str(path), "--exchange", exchange, "--home", str(home)]) == 0


@pytest.mark.slow
def test_batch_candles_of_real_formats_equal_the_reference(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spot (µs, no header) and USD-M (header) trades of one day; their aggTrades alike."""
    spot = day_trades(11, "binance", "BTCUSDT", n=900)
    um = day_trades(12, "binance-um", "BTCUSDT", n=900)
    eth = [t._replace(symbol="ETHUSDT") for t in day_trades(13, "binance", "X", n=300)]
    for name in ("spot", "um", "eth", "aspot", "aum", "aeth"):
        (tmp_path / name).mkdir()
    f = "BTCUSDT-trades-2025-03-14.csv"
    (tmp_path / "spot" / f).write_bytes(spot_trades(spot))
    (tmp_path / "um" / f).write_bytes(um_trades(um))
    (tmp_path / "eth" / "ETHUSDT-trades-2025-03-14.csv").write_bytes(
        spot_trades(eth, spelling="true", micros=False)
    )
    a = "BTCUSDT-aggTrades-2025-03-14.csv"
    (tmp_path / "aspot" / a).write_bytes(spot_aggtrades(aggregate(spot)))
    (tmp_path / "aum" / a).write_bytes(um_aggtrades(aggregate(um)))
    (tmp_path / "aeth" / "ETHUSDT-aggTrades-2025-03-14.csv").write_bytes(
        spot_aggtrades(aggregate(eth))
    )
    homes = {"trades": tmp_path / "h1", "aggtrades": tmp_path / "h2"}
    _import_all(
        homes["trades"],
        [
            (tmp_path / "spot" / f, "binance"),
            (tmp_path / "um" / f, "binance-um"),
            (tmp_path / "eth" / "ETHUSDT-trades-2025-03-14.csv", "binance"),
        ],
    )
    _import_all(
        homes["aggtrades"],
        [
            (tmp_path / "aspot" / a, "binance"),
            (tmp_path / "aum" / a, "binance-um"),
            (tmp_path / "aeth" / "ETHUSDT-aggTrades-2025-03-14.csv", "binance"),
        ],
    )
    everything = spot + um + eth
    for home in homes.values():
        assert main(["batch", "run", "--date", "2025-03-14", "--home", str(home)]) == 0
        assert "sealed by import" in capsys.readouterr().out
        lake = Lake(home / "lake")
        for interval in Interval:
            ref = fold_trades(everything, interval)
            for ex, sym in (
                ("binance", "BTCUSDT"),
                ("binance-um", "BTCUSDT"),
                ("binance", "ETHUSDT"),
            ):
                got = read_batch_candles(lake, ex, sym, interval)
                want = sorted(
                    (c for c in ref.values() if (c.exchange, c.symbol) == (ex, sym)),
                    key=lambda c: c.open_time,
                )
                assert [c.fields() for c in got] == [c.fields() for c in want], (home, ex, interval)
                assert [c.open_time for c in got] == [c.open_time for c in want]
    # The day's edges: its first and last millisecond are in the day's candles.
    lake = Lake(homes["aggtrades"] / "lake")
    m1 = read_batch_candles(lake, "binance", "BTCUSDT", Interval.M1)
    assert m1[0].open_time == D0 and m1[-1].open_time == D0 + DAY_MS - 60_000
