"""The trade-id index in a trade file's footer, and what it proves.

Each trade file carries, per (exchange, symbol), its id range, row count and
whether its ids are distinct. When every file of a day has one and no two files'
ranges overlap, the day holds no duplicate trade key, and the batch job skips its
deduplication shuffle (docs/batch.md).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from lake.layout import Lake

#: Footer key of a trade file's trade-id index (JSON list of :class:`TradeKeyRange`).
TRADE_KEYS_META = "cryptopipe.trade_keys"


@dataclass(frozen=True)
class TradeKeyRange:
    """The trade ids of one (exchange, symbol) in one trade file.

    Attributes:
        exchange: the exchange.
        symbol: the symbol.
        min_id: the smallest trade id.
        max_id: the largest trade id.
        rows: how many rows.
        distinct: whether the file holds each of these trade ids once only.

    """

    exchange: str
    symbol: str
    min_id: int
    max_id: int
    rows: int
    distinct: bool


def summarize_trade_keys(table: pa.Table) -> list[TradeKeyRange]:
    """Per (exchange, symbol): the id range, the row count and whether ids are distinct."""
    if not table.num_rows:
        return []
    agg = table.group_by(["exchange", "symbol"]).aggregate(
        [
            ("trade_id", "min"),
            ("trade_id", "max"),
            ("trade_id", "count"),
            ("trade_id", "count_distinct"),
        ]
    )
    return [
        TradeKeyRange(
            r["exchange"],
            r["symbol"],
            r["trade_id_min"],
            r["trade_id_max"],
            r["trade_id_count"],
            r["trade_id_count"] == r["trade_id_count_distinct"],
        )
        for r in agg.to_pylist()
    ]


def merge_trade_key_ranges(parts: Iterable[TradeKeyRange]) -> list[TradeKeyRange]:
    """Ranges of several pieces (row groups, files) combined per (exchange, symbol).

    The result is ``distinct`` only when every piece is and no two pieces' id
    ranges overlap: a sufficient condition, checked exactly.
    """
    groups: dict[tuple[str, str], list[TradeKeyRange]] = {}
    for p in parts:
        groups.setdefault((p.exchange, p.symbol), []).append(p)
    out = []
    for (ex, sym), ranges in sorted(groups.items()):
        ranges.sort(key=lambda r: (r.min_id, r.max_id))
        disjoint = all(a.max_id < b.min_id for a, b in itertools.pairwise(ranges))
        out.append(
            TradeKeyRange(
                ex,
                sym,
                ranges[0].min_id,
                max(r.max_id for r in ranges),
                sum(r.rows for r in ranges),
                disjoint and all(r.distinct for r in ranges),
            )
        )
    return out


def read_trade_key_ranges(lake: Lake, path: str) -> list[TradeKeyRange] | None:
    """The trade-id index a trade file carries in its footer (``None`` if it has none)."""
    meta = pq.read_metadata(path, filesystem=lake.fs).metadata or {}
    raw = meta.get(TRADE_KEYS_META.encode())
    if raw is None:
        return None
    try:
        return [TradeKeyRange(**r) for r in json.loads(raw)]
    except (ValueError, TypeError):
        return None


def proves_distinct(lake: Lake, paths: Sequence[str]) -> bool:
    """Whether the files' trade-id indexes prove no trade key occurs twice among them.

    True when every file has an index (:data:`TRADE_KEYS_META`), each file's ids are
    distinct per (exchange, symbol), and no two files' id ranges of the same
    (exchange, symbol) overlap. The batch job then skips its deduplication shuffle.
    """
    parts: list[TradeKeyRange] = []
    for path in paths:
        ranges = read_trade_key_ranges(lake, path)
        if ranges is None:
            return False
        parts.extend(ranges)
    return all(r.distinct for r in merge_trade_key_ranges(parts))
