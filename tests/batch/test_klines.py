"""Binance's own 1m klines: import, and the batch's candles compared with them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest
from binance_files import klines, spot_trades, um_trades
from pyspark.sql import SparkSession
from test_real_dumps import D0, DAY, day_trades

from batch.dump_import import ImportFormatError, ImportRejectedError
from batch.klines_import import import_klines
from cryptopipe.cli import main
from lake.klines import read_day_klines
from lake.layout import Lake
from marketdata.binance_klines import Kline, compare_klines, parse_kline_row
from marketdata.candle import fold_trades
from marketdata.interval import Interval
from marketdata.trade import Rejection
from orchestration.batch_layer.assets import archived_trades, daily_batch
from orchestration.resources import PipelineResource, SparkResource

ROW = (
    b"1741910400000000,84000.10000000,84001.00000000,83999.00000000,84000.50000000,"
    b"1.50000000,1741910459999999,126000.75000000,12,0.50000000,42000.25000000,0"
)


def test_a_spot_row_in_microseconds_and_a_usd_m_row_in_ms_read_alike() -> None:
    k = parse_kline_row(ROW, exchange="binance", symbol="BTCUSDT")
    assert isinstance(k, Kline)
    assert (k.open_time, k.trade_count, k.close_e8) == (D0, 12, 8_400_050_000_000)
    ms = ROW.replace(b"1741910400000000", b"1741910400000").replace(
        b"1741910459999999", b"1741910459999"
    )
    assert parse_kline_row(ms, exchange="binance", symbol="BTCUSDT") == k


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((b"84001.00000000", b"83000.00000000"), "bad_kline:range"),
        ((b"1741910459999999", b"1741910460000000"), "bad_kline:close_time"),
        ((b",12,", b",x,"), "bad_number:trade_count"),
        ((b",0.50000000,", b",9.50000000,"), "bad_kline:taker_buy_volume"),
        ((b"84000.10000000", b"-1"), "bad_number:open"),
        ((b"84000.10000000", b"0.00000000"), "non_positive:open"),
        ((b",0", b""), "malformed_csv"),
    ],
)
def test_bad_kline_rows_are_rejected_with_a_reason(
    change: tuple[bytes, bytes], reason: str
) -> None:
    row = ROW[::-1].replace(change[0][::-1], change[1][::-1], 1)[::-1]
    res = parse_kline_row(row, exchange="binance", symbol="BTCUSDT")
    assert isinstance(res, Rejection) and res.reason == reason


def _kmap(trades, **kw) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for line in klines(trades, **kw).splitlines():
        k = parse_kline_row(line, exchange=trades[0].exchange, symbol=trades[0].symbol)
        assert isinstance(k, Kline)
        out[k.key] = k
    return out


def test_the_comparison_rules() -> None:
    trades = day_trades(21, "binance", "BTCUSDT", n=300)
    candles = {
        (c.exchange, c.symbol, c.open_time): c for c in fold_trades(trades, Interval.M1).values()
    }
    ks = _kmap(trades)
    res = compare_klines(candles, ks)
    assert res.ok and res.counts["match"] == len(candles)
    assert res.empty_klines == len(ks) - len(candles) > 0  # Binance's empty minutes
    # An altered close and a changed count: a mismatch naming the fields.
    key = sorted(candles)[3]
    bad = dict(ks)
    bad[key] = ks[key]._replace(close_e8=ks[key].close_e8 + 1, trade_count=ks[key].trade_count + 1)
    res = compare_klines(candles, bad)
    assert res.counts["mismatch"] == 1 and res.differences[0].differing == ("close", "trade_count")
    # A minute on one side only.
    gone = dict(ks)
    del gone[key]
    extra = dict(candles)
    del extra[sorted(candles)[5]]
    res = compare_klines(extra, gone)
    assert (res.counts["missing_in_klines"], res.counts["missing_in_batch"]) == (1, 1)
    # Quote volume: within trade_count units of the 8th decimal, not one more.
    c = candles[key]
    edge = c.quote_volume_e16 // 10**8 + c.trade_count  # ours floored, plus n units
    ok = compare_klines({key: c}, {key: ks[key]._replace(quote_volume_e8=edge - 1)})
    over = compare_klines({key: c}, {key: ks[key]._replace(quote_volume_e8=edge + 1)})
    assert ok.ok and over.differences[0].differing == ("quote_volume",)
    # A series the batch has but no klines: not compared, said.
    other = {(e, "ETHUSDT", t): v for (e, _, t), v in candles.items()}
    res = compare_klines({**candles, **other}, ks)
    assert res.ok and res.series_without_klines == [("binance", "ETHUSDT")]


@pytest.mark.parametrize(("micros", "header"), [(True, False), (False, True)])
def test_import_stores_klines_apart_and_a_reimport_replaces_its_own(
    tmp_path: Path, micros: bool, header: bool
) -> None:
    trades = day_trades(22, "binance-um", "BTCUSDT", n=200)
    path = tmp_path / "BTCUSDT-1m-2025-03-14.csv"
    path.write_bytes(klines(trades, micros=micros, header=header))
    lake = Lake(tmp_path / "lake")
    res = import_klines(lake, path, exchange="binance-um")
    stored = read_day_klines(lake, DAY)
    assert res.klines == len(stored) == len(_kmap(trades)) and res.rejected == 0
    assert set(stored.values()) == set(_kmap(trades).values())
    assert not (tmp_path / "lake" / "trades").exists()  # apart from trades
    again = import_klines(lake, path, exchange="binance-um")
    assert again.replaced_rows == res.klines and read_day_klines(lake, DAY) == stored
    # The spot file of the same name is another source: side by side.
    import_klines(lake, path, exchange="binance")
    assert len(read_day_klines(lake, DAY)) == 2 * len(stored)
    assert read_day_klines(lake, DAY, "binance-um") == stored


def test_klines_import_refuses_what_is_not_1m_klines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = day_trades(23, "binance", "BTCUSDT", n=50)
    five = tmp_path / "BTCUSDT-5m-2025-03-14.csv"
    five.write_bytes(klines(trades))
    with pytest.raises(ImportFormatError, match="only 1m klines"):
        import_klines(Lake(tmp_path / "lake"), five)
    as_klines = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    as_klines.write_bytes(spot_trades(trades))
    home = ["--home", str(tmp_path / "home")]
    assert main(["lake", "import", str(as_klines), "--format", "binance-klines", *home]) == 2
    assert "named like a binance-trades dump" in capsys.readouterr().err
    renamed = tmp_path / "mine.csv"
    renamed.write_bytes(um_trades(trades))
    argv = ["lake", "import", str(renamed), "--format", "binance-klines", "--symbol", "BTCUSDT"]
    assert main([*argv, *home]) == 2
    assert "looks like binance-trades" in capsys.readouterr().err
    garbage = tmp_path / "BTCUSDT-1m-2025-03-15.csv"
    garbage.write_bytes(b"1,2,3\n" * 10)
    with pytest.raises(ImportRejectedError, match="none of its 10 rows"):
        import_klines(Lake(tmp_path / "lake"), garbage)


# --------------------------------------------------------------------------- with Spark


@pytest.mark.slow
def test_batch_candles_against_klines_through_the_cli_and_dagster(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    spot = day_trades(31, "binance", "BTCUSDT", n=600)
    um = day_trades(32, "binance-um", "BTCUSDT", n=600)
    for name, trades, render in (("spot", spot, spot_trades), ("um", um, um_trades)):
        d = tmp_path / name
        d.mkdir()
        (d / "BTCUSDT-trades-2025-03-14.csv").write_bytes(render(trades))
        (d / "BTCUSDT-1m-2025-03-14.csv").write_bytes(
            klines(trades, micros=name == "spot", header=name == "um")
        )
        ex = "binance" if name == "spot" else "binance-um"
        for f in ("BTCUSDT-trades-2025-03-14.csv", "BTCUSDT-1m-2025-03-14.csv"):
            assert main(["lake", "import", str(d / f), "--exchange", ex, "--home", str(home)]) == 0
    # Klines before the batch: one line saying to run it.
    argv = ["reconcile", "--date", "2025-03-14", "--against", "klines", "--home", str(home)]
    assert main([*argv, "--format", "json"]) == 2
    assert "batch run --date 2025-03-14" in capsys.readouterr().err
    assert main(["batch", "run", "--date", "2025-03-14", "--home", str(home)]) == 0
    capsys.readouterr()
    assert main([*argv, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n_minutes = len(fold_trades(spot, Interval.M1)) + len(fold_trades(um, Interval.M1))
    assert report["match"] == n_minutes
    assert report["mismatch"] == report["missing_in_klines"] == report["missing_in_batch"] == 0
    assert "trade_count x 0.00000001" in report["quote_volume_rule"]
    assert main([*argv, "--exchange", "binance-um", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["match"] == len(fold_trades(um, Interval.M1))

    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "CRYPTOPIPE_HOME": str(home)}

    def check() -> dg.AssetCheckEvaluation:
        result = dg.materialize(
            [archived_trades, daily_batch],
            partition_key=str(DAY),
            resources={
                "pipeline": PipelineResource(
                    redis_url=env["REDIS_URL"], home=env["CRYPTOPIPE_HOME"]
                ),
                "spark": SparkResource(master="local[2]"),
            },
            raise_on_error=False,
        )
        assert result.success, [e for e in result.all_events if e.is_step_failure]
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    good = check()  # sealed by import: no Redis needed
    assert good.passed and good.metadata["match"].value == n_minutes

    # An altered kline (close changed) is a mismatch, in the CLI and in the check.
    kfile = tmp_path / "um" / "BTCUSDT-1m-2025-03-14.csv"
    lines = kfile.read_bytes().splitlines()
    k = next(i for i, line in enumerate(lines) if line[:1].isdigit() and b",0,0" not in line)
    cols = lines[k].split(b",")
    cols[4] = b"%s1" % cols[4][:-1] if not cols[4].endswith(b"1") else b"%s2" % cols[4][:-1]
    cols[2] = max(cols[2], cols[4], key=lambda v: float(v))  # keep the row valid
    cols[3] = min(cols[3], cols[4], key=lambda v: float(v))
    lines[k] = b",".join(cols)
    kfile.write_bytes(b"\n".join(lines) + b"\n")
    imp = ["lake", "import", str(kfile), "--exchange", "binance-um", "--home", str(home)]
    assert main(imp) == 0
    assert "replaced" in capsys.readouterr().out
    assert main([*argv, "--format", "json", "--fail-on-unexplained"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["mismatch"] == 1 and report["match"] == n_minutes - 1
    assert "close" in report["worst"][0]["differing"]
    bad = check()
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN
    assert bad.metadata["mismatch"].value == 1
    assert os.path.exists(home / "lake" / "reconciliation" / "date=2025-03-14" / "klines.json")
