"""Binance's own 1m klines: import, and the batch's candles compared with them."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from binance_files import klines, spot_aggtrades, spot_trades, um_aggtrades, um_trades
from pyspark.sql import SparkSession
from test_real_dumps import D0, DAY, day_trades

from batch.dump_import import ImportFormatError, ImportRejectedError
from batch.klines_import import import_klines
from cryptopipe.cli import main
from lake.arrow import decimal_array
from lake.klines import klines_from_table, klines_table, read_day_klines
from lake.layout import Lake
from lake.schemas import KLINES_SCHEMA, VOLUME_TYPE
from lake.trades import read_rejects
from marketdata.binance_klines import (
    QUOTE_UNIT_E16,
    Kline,
    compare_klines,
    parse_kline_row,
    taker_buy_quote_bounds,
)
from marketdata.candle import fold_trades
from marketdata.decimals import format_e8, parse_e8
from marketdata.interval import Interval
from marketdata.trade import Rejection, Trade, aggregate
from orchestration.batch_layer.assets import archived_trades, daily_batch
from orchestration.resources import PipelineResource, SparkResource

ROW = (
    b"1741910400000000,84000.10000000,84001.00000000,83999.00000000,84000.50000000,"
    b"1.50000000,1741910459999999,126000.75000000,12,0.50000000,42000.25000000,0"
)


def _ms(row: bytes) -> bytes:
    return row.replace(b"1741910400000000", b"1741910400000").replace(
        b"1741910459999999", b"1741910459999"
    )


def test_a_spot_row_in_microseconds_and_a_usd_m_row_in_ms_read_alike() -> None:
    k = parse_kline_row(ROW, exchange="binance", symbol="BTCUSDT")
    assert isinstance(k, Kline)
    assert (k.open_time, k.trade_count, k.close_e8) == (D0, 12, 8_400_050_000_000)
    assert k.quote_volume_e16 == 12_600_075 * 10**14  # 126000.75 in 1e-16 units
    assert parse_kline_row(_ms(ROW), exchange="binance", symbol="BTCUSDT") == k


def test_quote_volumes_keep_every_digit_they_are_written_with() -> None:
    # USD-M futures write exact sums of price x quantity: more than 8 decimals.
    row = ROW.replace(b"126000.75000000", b"126000.7500000012345").replace(
        b"42000.25000000", b"42000.250000000001"
    )
    k = parse_kline_row(row, exchange="binance-um", symbol="BTCUSDT")
    assert isinstance(k, Kline)
    assert k.quote_volume_e16 == 126000_7500000012345000
    assert k.taker_buy_quote_volume_e16 == 42000_2500000000010000
    table = klines_table([k])
    assert klines_from_table(table) == [k]
    # 17 digits after the point: more than the lake keeps exactly.
    too_fine = ROW.replace(b"126000.75000000", b"126000.75000000000000001")
    res = parse_kline_row(too_fine, exchange="binance", symbol="BTCUSDT")
    assert isinstance(res, Rejection) and res.reason == "too_precise:quote_volume"


def test_klines_written_before_quote_volumes_had_16_digits_read_back_exactly() -> None:
    k = parse_kline_row(ROW, exchange="binance", symbol="BTCUSDT")
    assert isinstance(k, Kline)
    new = klines_table([k])
    old = new.set_column(
        8, pa.field("quote_volume", VOLUME_TYPE), decimal_array([12_600_075_000_000], VOLUME_TYPE)
    ).set_column(
        11,
        pa.field("taker_buy_quote_volume", VOLUME_TYPE),
        decimal_array([4_200_025_000_000], VOLUME_TYPE),
    )
    assert old.schema != KLINES_SCHEMA and klines_from_table(old) == [k]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((b"84001.00000000", b"83000.00000000"), "bad_kline:range"),
        ((b"83999.00000000", b"84000.20000000"), "bad_kline:range"),
        ((b"1741910459999999", b"1741910460000000"), "bad_kline:close_time"),
        ((b"1741910459999999", b"1741910459999"), "bad_kline:close_time"),  # ms beside µs
        ((b"1741910459999999", b"1741910459999000"), "bad_kline:close_time"),
        ((b"1741910400000000", b"1741910400000500"), "bad_kline:open_time"),  # off by 500 µs
        ((b"1741910400000000", b"1741910401000000"), "bad_kline:open_time"),
        ((b"1741910400000000", b"17419104000000000000"), "bad_timestamp:open_time"),
        ((b"1741910400000000", b"1200000000000"), "bad_timestamp:open_time"),  # 2008
        ((b",12,", b",x,"), "bad_number:trade_count"),
        ((b",12,", b",-1,"), "bad_number:trade_count"),
        ((b",0.50000000,", b",9.50000000,"), "bad_kline:taker_buy_volume"),
        ((b"84000.10000000", b"-1"), "bad_number:open"),
        ((b"84000.10000000", b"0.00000000"), "non_positive:open"),
        ((b"84000.10000000", b"84000.100000001"), "too_precise:open"),
        ((b",1.50000000,", b",1e3,"), "bad_number:volume"),
        ((b"42000.25000000", b"NaN"), "bad_number:taker_buy_quote_volume"),
        ((b",0", b""), "malformed_csv"),
        ((b",0", b",0,0"), "malformed_csv"),
    ],
)
def test_bad_kline_rows_are_rejected_with_a_reason(
    change: tuple[bytes, bytes], reason: str
) -> None:
    row = ROW[::-1].replace(change[0][::-1], change[1][::-1], 1)[::-1]
    res = parse_kline_row(row, exchange="binance", symbol="BTCUSDT")
    assert isinstance(res, Rejection) and res.reason == reason, res


def _kmap(trades: list[Trade], **kw: object) -> dict:
    out = {}
    for line in klines(trades, **kw).splitlines():  # type: ignore[arg-type]
        if line.startswith(b"open_time"):
            continue
        k = parse_kline_row(line, exchange=trades[0].exchange, symbol=trades[0].symbol)
        assert isinstance(k, Kline)
        out[k.key] = k
    return out


def _candles(trades: list[Trade]) -> dict:
    return {
        (c.exchange, c.symbol, c.open_time): c for c in fold_trades(trades, Interval.M1).values()
    }


@pytest.mark.parametrize("quote", ["truncate", "round", "exact"])
def test_klines_of_the_same_trades_match_however_quote_quantities_are_cut(quote: str) -> None:
    trades = day_trades(21, "binance", "BTCUSDT", n=300)
    candles = _candles(trades)
    ks = _kmap(trades, quote=quote)
    res = compare_klines(candles, ks)
    assert res.ok and res.counts["match"] == len(candles), res.worst(3)
    assert res.empty_klines == len(ks) - len(candles) > 0  # Binance's empty minutes
    assert res.exchanges == ["binance"] and not res.symbols_without_klines
    if quote != "exact":  # the per-trade cut is really exercised
        assert any(ks[k].quote_volume_e16 != c.quote_volume_e16 for k, c in candles.items())


def test_aggregate_trades_klines_match_too() -> None:
    trades = day_trades(24, "binance", "BTCUSDT", n=300)
    aggs = aggregate(trades)
    assert len(aggs) < len(trades)
    res = compare_klines(_candles(aggs), _kmap(trades))
    assert res.ok and res.counts["match"] == len(_candles(trades))


def test_the_comparison_rules() -> None:
    trades = day_trades(21, "binance", "BTCUSDT", n=300)
    candles = _candles(trades)
    ks = _kmap(trades)
    # An altered close and a changed count: a mismatch naming the fields.
    key = sorted(candles)[3]
    bad = dict(ks)
    bad[key] = ks[key]._replace(close_e8=ks[key].close_e8 + 1, trade_count=ks[key].trade_count + 1)
    res = compare_klines(candles, bad)
    assert res.counts["mismatch"] == 1 and res.counts["match"] == len(candles) - 1
    (diff,) = res.differences
    assert diff.differing == ("close", "trade_count")
    assert diff.ours is not None and diff.theirs is not None
    assert diff.theirs["trade_count"] == diff.ours["trade_count"] + 1
    # A minute on one side only.
    gone = dict(ks)
    del gone[key]
    extra = dict(candles)
    del extra[sorted(candles)[5]]
    res = compare_klines(extra, gone)
    assert (res.counts["missing_in_klines"], res.counts["missing_in_batch"]) == (1, 1)
    # Quote volume: within trade_count units of the 8th decimal, not one more.
    c = candles[key]
    edge = c.quote_volume_e16 + c.trade_count * QUOTE_UNIT_E16
    ok = compare_klines({key: c}, {key: ks[key]._replace(quote_volume_e16=edge)})
    over = compare_klines({key: c}, {key: ks[key]._replace(quote_volume_e16=edge + 1)})
    assert ok.ok and over.differences[0].differing == ("quote_volume",)
    # A series the batch has but no klines: not compared, said.
    other = {(e, "ETHUSDT", t): v for (e, _, t), v in candles.items()}
    res = compare_klines({**candles, **other}, ks)
    assert res.ok and res.symbols_without_klines == [("binance", "ETHUSDT")]
    # Klines of a series the batch has no candle of: its minutes are missing, and said.
    res = compare_klines({}, ks)
    assert res.counts["missing_in_batch"] == len(candles)
    assert res.symbols_without_candles == [("binance", "BTCUSDT")]


def test_the_taker_buy_quote_volume_lies_where_our_candle_allows() -> None:
    trades = day_trades(25, "binance", "BTCUSDT", n=300)
    candles = _candles(trades)
    ks = _kmap(trades)
    for key, c in candles.items():
        low, high = taker_buy_quote_bounds(c)
        assert low <= ks[key].taker_buy_quote_volume_e16 <= high
    # Only taker buys: the bound is the quote volume itself, give or take the cut.
    buys = [t._replace(is_buyer_maker=False) for t in trades]
    cs, kb = _candles(buys), _kmap(buys)
    key = max(cs, key=lambda k: cs[k].trade_count)
    c = cs[key]
    low, high = taker_buy_quote_bounds(c)
    slack = c.trade_count * QUOTE_UNIT_E16
    assert (low, high) == (c.quote_volume_e16 - slack, c.quote_volume_e16 + slack)
    k = kb[key]
    res = compare_klines({key: c}, {key: k._replace(taker_buy_quote_volume_e16=high + 1)})
    assert res.differences[0].differing == ("taker_buy_quote_volume",)
    # Half the quote volume where every trade was a taker buy: far outside.
    half = k._replace(taker_buy_quote_volume_e16=k.taker_buy_quote_volume_e16 // 2)
    assert not compare_klines({key: c}, {key: half}).ok


def _zip(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


@pytest.mark.parametrize(
    ("micros", "header", "zipped"),
    [(True, False, False), (False, False, True), (False, True, False)],
    ids=["spot-us", "spot-ms-zip", "usd-m-header"],
)
def test_import_stores_klines_apart_and_a_reimport_replaces_its_own(
    tmp_path: Path, micros: bool, header: bool, zipped: bool
) -> None:
    trades = day_trades(22, "binance-um", "BTCUSDT", n=200)
    data = klines(trades, micros=micros, header=header)
    name = "BTCUSDT-1m-2025-03-14"
    if zipped:
        path = _zip(tmp_path / f"{name}.zip", f"{name}.csv", data)
    else:
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
    lake = Lake(tmp_path / "lake")
    calls: list[tuple[int, int, int]] = []
    res = import_klines(lake, path, exchange="binance-um", progress=lambda *a: calls.append(a))
    assert res.symbol == "BTCUSDT" and res.skipped == (1 if header else 0)
    assert calls and calls[-1][0] == calls[-1][1]  # the last call says: all done
    stored = read_day_klines(lake, DAY)
    assert res.klines == len(stored) == len(_kmap(trades)) and res.rejected == 0
    assert set(stored.values()) == set(_kmap(trades).values())
    assert res.replaced_rows == 0 and "replaced" not in res.summary()
    assert not (tmp_path / "lake" / "trades").exists()  # apart from trades
    (written,) = os.listdir(tmp_path / "lake" / "klines" / "date=2025-03-14")
    assert written.startswith(f"import~binance-um.BTCUSDT.klines.{name}~")
    again = import_klines(lake, path, exchange="binance-um")
    assert again.replaced_rows == res.klines and read_day_klines(lake, DAY) == stored
    assert f"replaced {res.klines:,} rows" in again.summary()
    # The spot file of the same name is another source: side by side.
    import_klines(lake, path, exchange="binance")
    assert len(read_day_klines(lake, DAY)) == 2 * len(stored)
    assert read_day_klines(lake, DAY, "binance-um") == stored
    # A shorter version of the file, with a bad row: it replaces its own, keeps the
    # bad row in rejects/ with its reason, and leaves the spot import alone.
    lines = data.splitlines()
    shorter = [*lines[: len(lines) // 2], lines[-1].replace(b",0\n", b"").rsplit(b",", 1)[0]]
    short = tmp_path / "short" / f"{name}.csv"
    short.parent.mkdir()
    short.write_bytes(b"\n".join(shorter) + b"\n")
    third = import_klines(lake, short, exchange="binance-um", max_rejected_share=0.5)
    assert third.replaced_rows == res.klines and third.rejected == 1
    assert len(read_day_klines(lake, DAY, "binance-um")) == third.klines < len(stored)
    assert read_day_klines(lake, DAY, "binance") == {
        (("binance", *k[1:])): v._replace(exchange="binance") for k, v in stored.items()
    }
    assert read_rejects(lake, DAY).column("reason").to_pylist() == ["malformed_csv"]


def test_klines_import_refuses_what_is_not_1m_klines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(23, "binance", "BTCUSDT", n=50)
    home = ["--home", str(tmp_path / "home")]
    # Another interval, by its name: one line, nothing written.
    five = tmp_path / "BTCUSDT-5m-2025-03-14.csv"
    five.write_bytes(klines(trades))
    with pytest.raises(ImportFormatError, match="only 1m klines"):
        import_klines(Lake(tmp_path / "lake"), five)
    assert main(["lake", "import", str(five), *home]) == 2
    err = capsys.readouterr().err
    assert "BTCUSDT-5m-2025-03-14.csv holds 5m klines" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "home" / "lake" / "klines").exists()
    # Another interval, renamed: every row closes too late, and the message says so.
    renamed5 = tmp_path / "five.csv"
    renamed5.write_bytes(klines(trades).replace(b"59999999,", b"299999999,"))
    with pytest.raises(ImportRejectedError, match="another interval than 1m"):
        import_klines(Lake(tmp_path / "lake"), renamed5, symbol="BTCUSDT")
    # Trades given as klines: named like trades, or not named at all.
    as_klines = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    as_klines.write_bytes(spot_trades(trades))
    assert main(["lake", "import", str(as_klines), "--format", "binance-klines", *home]) == 2
    assert "named like a binance-trades dump" in capsys.readouterr().err
    for render, looks in (
        (um_trades, "binance-trades"),
        (spot_trades, "binance-trades"),
        (spot_aggtrades, "binance-aggtrades"),
        (um_aggtrades, "binance-aggtrades"),
    ):
        renamed = tmp_path / "mine.csv"
        rows = aggregate(trades) if "agg" in looks else trades
        renamed.write_bytes(render(rows))
        with pytest.raises(ValueError, match=f"it looks like {looks}"):
            import_klines(Lake(tmp_path / "lake"), renamed, symbol="BTCUSDT")
        argv = ["lake", "import", str(renamed), "--format", "binance-klines", "--symbol", "X"]
        assert main([*argv, *home]) == 2
        assert f"looks like {looks}" in capsys.readouterr().err
    # Rows that fit no format: none read, the reasons said, nothing imported.
    garbage = tmp_path / "BTCUSDT-1m-2025-03-15.csv"
    garbage.write_bytes(b"1,2,3\n" * 10)
    with pytest.raises(ImportRejectedError, match="none of its 10 rows"):
        import_klines(Lake(tmp_path / "lake"), garbage)
    assert not (tmp_path / "lake" / "klines").exists()


# --------------------------------------------------------------------------- with Spark


def _rewrite(path: Path, edit: Callable[[list[bytes]], None]) -> None:
    lines = path.read_bytes().splitlines()
    edit(lines)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _traded(lines: list[bytes]) -> int:
    """Index of a kline row with trades (not the header, not an empty minute)."""
    return next(
        i for i, line in enumerate(lines) if line[:1].isdigit() and line.split(b",")[8] != b"0"
    )


@pytest.mark.slow
def test_batch_candles_against_klines_through_the_cli_and_dagster(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    spot = day_trades(31, "binance", "BTCUSDT", n=600)
    um = day_trades(32, "binance-um", "BTCUSDT", n=600)
    eth = day_trades(33, "binance", "ETHUSDT", n=60)  # trades, but no klines
    for name, trades, render in (("spot", spot, spot_trades), ("um", um, um_trades)):
        d = tmp_path / name
        d.mkdir()
        (d / "BTCUSDT-trades-2025-03-14.csv").write_bytes(render(trades))
        # Spot: no header, µs, quote quantities truncated; USD-M: header, ms, exact sums.
        (d / "BTCUSDT-1m-2025-03-14.csv").write_bytes(
            klines(
                trades,
                micros=name == "spot",
                header=name == "um",
                quote="truncate" if name == "spot" else "exact",
            )
        )
        ex = "binance" if name == "spot" else "binance-um"
        for f in ("BTCUSDT-trades-2025-03-14.csv", "BTCUSDT-1m-2025-03-14.csv"):
            assert main(["lake", "import", str(d / f), "--exchange", ex, "--home", str(home)]) == 0
    (tmp_path / "ETHUSDT-trades-2025-03-14.csv").write_bytes(spot_trades(eth))
    assert (
        main(
            ["lake", "import", str(tmp_path / "ETHUSDT-trades-2025-03-14.csv"), "--home", str(home)]
        )
        == 0
    )
    # Klines before the batch: one line saying to run it.
    argv = ["reconcile", "--date", "2025-03-14", "--against", "klines", "--home", str(home)]
    capsys.readouterr()
    assert main([*argv, "--format", "json"]) == 2
    assert "run 'cryptopipe batch run --date 2025-03-14'" in capsys.readouterr().err
    assert main(["batch", "run", "--date", "2025-03-14", "--home", str(home)]) == 0
    capsys.readouterr()
    assert main([*argv, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n_spot, n_um = len(fold_trades(spot, Interval.M1)), len(fold_trades(um, Interval.M1))
    assert report["match"] == n_spot + n_um
    assert report["mismatch"] == report["missing_in_klines"] == report["missing_in_batch"] == 0
    assert report["exchanges"] == ["binance", "binance-um"] and report["exchange"] is None
    assert report["symbols_without_klines"] == ["binance:ETHUSDT"]
    assert "trade_count x 0.00000001" in report["quote_volume_rule"]
    assert report["worst"] == [] and report["date"] == "2025-03-14"
    assert main([*argv, "--exchange", "binance-um", "--format", "json"]) == 0
    um_only = json.loads(capsys.readouterr().out)
    assert um_only["match"] == n_um and um_only["exchanges"] == ["binance-um"]
    assert um_only["symbols_without_klines"] == []
    assert main([*argv, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert f"match={n_spot + n_um}" in table and "binance:ETHUSDT" in table

    def check() -> dg.AssetCheckEvaluation:
        result = dg.materialize(
            [archived_trades, daily_batch],
            partition_key=str(DAY),
            resources={
                # Sealed by import: no Redis needed (nothing answers at this URL).
                "pipeline": PipelineResource(redis_url="redis://127.0.0.1:1/0", home=str(home)),
                "spark": SparkResource(master="local[2]"),
            },
            raise_on_error=False,
        )
        assert result.success, [e for e in result.all_events if e.is_step_failure]
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.check_name == "matches_exchange_klines"
        return evaluation

    good = check()
    assert good.passed and good.metadata["match"].value == n_spot + n_um
    assert good.metadata["mismatch"].value == 0

    # An altered kline (close changed) is a mismatch; a kline row gone is a minute
    # missing in the klines; a traded kline of a minute without trades is missing in
    # the batch. In the CLI and in the check.
    def alter(lines: list[bytes]) -> None:
        k = _traded(lines)
        cols = lines[k].split(b",")
        close = parse_e8(cols[4].decode()) + 1  # one unit of the 8th decimal
        cols[4] = format_e8(close).encode()
        cols[2] = format_e8(max(parse_e8(cols[2].decode()), close)).encode()  # still valid
        lines[k] = b",".join(cols)
        del lines[_traded(lines[k + 1 :]) + k + 1]

    def trade_in_an_empty_minute(lines: list[bytes]) -> None:
        k = next(i for i, line in enumerate(lines) if line.split(b",")[8] == b"0")
        cols = lines[k].split(b",")  # Binance's empty minute: count 0, volume 0
        cols[5], cols[7], cols[8] = b"1.00000000", cols[4], b"1"
        lines[k] = b",".join(cols)

    kfile = tmp_path / "um" / "BTCUSDT-1m-2025-03-14.csv"
    spot_file = tmp_path / "spot" / "BTCUSDT-1m-2025-03-14.csv"
    _rewrite(kfile, alter)
    _rewrite(spot_file, trade_in_an_empty_minute)
    imp = ["lake", "import", "--home", str(home)]
    for path, ex in ((kfile, "binance-um"), (spot_file, "binance")):
        assert main([*imp, str(path), "--exchange", ex]) == 0
        assert "replaced" in capsys.readouterr().out
    assert main([*argv, "--format", "json", "--fail-on-unexplained"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["mismatch"], report["missing_in_klines"], report["missing_in_batch"]) == (
        1,
        1,
        1,
    )
    assert report["match"] == n_spot + n_um - 2
    worst = report["worst"][0]
    assert worst["outcome"] == "mismatch" and worst["exchange"] == "binance-um"
    assert worst["differing"][-1] == "close"  # and high, when the close was the high
    assert worst["ours"]["close"] != worst["theirs"]["close"]
    assert main([*argv, "--format", "json"]) == 0  # differences alone exit 0
    capsys.readouterr()
    bad = check()
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN
    assert (
        bad.metadata["mismatch"].value,
        bad.metadata["missing_in_klines"].value,
        bad.metadata["missing_in_batch"].value,
    ) == (1, 1, 1)
    full = json.loads(
        (home / "lake" / "reconciliation" / "date=2025-03-14" / "klines.json").read_text()
    )
    assert len(full["differences"]) == 3 and full["mismatch"] == 1
