"""The lake writer API the archive flow calls: layout, naming, exactness, idempotence."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake.arrow import decimal_array, decimal_unscaled, trades_table
from lake.layout import Lake, SourceRange, trade_files
from lake.tradekeys import proves_distinct, read_trade_key_ranges
from lake.trades import read_rejects, read_trades
from lake.writer import LakeWriter, write_trades
from marketdata.decimals import MAX_PRICE_E8, MAX_QUANTITY_E8
from marketdata.trade import Rejection, Trade

D1 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
D2 = D1 + 86_400_000


def trade(tid: int, t: int, price: int = 8_400_000_000_000, qty: int = 100_000) -> Trade:
    return Trade(
        exchange="binance",
        symbol="BTCUSDT",
        trade_id=tid,
        price_e8=price,
        quantity_e8=qty,
        event_time=t,
        is_buyer_maker=tid % 2 == 0,
    )


@pytest.mark.parametrize(
    "values",
    [
        [1, 0, 5, MAX_PRICE_E8 - 1],
        [MAX_QUANTITY_E8 - 1, 1, 2**63 - 1, 2**63, 2**64 + 7],  # beyond int64
        [-1, -(2**70)],  # negative words round-trip too (not stored, but exact)
        [],
    ],
)
def test_decimal_arrays_round_trip_exactly(values: list[int]) -> None:
    arr = decimal_array(values, pa.decimal128(38, 8))
    assert decimal_unscaled(arr) == values
    assert decimal_unscaled(arr.slice(1)) == values[1:]


def test_write_splits_by_day_and_names_files_by_source_range(tmp_path: Path) -> None:
    trades = [trade(1, D1 + 5), trade(2, D2 - 1), trade(3, D2), trade(4, D2 + 10)]
    rejection = Rejection("malformed_json", b"{oops", "binance", "bad")
    src = SourceRange.stream("md:trades:raw:1", "1741996800000-0", b"1741996800500-3")
    res = write_trades(tmp_path, trades, [rejection], src, rejection_ids=["1741996800100-0"])
    name = "stream~md_trades_raw_1~1741996800000-0~1741996800500-3.parquet"
    assert [Path(f).relative_to(tmp_path).as_posix() for f in res.files] == [
        f"trades/date=2025-03-14/{name}",
        f"trades/date=2025-03-15/{name}",
        f"rejects/date=2025-03-15/{name}",  # the day of the first stream id
    ]
    assert read_trades(tmp_path, date(2025, 3, 14)) == trades[:2]
    assert read_trades(tmp_path, date(2025, 3, 15)) == trades[2:]
    rej = read_rejects(tmp_path, date(2025, 3, 15)).to_pylist()
    assert rej == [
        {
            "source": "md:trades:raw:1",
            "source_id": "1741996800100-0",
            "exchange": "binance",
            "symbol": None,
            "reason": "malformed_json",
            "detail": "bad",
            "payload": b"{oops",
        }
    ]
    # Writing the same range again (a replay after recovery) replaces, never adds.
    write_trades(tmp_path, trades, [rejection], src, rejection_ids=["1741996800100-0"])
    assert read_trades(tmp_path, date(2025, 3, 14)) == trades[:2]
    assert len(read_rejects(tmp_path, date(2025, 3, 15))) == 1
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert leftovers == []


def test_extreme_values_are_exact_and_oversized_ids_become_rejections(tmp_path: Path) -> None:
    big = trade(2**63 - 1, D1, MAX_PRICE_E8 - 1, MAX_QUANTITY_E8 - 1)
    small = trade(0, D1 + 1, 1, 1)
    too_big_id = trade(2**63, D1 + 2)
    writer = LakeWriter(Lake(tmp_path), durable=False)
    res = writer.write_trades([big, small, too_big_id], [], SourceRange.rows("f", 1, 3))
    assert read_trades(tmp_path, date(2025, 3, 14)) == [big, small]
    assert res.trades == 2 and res.rejections == 1
    (rej,) = read_rejects(tmp_path, date(2025, 3, 14)).to_pylist()
    assert rej["reason"] == "bad_number:trade_id" and b"9223372036854775808" in rej["payload"]


def test_writer_needs_a_source_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SourceRange"):
        write_trades(tmp_path, [trade(1, D1)])
    with pytest.raises(ValueError, match="rejection ids"):
        write_trades(
            tmp_path,
            [],
            [Rejection("oversized", b"x", "binance")],
            SourceRange.rows("f", 1, 1),
            rejection_ids=[],
        )


def test_lake_module_imports_no_spark() -> None:
    code = (
        "import sys, lake.layout, lake.schemas, lake.arrow, lake.tradekeys, lake.writer, "
        "lake.trades, lake.candles, batch.dump_import\nprint('pyspark' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trade_id_index_proves_distinct_only_when_it_holds(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    day = date(2025, 3, 14)
    w = LakeWriter(lake, durable=False)
    w.write_trades([trade(i, D1 + i) for i in range(10)], [], SourceRange.rows("a", 1, 10))
    w.write_trades([trade(i, D1 + i) for i in range(10, 20)], [], SourceRange.rows("b", 1, 10))
    eth = [t._replace(symbol="ETHUSDT") for t in (trade(5, D1), trade(6, D1))]
    w.write_trades(eth, [], SourceRange.rows("c", 1, 2))  # same ids, other symbol: fine
    assert proves_distinct(lake, trade_files(lake, day))
    a_file = f"{lake.trades_dir(day)}/{SourceRange.rows('a', 1, 10).file_name}"
    (idx,) = read_trade_key_ranges(lake, a_file) or []
    assert (idx.min_id, idx.max_id, idx.rows, idx.distinct) == (0, 9, 10, True)
    # Overlapping ranges (a replay with other batch boundaries): not proven.
    w.write_trades([trade(19, D1 + 19), trade(20, D1 + 20)], [], SourceRange.rows("d", 1, 2))
    assert not proves_distinct(lake, trade_files(lake, day))
    lake.remove(f"{lake.trades_dir(day)}/{SourceRange.rows('d', 1, 2).file_name}")
    # A duplicate inside one file: not proven.
    w.write_trades([trade(30, D1), trade(30, D1)], [], SourceRange.rows("e", 1, 2))
    assert not proves_distinct(lake, trade_files(lake, day))
    lake.remove(f"{lake.trades_dir(day)}/{SourceRange.rows('e', 1, 2).file_name}")
    assert proves_distinct(lake, trade_files(lake, day))
    # A file without an index (written by another tool): not proven.
    pq.write_table(trades_table([trade(40, D1)]), f"{lake.trades_dir(day)}/other.parquet")
    assert not proves_distinct(lake, trade_files(lake, day))


_HALF_WRITTEN = """
import sys, time
from lake.arrow import trades_table
from lake.layout import Lake
from lake.schemas import TRADES_SCHEMA
from lake.writer import AtomicParquetWriter
from tests.lake.test_lake_layout import trade, D1
lake = Lake(sys.argv[1])
w = AtomicParquetWriter(lake, lake.trades_dir(__import__("datetime").date(2025, 3, 14)),
                        TRADES_SCHEMA)
w.write(trades_table([trade(1, D1)]))
print(w.temp, flush=True)
time.sleep(600)
"""


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    day = date(2025, 3, 14)
    lake = Lake(tmp_path)
    directory = lake.trades_dir(day)

    def half_written() -> tuple[subprocess.Popen[str], str]:
        cmd = [sys.executable, "-c", _HALF_WRITTEN, str(tmp_path)]
        root = Path(__file__).parents[2]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root)
        assert proc.stdout is not None
        temp = proc.stdout.readline().strip()
        assert temp and Path(temp).exists(), temp
        return proc, temp

    running, live = half_written()
    killed, orphan = half_written()
    killed.kill()
    killed.wait()
    try:
        other_host = Path(directory) / ".x.parquet.elsewhere-1-0123456789ab.tmp"
        other_host.write_bytes(b"another host's writer")
        assert Path(orphan).exists()
        assert read_trades(tmp_path, day) == []  # hidden from readers
        src = SourceRange.stream("md:trades:raw", "1741910400000-0", "1741910400000-0")
        write_trades(tmp_path, [trade(2, D1)], source=src)
        assert not Path(orphan).exists()
        assert Path(live).exists() and other_host.exists()
        assert read_trades(tmp_path, day) == [trade(2, D1)]
    finally:
        running.kill()
        running.wait()


def test_the_parsers_id_bound_is_the_lakes() -> None:
    # The archive flow writes parsed columns straight into int64 (no per-trade check).
    from lake.schemas import MAX_LAKE_TRADE_ID
    from marketdata.parsing import MAX_TRADE_ID

    assert MAX_TRADE_ID == MAX_LAKE_TRADE_ID == 2**63 - 1


def test_a_table_writes_the_files_the_trades_write(tmp_path: Path) -> None:
    # write_trade_table (the archive's path) = write_trades for the same rows.
    trades = [trade(i, D1 + i * 3_600_000 * 7) for i in range(1, 12)]  # four days
    src = SourceRange.stream("md:trades:raw", "1741996800000-0", "1741996800000-10")
    a = LakeWriter(Lake(tmp_path / "a"), durable=False).write_trades(trades, [], src)
    b = LakeWriter(Lake(tmp_path / "b"), durable=False).write_trade_table(
        trades_table(trades), [], src
    )
    assert a.days == b.days and len(a.days) == 4 and (a.trades, b.trades) == (11, 11)
    for fa, fb in zip(a.files, b.files, strict=True):
        assert Path(fa).relative_to(tmp_path / "a") == Path(fb).relative_to(tmp_path / "b")
        assert pq.read_table(fa).equals(pq.read_table(fb))
