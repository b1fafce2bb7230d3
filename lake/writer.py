"""Writing the lake: atomic Parquet files, and the append-only trade writer.

The archive flow (bytewax) writes what it drains from the raw log with
:class:`LakeWriter`, ``cryptopipe lake import`` writes history with it, and the
batch job reads what they wrote (docs/batch.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from lake.arrow import rejects_table, split_by_day, trades_table
from lake.layout import Lake, SourceRange, as_lake
from lake.schemas import MAX_LAKE_TRADE_ID, PARQUET_OPTIONS
from lake.tradekeys import (
    TRADE_KEYS_META,
    TradeKeyRange,
    merge_trade_key_ranges,
    summarize_trade_keys,
)
from marketdata.timeutil import day_of_ms, now_ms
from marketdata.trade import Rejection, Trade


class AtomicParquetWriter:
    """A Parquet file written under a hidden name and renamed into place on commit.

    With ``index_trade_keys``, the footer gets the file's trade-id index
    (:func:`summarize_trade_keys`, merged over the row groups).
    """

    def __init__(
        self, lake: Lake, directory: str, schema: pa.Schema, *, index_trade_keys: bool = False
    ) -> None:
        self.lake = lake
        self.directory = directory
        lake.prepare_dir(directory)
        self.temp = lake.temp_path(f"{directory}/pending.parquet")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.temp, schema, filesystem=lake.fs, **PARQUET_OPTIONS
        )
        self.rows = 0
        self._index: list[TradeKeyRange] | None = [] if index_trade_keys else None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows (one row group per call)."""
        assert self._writer is not None, "writer already closed"
        if table.num_rows:
            self._writer.write(table)
            self.rows += table.num_rows
            if self._index is not None:
                t = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
                self._index.extend(summarize_trade_keys(t))

    def commit(self, name: str, *, durable: bool = True) -> str:
        """Close the file and rename it to ``directory/name``; returns the final path."""
        assert self._writer is not None, "writer already closed"
        if self._index is not None:
            index = [r.__dict__ for r in merge_trade_key_ranges(self._index)]
            self._writer.add_key_value_metadata({TRADE_KEYS_META: json.dumps(index)})
        self._writer.close()
        self._writer = None
        final = f"{self.directory}/{name}"
        self.lake.commit(self.temp, final, durable=durable)
        return final

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.lake.remove(self.temp)


def oversized_id_rejection(trade: Trade) -> Rejection:
    """A trade whose id does not fit the lake's int64 column, as a rejection.

    The lake (and Spark) hold int64; the parsers reject larger ids already
    (``marketdata.parsing.MAX_TRADE_ID``), but :meth:`LakeWriter.write_trades`
    takes ``Trade`` objects from anywhere. The payload is the trade's JSON, since
    the writer never saw the raw row.
    """
    return Rejection(
        "bad_number:trade_id",
        orjson.dumps(trade.to_json_dict()),
        trade.exchange,
        f"trade_id {trade.trade_id} does not fit the lake's int64",
    )


# --------------------------------------------------------------------------- writer


@dataclass
class WriteResult:
    """What one :meth:`LakeWriter.write_trades` call wrote."""

    files: list[str] = field(default_factory=list)
    trades: int = 0
    rejections: int = 0
    days: list[date] = field(default_factory=list)


class LakeWriter:
    """Writes validated trades and rejections into the lake, one file per day and source range.

    Example (the archive flow, after draining entries ``a .. b`` of a raw-log shard)::

        writer = LakeWriter(settings.lake)
        writer.write_trades(trades, rejections, SourceRange.stream(RAW_STREAM, a, b),
                            rejection_ids=ids_of_rejected_entries)
        # only now: advance ARCHIVE_WATERMARK_KEY, trim the raw log up to b
    """

    def __init__(
        self,
        lake: str | os.PathLike[str] | Lake,
        *,
        durable: bool = True,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.lake = as_lake(lake)
        self.durable = durable
        self.clock = clock

    def write_trades(
        self,
        trades: Iterable[Trade],
        rejections: Iterable[Rejection] = (),
        source: SourceRange | None = None,
        *,
        rejection_ids: Sequence[str] | None = None,
        reject_day: date | None = None,
    ) -> WriteResult:
        """Write one source range's trades (split by UTC day) and its rejections.

        Each day's trades go to ``trades/date=D/<source.file_name>``; writing the
        same range again replaces those files (idempotent). Trades are stored as
        given: duplicates are the batch job's business. A trade whose id does not
        fit int64 becomes a ``bad_number:trade_id`` rejection.

        Rejections go to ``rejects/date=R/<source.file_name>``, where ``R`` is
        ``reject_day``, else the day of the first stream id of ``source``, else the
        earliest trade's day, else today (UTC).

        Args:
            trades: validated trades of this range, in any order.
            rejections: the range's rejections (reason and raw payload).
            source: the source ids the range covers; required.
            rejection_ids: per rejection, its source id (stream entry id, line);
                defaults to ``source.first`` for each.
            reject_day: the partition for the rejections (see above).

        Returns:
            The files written and the counts.

        Raises:
            ValueError: no ``source``, or ``rejection_ids`` of the wrong length.

        """
        source, rejects, ids = _check_range(source, rejections, rejection_ids)
        kept: list[Trade] = []
        for t in trades:
            if not 0 <= t.trade_id <= MAX_LAKE_TRADE_ID:
                rejects.append(oversized_id_rejection(t))
                ids.append(source.first)
                continue
            kept.append(t)
        return self._write_range(trades_table(kept), rejects, ids, source, reject_day)

    def write_trade_table(
        self,
        table: pa.Table,
        rejections: Iterable[Rejection] = (),
        source: SourceRange | None = None,
        *,
        rejection_ids: Sequence[str] | None = None,
        reject_day: date | None = None,
    ) -> WriteResult:
        """:meth:`write_trades` for trades already in a :data:`TRADES_SCHEMA` table.

        The archive flow's path: a bucket's trades are never :class:`Trade` objects
        (a burst minute's worth of them is most of a flow's memory otherwise). The
        files are those :meth:`write_trades` writes for the same trades in the same
        order.
        """
        source, rejects, ids = _check_range(source, rejections, rejection_ids)
        return self._write_range(table, rejects, ids, source, reject_day)

    def _write_range(
        self,
        table: pa.Table,
        rejects: list[Rejection],
        ids: list[str],
        source: SourceRange,
        reject_day: date | None,
    ) -> WriteResult:
        by_day = split_by_day(table)
        result = WriteResult()
        for day in sorted(by_day):
            rows = by_day[day]
            path = f"{self.lake.trades_dir(day)}/{source.file_name}"
            self._write_table(path, rows, index_trade_keys=True)
            result.files.append(path)
            result.trades += rows.num_rows
            result.days.append(day)
        if rejects:
            rday = reject_day or source.stream_day()
            if rday is None:
                rday = min(by_day) if by_day else day_of_ms(self.clock())
            path = f"{self.lake.rejects_dir(rday)}/{source.file_name}"
            self._write_table(path, rejects_table(rejects, source.source, ids))
            result.files.append(path)
            result.rejections = len(rejects)
        return result

    def _write_table(self, final: str, table: pa.Table, *, index_trade_keys: bool = False) -> None:
        directory = final.rpartition("/")[0]
        writer = AtomicParquetWriter(
            self.lake, directory, table.schema, index_trade_keys=index_trade_keys
        )
        try:
            writer.write(table)
            writer.commit(final.rpartition("/")[2], durable=self.durable)
        except BaseException:
            writer.abort()
            raise


def _check_range(
    source: SourceRange | None,
    rejections: Iterable[Rejection],
    rejection_ids: Sequence[str] | None,
) -> tuple[SourceRange, list[Rejection], list[str]]:
    if source is None:
        msg = "write_trades needs the source range the trades came from (SourceRange)"
        raise ValueError(msg)
    rejects = list(rejections)
    ids = list(rejection_ids) if rejection_ids is not None else [source.first] * len(rejects)
    if len(ids) != len(rejects):
        msg = f"{len(ids)} rejection ids for {len(rejects)} rejections"
        raise ValueError(msg)
    return source, rejects, ids


def write_trades(
    lake: str | os.PathLike[str] | Lake,
    trades: Iterable[Trade],
    rejections: Iterable[Rejection] = (),
    source: SourceRange | None = None,
    **kwargs: Any,
) -> WriteResult:
    """Shorthand for ``LakeWriter(lake).write_trades(...)``."""
    return LakeWriter(lake).write_trades(trades, rejections, source, **kwargs)
