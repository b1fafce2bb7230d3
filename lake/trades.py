"""Reading trades and rejections back from the lake with pyarrow (tests and tools).

The batch job reads trades with Spark (``batch/daily.py``); this module serves the
places that want them as domain objects without a Spark session.
"""

from __future__ import annotations

import os
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from lake.arrow import trades_from_table
from lake.layout import Lake, as_lake, trade_files
from lake.schemas import REJECTS_SCHEMA
from marketdata.trade import Trade


def read_trades(lake: str | os.PathLike[str] | Lake, day: date) -> list[Trade]:
    """Every trade row stored for ``day`` (duplicates included), via pyarrow.

    For tests and tools; the batch job reads with Spark.
    """
    lk = as_lake(lake)
    out: list[Trade] = []
    for path in trade_files(lk, day):
        out.extend(trades_from_table(pq.read_table(path, filesystem=lk.fs, partitioning=None)))
    return out


def read_rejects(lake: str | os.PathLike[str] | Lake, day: date) -> pa.Table:
    """Every rejection stored for ``day`` (all sources), via pyarrow."""
    lk = as_lake(lake)
    directory = lk.rejects_dir(day)
    tables = [
        pq.read_table(f"{directory}/{n}", filesystem=lk.fs, partitioning=None)
        for n in lk.list_files(directory)
    ]
    return pa.concat_tables(tables) if tables else REJECTS_SCHEMA.empty_table()
