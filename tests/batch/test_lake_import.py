"""``lake import``: every line gets exactly the domain parser's outcome, fast path or not."""

from __future__ import annotations

import zipfile
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.dump_import import import_dump, parse_block
from cryptopipe.cli import main
from lake.layout import Lake
from lake.schemas import MAX_LAKE_TRADE_ID
from lake.trades import read_rejects, read_trades
from marketdata.parsing import MAX_PAYLOAD_BYTES, parse_message
from marketdata.trade import Rejection, Trade

DAY = date(2025, 3, 14)
T_MS = 1_741_910_400_000  # 2025-03-14T00:00:00Z
T_US = T_MS * 1000

# Lines as they appear in a dump, with what makes each one tricky.
TRICKY: list[bytes] = [
    b"1,84000.01000000,0.00100000,84.00001000,%d,True,True" % (T_US + 123),  # canonical
    b"2,84000.01,0.001,84.00001,%d,false" % T_MS,  # 6 columns, ms time
    b"3,1.5,2,3,1600000000000,true,true",  # 2020, ms
    b"4,1.5,2,3,99999999999999,true,true",  # 10^14 - 1: ms, past 2100
    b"5,1.5,2,3,100000000000000,true,true",  # 10^14: us, before 2009
    b"6,1.5,2,3,1230940800000,true,true",  # the first accepted ms
    b"7,1.5,2,3,1230940799999,true,true",  # one ms too early
    b"8,1.5,2,3,4102444799999,true,true",  # the last accepted ms
    b"9,1.5,2,3,4102444800000,true,true",  # 2100-01-01: too late
    b"10,1.5,2,3,4102444799999999,true,true",  # the last accepted us
    b"11,1.5,2,3,4102444800000000,true,true",  # 2100 in us
    b"12,1.5,2,3,17419104000001230,true,true",  # 17 digits
    b"007,0084000.5,00.1,x,%d,True" % T_MS,  # leading zeros
    b"13,1.123456780,1,1,%d,true" % T_MS,  # 9th fractional digit is a zero
    b"14,1.123456789,1,1,%d,true" % T_MS,  # too precise
    b"15,1,1.000000001,1,%d,true" % T_MS,  # too precise quantity
    b"16,0.00000000,1,1,%d,true" % T_MS,  # zero price
    b"17,1,0,1,%d,true" % T_MS,  # zero quantity
    b"18,-1.5,1,1,%d,true" % T_MS,  # negative
    b"19,1e5,1,1,%d,true" % T_MS,  # exponent
    b"20,+5,1,1,%d,true" % T_MS,  # sign
    b"21,1_000,1,1,%d,true" % T_MS,  # underscore
    b"22,NaN,1,1,%d,true" % T_MS,
    b"23,Infinity,1,1,%d,true" % T_MS,
    b"24,.5,1,1,%d,true" % T_MS,
    b"25,5.,1,1,%d,true" % T_MS,
    b"26,.,1,1,%d,true" % T_MS,
    b" 27 , 1.5 ,2,3, %d , true " % T_MS,  # spaces: stripped by the parser
    b"28,1.5,2,3,%d,true\t" % T_MS,  # tab
    b"29,1.5,2,3,%d,true\x1c" % T_MS,  # \x1c: whitespace to str.strip
    b'"30","1.5","2","3","%d","true"' % T_MS,  # quoted
    "٣١,1.5,2,3,%d,true".encode() % T_MS,  # Arabic-Indic digits
    b"32,1.5\xff,2,3,%d,true" % T_MS,  # not UTF-8
    b"33,1.5,2,3,%d" % T_MS,  # 5 columns
    b"34,1.5,2,3,%d,true,true,extra" % T_MS,  # 8 columns
    b"35,1.5,2,3,%d,yes,true" % T_MS,  # bad bool
    b"36,1.5,2,3,%d,TRUE,true" % T_MS,  # upper case bool
    b"9999999999999999999,1.5,2,3,%d,true" % T_MS,  # 19 digits: over int64
    b"999999999999999999,1.5,2,3,%d,true" % T_MS,  # 18 digits: fits
    b"123456789012345678901,1.5,2,3,%d,true" % T_MS,  # 21 digits
    b"37,12345678901.5,2,3,%d,true" % T_MS,  # price >= 10^10
    b"38,9999999999.99999999,2,3,%d,true" % T_MS,  # the largest price
    b"39,1.5,999999999999.99999999,3,%d,true" % T_MS,  # the largest quantity (> int64 e8)
    b"40,1.5,1000000000000,3,%d,true" % T_MS,  # quantity >= 10^12
    b"41,1.5,0.00000001,3,%d,true" % T_MS,  # the smallest quantity
    b"42,1.5,2,3,%d,true," % T_MS,  # trailing comma: empty 7th column
    b"43,1.5,2,,%d,true" % T_MS,  # empty quoteQty
    "44,1.5,2,é,%d,true".encode() % T_MS,  # non-ASCII in an ignored column
    b"45,1.5,2,3,%d,true\r" % T_MS,  # CR before LF
    b"46,1.5,2,3,%d,true\r\r" % T_MS,  # two CRs
    b"47,1.5,\r2,3,%d,true" % T_MS,  # a lone CR inside
    b"48,1.5,2,3,%d,true\x00" % T_MS,  # NUL
    b"",  # blank line: skipped
    b"   ",  # whitespace-only: skipped
    b"id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch",  # "price" not on line 1: a row
    b"49," + b"1" * (MAX_PAYLOAD_BYTES + 10) + b",2,3,%d,true" % T_MS,  # oversized
    b"50,1.5,2,3,%d,false,False" % (T_US + 86_399_999_999),  # last us of the day
    b"51,1.5,2,3,%d,False,True" % (T_US + 86_400_000_000),  # next day
    b"52,1.5,2,3,%d,true,true" % (T_US - 1),  # previous day
    b"1,84000.01000000,0.00100000,84.00001000,%d,True,True" % (T_US + 123),  # duplicate: kept
]


def expected_outcomes(lines: list[bytes]) -> list[tuple[int, Trade | Rejection]]:
    """The reference: parse_message per line, the way feed replay splits lines."""
    out: list[tuple[int, Trade | Rejection]] = []
    for n, line in enumerate(lines, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip() or (n == 1 and b"price" in raw.lower()):
            continue
        res = parse_message(raw, fmt="binance-csv", exchange="binance", symbol="BTCUSDT")
        if isinstance(res, Trade) and res.trade_id > MAX_LAKE_TRADE_ID:
            # The lake holds int64 ids (documented in docs/batch.md).
            res = Rejection("bad_number:trade_id", raw, "binance")
        out.append((n, res))
    return out


def split_outcome(
    outcomes: list[tuple[int, Trade | Rejection]],
) -> tuple[list[Trade], list[tuple[int, str, bytes]]]:
    trades = [r for _, r in outcomes if isinstance(r, Trade)]
    rejects = [(n, r.reason, r.payload) for n, r in outcomes if isinstance(r, Rejection)]
    return trades, rejects


def block_outcome(data: bytes, *, fast: bool) -> tuple[list[Trade], list[tuple[int, str, bytes]]]:
    from lake.arrow import trades_from_table

    block = parse_block(data, 1, exchange="binance", symbol="BTCUSDT", fast=fast)
    trades = trades_from_table(block.trades.drop_columns(["line"]))
    return trades, [(n, r.reason, r.payload) for n, r in block.rejections]


def test_tricky_lines_match_the_parser_line_by_line() -> None:
    data = b"\n".join(TRICKY)  # the last line has no line feed
    expected = split_outcome(expected_outcomes(data.split(b"\n")))
    assert block_outcome(data, fast=True) == expected
    assert block_outcome(data, fast=False) == expected
    trades, rejects = expected
    # The corpus exercises both outcomes, and the fast path took most valid lines.
    assert len(trades) > 20 and len(rejects) > 20
    assert parse_block(data, 1, exchange="binance", symbol="BTCUSDT").slow < len(TRICKY) - 5


def test_header_on_line_one_is_skipped() -> None:
    data = b"id,price,qty,quoteQty,time,isBuyerMaker\n" + TRICKY[0] + b"\n"
    block = parse_block(data, 1, exchange="binance", symbol="BTCUSDT")
    assert block.trades.num_rows == 1 and block.skipped == 1 and not block.rejections


def test_import_of_tricky_file_equals_parser_and_partitions_by_day(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    path.write_bytes(b"\r\n".join(TRICKY) + b"\r\n")
    lake = Lake(tmp_path / "lake")
    # Tiny blocks: lines are cut across many reads, and blocks run in parallel.
    res = import_dump(lake, path, block_bytes=97, max_rejected_share=1.0)
    outcomes = expected_outcomes((b"\r\n".join(TRICKY) + b"\r\n").split(b"\n"))
    trades, rejects = split_outcome(outcomes)
    stored = read_trades(lake, DAY) + read_trades(lake, date(2025, 3, 15))
    stored += read_trades(lake, date(2025, 3, 13)) + read_trades(lake, date(2020, 9, 13))
    stored += read_trades(lake, date(2009, 1, 3)) + read_trades(lake, date(2099, 12, 31))
    assert sorted(stored) == sorted(trades)
    assert res.trades == len(trades) and res.rejected == len(rejects)
    table = read_rejects(lake, DAY)
    got = sorted(
        zip(
            [int(x) for x in table.column("source_id").to_pylist()],
            table.column("reason").to_pylist(),
            table.column("payload").to_pylist(),
            strict=True,
        )
    )
    assert got == sorted(rejects)
    # Each day's file is named after the lines it holds.
    names = sorted(p.name for p in (tmp_path / "lake" / "trades").glob("date=2025-03-1*/*"))
    next_day = next(i for i, line in enumerate(TRICKY, 1) if line.startswith(b"51,"))
    src = "binance.BTCUSDT.trades.BTCUSDT-trades-2025-03-14"
    assert f"import~{src}~{next_day}~{next_day}.parquet" in names
    assert f"_IMPORTED~{src}.json" in names
    # Only the day the name covers is marked complete.
    assert res.sealed_days == [DAY]


def day_lines(n: int, first_id: int = 1000) -> bytes:
    rows = [
        b"%d,%d.%08d,0.%08d,1,%d,%s,True"
        % (
            first_id + i,
            84000 + i % 7,
            i * 37 % 10**8,
            1 + i % 99,
            T_US + i * 1000,
            b"True" if i % 3 else b"False",
        )
        for i in range(n)
    ]
    return b"\n".join(rows) + b"\n"


def test_reimport_rewrites_the_same_files_and_drops_stale_ones(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = tmp_path / "ETHUSDT-trades-2025-03-14.csv"
    path.write_bytes(day_lines(100))
    import_dump(lake, path)
    import_dump(lake, path)
    d = tmp_path / "lake" / "trades" / "date=2025-03-14"
    src = "binance.ETHUSDT.trades.ETHUSDT-trades-2025-03-14"
    assert sorted(p.name for p in d.iterdir()) == [
        f"_IMPORTED~{src}.json",
        f"import~{src}~1~100.parquet",
    ]
    # A longer version of the same dump replaces the shorter one, and says so.
    path.write_bytes(day_lines(150))
    res = import_dump(lake, path)
    assert sorted(p.name for p in d.iterdir() if p.suffix == ".parquet") == [
        f"import~{src}~1~150.parquet"
    ]
    assert len(res.removed) == 1 and res.replaced_rows == 100
    assert len(read_trades(lake, DAY)) == 150
    # The zip of the same dump has the same stem: it rewrites the same file.
    zpath = tmp_path / "ETHUSDT-trades-2025-03-14.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ETHUSDT-trades-2025-03-14.csv", day_lines(150))
    import_dump(lake, zpath)
    assert len(read_trades(lake, DAY)) == 150
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_file_schema_is_exact_decimal(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = tmp_path / "SOLUSDT-trades-2025-03-14.csv"
    path.write_bytes(day_lines(10))
    res = import_dump(lake, path)
    schema = pq.read_schema(res.files[0])
    assert str(schema.field("price").type) == "decimal128(18, 8)"
    assert str(schema.field("quantity").type) == "decimal128(20, 8)"
    assert str(schema.field("event_time").type) == "int64"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(
            st.sampled_from(
                [
                    "1",
                    "0",
                    "007",
                    "12.5",
                    "0.00000001",
                    "1.123456789",
                    "1.10",
                    "-1",
                    " 2",
                    "",
                    "true",
                    "True",
                    "FALSE",
                    "1741910400000",
                    "1741910400000123",
                    "x",
                    "1e3",
                    "\r",
                    "é",
                    "9999999999",
                    "99999999999",
                    "1.",
                    ".1",
                    "\t",
                    "\x1c",
                ]
            ),
            min_size=3,
            max_size=9,
        ).map(lambda cols: ",".join(cols).encode()),
        min_size=1,
        max_size=30,
    )
)
def test_fast_path_equals_parser_on_generated_lines(lines: list[bytes]) -> None:
    data = b"\n".join(lines)
    assert block_outcome(data, fast=True) == split_outcome(expected_outcomes(data.split(b"\n")))


def test_cli_lake_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "BTCUSDT-trades-2025-03-14.csv"
    path.write_bytes(day_lines(20) + b"garbage\n")
    home = tmp_path / "home"
    # 1 row of 21 rejected: over the default 1%, nothing is imported.
    assert main(["lake", "import", str(path), "--format", "binance-csv", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "1 of 21 rows rejected" in err and "missing_field:price 1" in err
    assert "line 21" in err and "--max-rejected-share" in err
    assert read_trades(Lake(home / "lake"), DAY) == []
    assert read_rejects(Lake(home / "lake"), DAY).num_rows == 1  # the reasons are kept
    args = ["lake", "import", str(path), "--format", "binance-trades", "--home", str(home)]
    assert main([*args, "--max-rejected-share", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "20 trades" in out and "1 rejected" in out
    assert len(read_trades(Lake(home / "lake"), DAY)) == 20
    # --symbol overrides the file name's symbol.
    other = tmp_path / "mydump.csv"
    other.write_bytes(day_lines(5))
    assert main(["lake", "import", str(other), "--symbol", "ethusdt", "--home", str(home)]) == 0
    assert {t.symbol for t in read_trades(Lake(home / "lake"), DAY)} == {"BTCUSDT", "ETHUSDT"}
    # Without a symbol anywhere: a one-line error.
    assert main(["lake", "import", str(other), "--home", str(home)]) == 2
    assert "--symbol" in capsys.readouterr().err
