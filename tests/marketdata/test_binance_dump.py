"""One grammar of a dump row for both fast paths (speed layer and lake import)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from batch.dump_import import FAST_LINE
from marketdata.binance_dump import row_pattern
from streaming.fastparse import _CSV_ONE

ROWS = {
    "1,100.00000000,0.50000000,50.00000000,1741910400000,true,true": True,
    "1,100.00000000,0.50000000,50.00000000,1741910400000123,False": True,
    "999999999999999999,1.00000000,1.00000000,x,1741910400000,True,": True,
    "9999999999999999999,1.00000000,1.00000000,x,1741910400000,true": False,  # 19 digits
    "1,12345678901.00000000,1.00000000,x,1741910400000,true": False,  # 11 integer digits
    "1,100.00000000,0.50000000,5 0,1741910400000,true": False,  # a space
    "1,100.00000000,0.50000000,50,1741910400000,yes": False,
    "1,-100.00000000,0.50000000,50,1741910400000,true": False,
    "1,100.00000000,0.50000000,50,17419104000000000,true": False,  # 17-digit time
    "1,1e2,0.50000000,50,1741910400000,true": False,
}
SHORT_FRACTIONS = "1,100.5,2,50,1741910400000,true"


def test_the_grammar_admits_exactly_the_rows_beyond_doubt() -> None:
    loose = re.compile(row_pattern(capture=False, exact_fraction=False))
    for row, ok in ROWS.items():
        assert bool(loose.fullmatch(row)) is ok, row
        assert bool(_CSV_ONE.fullmatch(row.encode())) is ok, row
    assert loose.fullmatch(SHORT_FRACTIONS)
    assert not _CSV_ONE.fullmatch(SHORT_FRACTIONS.encode())  # 8 fractional digits only


def test_the_lake_imports_re2_expression_agrees_with_python() -> None:
    rows = [*ROWS, SHORT_FRACTIONS]
    lines = pa.array([f"{r}\r\n".encode() for r in rows], pa.large_binary())
    got = pc.match_substring_regex(lines, FAST_LINE).to_pylist()
    assert got == [ROWS.get(r, True) for r in rows]
