"""The Parquet lake: layout, schemas and the append-only trade writer (DESIGN.md section 6).

Pure Python and pyarrow, no Spark: the archive flow (bytewax) imports this module to
write what it drains from the raw log, ``cryptopipe lake import`` writes history
with it, and the batch job reads what it wrote.

Layout under the lake root (a local directory, or any URI pyarrow and Spark both
read, e.g. ``s3://bucket/lake``)::

    trades/date=YYYY-MM-DD/<kind>~<source>~<first>~<last>.parquet
    trades/date=YYYY-MM-DD/_IMPORTED~<stem>.json          (lake import's day marker)
    rejects/date=YYYY-MM-DD/<kind>~<source>~<first>~<last>.parquet
    candles/source=batch|stream/interval=1m|...|1d/date=YYYY-MM-DD/part-*.parquet
    aggregates/date=YYYY-MM-DD/part-*.parquet

``date`` is the UTC day of the trade's ``event_time`` (of the candle's
``open_time``). A trade file's name is derived from the source ids it holds: the
same source range always gives the same name, so writing it again (a replay after
recovery, a re-import) replaces the file instead of adding a copy. Files are
written to a hidden temporary name (``.`` prefix, which Spark and pyarrow skip) and
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from marketdata.decimals import SCALE_DIGITS
from marketdata.timeutil import DAY_MS, day_of_ms, now_ms
from marketdata.trade import Rejection, Trade

if sys.byteorder != "little":  # pragma: no cover - Arrow decimals are little-endian words here
    msg = "batch.lake builds Arrow decimal buffers by hand and needs a little-endian machine"
    raise ImportError(msg)

#: Redis key holding the archive flow's watermark, ms since the epoch (a decimal
#: string). The archive flow sets it only after the trades up to it are durable in
#: the lake; with several raw-log shards, it is the minimum over the shards. A day D
#: is sealed once it is at or past D+1 00:00 plus the allowed lateness.
ARCHIVE_WATERMARK_KEY = "md:archive:watermark"

TRADES_DIR = "trades"
REJECTS_DIR = "rejects"
CANDLES_DIR = "candles"
AGGREGATES_DIR = "aggregates"
#: Prefix of the marker lake import writes beside a day's trades once a dump that
#: covers the whole day (for its symbol) is in (see :mod:`batch.sealing`).
IMPORT_MARKER_PREFIX = "_IMPORTED~"

#: Footer key of a trade file's trade-id index (JSON list of :class:`TradeKeyRange`).
TRADE_KEYS_META = "cryptopipe.trade_keys"

#: Largest trade id the lake holds (Parquet int64).
MAX_LAKE_TRADE_ID = 2**63 - 1

PRICE_TYPE = pa.decimal128(10 + SCALE_DIGITS, SCALE_DIGITS)  # price < 10^10
QUANTITY_TYPE = pa.decimal128(12 + SCALE_DIGITS, SCALE_DIGITS)  # quantity < 10^12

#: The typed, append-only trades table (one row per trade as archived; duplicates
#: may occur across files and are removed by the batch job).
TRADES_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("price", PRICE_TYPE, nullable=False),
        pa.field("quantity", QUANTITY_TYPE, nullable=False),
        pa.field("event_time", pa.int64(), nullable=False),  # ms since the epoch, UTC
        pa.field("is_buyer_maker", pa.bool_(), nullable=False),
    ]
)

#: Rows that failed validation, kept with their reason and the raw payload.
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # stream name or input file
        pa.field("source_id", pa.string(), nullable=False),  # stream entry id or line number
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
    ]
)

#: Parquet options shared by every trade file: int64-backed decimals where they fit
#: (Spark's vectorized reader is fastest on those), snappy for speed.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "snappy",
    "store_decimal_as_integer": True,
    "write_statistics": True,
}

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STREAM_ID = re.compile(r"^(\d{1,16})-\d{1,20}$")


# --------------------------------------------------------------------------- paths


def partition(day: date) -> str:
    """``date=YYYY-MM-DD``: the directory name of a day's partition."""
    return f"date={day.isoformat()}"


def _safe(part: str) -> str:
    cleaned = _NAME_UNSAFE.sub("_", part).strip("._") or "x"
    return cleaned[:120]


@dataclass(frozen=True)
class SourceRange:
    """The source ids a file holds; the file's name is derived from them.

    Attributes:
        kind: ``stream`` (the archive flow) or ``import`` (``cryptopipe lake import``).
        source: the raw-log stream (``md:trades:raw:3``) or the input file's stem.
        first: the first source id held: a stream entry id, or a line number.
        last: the last source id held (inclusive).

    """

    kind: str
    source: str
    first: str
    last: str

    @classmethod
    def stream(cls, stream: str, first_id: str | bytes, last_id: str | bytes) -> SourceRange:
        """The range of Redis stream entries ``first_id .. last_id`` (inclusive)."""
        f = first_id.decode() if isinstance(first_id, bytes) else first_id
        la = last_id.decode() if isinstance(last_id, bytes) else last_id
        return cls("stream", stream, f, la)

    @classmethod
    def rows(cls, stem: str, first_line: int, last_line: int) -> SourceRange:
        """Lines ``first_line .. last_line`` (1-based, inclusive) of an input file."""
        return cls("import", stem, str(first_line), str(last_line))

    @property
    def prefix(self) -> str:
        """``<kind>~<source>~``: every file of this source starts with it."""
        return f"{_safe(self.kind)}~{_safe(self.source)}~"

    @property
    def file_name(self) -> str:
        """``<kind>~<source>~<first>~<last>.parquet`` with unsafe characters replaced."""
        return f"{self.prefix}{_safe(self.first)}~{_safe(self.last)}.parquet"

    def stream_day(self) -> date | None:
        """UTC day of the first entry, when ``first`` is a Redis stream id."""
        m = _STREAM_ID.match(self.first)
        return day_of_ms(int(m.group(1))) if m else None


class Lake:
    """A lake root: a local directory or a URI, reached through ``pyarrow.fs``."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        text = os.fspath(uri)
        if "://" in text and not text.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(text)
            self.local = False
        else:
            path = text.removeprefix("file://")
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(path)
            self.local = True
        self.uri = text
        #: Directories already cleared of orphan temporary files by this process.
        self._swept: set[str] = set()

    def path(self, *parts: str) -> str:
        """A path under the root, in the file system's own form."""
        return "/".join([self.root.rstrip("/"), *parts])

    def trades_dir(self, day: date) -> str:
        """``trades/date=D``."""
        return self.path(TRADES_DIR, partition(day))

    def rejects_dir(self, day: date) -> str:
        """``rejects/date=D``."""
        return self.path(REJECTS_DIR, partition(day))

    def candles_dir(self, source: str, interval: str, day: date) -> str:
        """``candles/source=S/interval=I/date=D``."""
        return self.path(CANDLES_DIR, f"source={source}", f"interval={interval}", partition(day))

    def aggregates_dir(self, day: date) -> str:
        """``aggregates/date=D``."""
        return self.path(AGGREGATES_DIR, partition(day))

    def spark_uri(self, *parts: str) -> str:
        """The URI Spark (Hadoop) should use for a path under the root."""
        if self.local:
            return "file://" + self.path(*parts)
        return "/".join([self.uri.rstrip("/"), *parts])

    # -- listing

    def list_files(self, directory: str, *, hidden: bool = False) -> list[str]:
        """Base names of the files directly in ``directory`` (none if it is absent).

        Names starting with ``.`` or ``_`` (temporary files, markers) are left out
        unless ``hidden``, the way Spark and pyarrow datasets leave them out.
        """
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [i.base_name for i in infos if i.type == pafs.FileType.File]
        if not hidden:
            names = [n for n in names if not n.startswith((".", "_"))]
        return sorted(names)

    def list_days(self, top: str) -> list[date]:
        """Days that have a partition under ``top`` (e.g. ``trades``)."""
        out = []
        sel = pafs.FileSelector(self.path(top), allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("date="):
                try:
                    out.append(date.fromisoformat(info.base_name[5:]))
                except ValueError:
                    continue
        return sorted(out)

    def exists(self, path: str) -> bool:
        """Whether a file or directory exists."""
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    # -- atomic writes

    def temp_path(self, final: str) -> str:
        """A hidden sibling of ``final`` to write before renaming into place.

        The name carries the writer's host and pid, so that what a killed writer
        left behind can be told from a running writer's file
        (:meth:`remove_orphan_temps`).
        """
        directory, _, name = final.rpartition("/")
        return f"{directory}/.{name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"

    def remove_orphan_temps(self, directory: str) -> list[str]:
        """Delete the temporary files killed writers of this host left in ``directory``.

        A writer killed between creating its temporary file and renaming it into
        place leaves the file behind (hidden: readers never see it); the write it
        belonged to was, or will be, made again. A temporary file is an orphan when
        its name's host is this one and no process has its pid. Local lakes only:
        an object store keeps no partial object of a killed upload.

        Returns:
            The base names removed.

        """
        if not self.local:
            return []
        removed = []
        for name in self.list_files(directory, hidden=True):
            m = _TEMP_NAME.fullmatch(name)
            if m and m.group(1) == _HOST and not _pid_alive(int(m.group(2))):
                self.remove(f"{directory}/{name}")
                removed.append(name)
        return removed

    def prepare_dir(self, directory: str) -> None:
        """Create ``directory`` for atomic writes.

        The first time in this process, what killed writers left there goes
        (:meth:`remove_orphan_temps`).
        """
        self.mkdir(directory)
        if directory not in self._swept:
            self.remove_orphan_temps(directory)
            self._swept.add(directory)

    def commit(self, temp: str, final: str, *, durable: bool = True) -> None:
        """Rename a finished temporary file into place (atomic on a local disk).

        With ``durable`` (local lakes), the file's data is flushed to disk before the
        rename and the directory entry after it, so a crash right after this returns
        cannot lose the file: the archive flow trims the raw log on that promise.
        """
        if self.local:
            if durable:
                _fsync_path(temp)
            os.replace(temp, final)
            if durable:
                _fsync_path(os.path.dirname(final))
        else:
            self.fs.move(temp, final)

    def remove(self, path: str) -> None:
        """Delete a file if it exists."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def mkdir(self, directory: str) -> None:
        """Create a directory and its parents."""
        self.fs.create_dir(directory, recursive=True)

    def write_bytes(self, final: str, data: bytes, *, durable: bool = True) -> None:
        """Write a small file atomically."""
        self.prepare_dir(final.rpartition("/")[0])
        temp = self.temp_path(final)
        with self.fs.open_output_stream(temp) as out:
            out.write(data)
        self.commit(temp, final, durable=durable)

    def read_bytes(self, path: str) -> bytes:
        """A small file's content."""
        with self.fs.open_input_stream(path) as f:
            return bytes(f.read())


#: This host, as it appears in temporary file names (no ``-`` or ``.``: the name splits).
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", os.uname().nodename)[:40] or "host"
_TEMP_NAME = re.compile(r"\..+\.([A-Za-z0-9_]+)-(\d+)-[0-9a-f]{12}\.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        [("trade_id", "min"), ("trade_id", "max"), ("trade_id", "count"),
         ("trade_id", "count_distinct")]
    )  # fmt: skip
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


def trade_files(lake: Lake, day: date) -> list[str]:
    """Paths of the day's trade files."""
    directory = lake.trades_dir(day)
    return [f"{directory}/{n}" for n in lake.list_files(directory) if n.endswith(".parquet")]


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


# --------------------------------------------------------------------------- decimals


def decimal_array(values: np.ndarray | Sequence[int], typ: pa.DataType) -> pa.Array:
    """Arrow decimals from scaled integers (``price_e8`` -> ``decimal(18, 8)``), exactly.

    The integers are the decimals' unscaled values: no arithmetic, no rounding, and
    no ``Decimal`` objects (the 16-byte words are laid out directly).
    """
    n = len(values)
    words = np.empty((n, 2), dtype=np.int64)
    try:
        v = np.asarray(values, dtype=np.int64)
    except OverflowError:
        # Beyond int64 (quantities can reach 10^20 units): split each one in Python.
        lo = [x & 0xFFFF_FFFF_FFFF_FFFF for x in values]
        words[:, 0] = np.array(lo, dtype=np.uint64).view(np.int64)
        words[:, 1] = np.array([x >> 64 for x in values], dtype=np.int64)
    else:
        words[:, 0] = v
        words[:, 1] = v >> 63  # sign extension
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(words)])


def decimal_unscaled(arr: pa.Array | pa.ChunkedArray) -> list[int]:
    """The unscaled integers of a decimal128 array (``decimal(18, 8)`` -> ``price_e8``)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    if not pa.types.is_decimal128(arr.type):
        msg = f"expected a decimal128 column, got {arr.type}"
        raise TypeError(msg)
    if arr.null_count:
        msg = "decimal column has nulls"
        raise ValueError(msg)
    n = len(arr)
    if n == 0:
        return []
    buf = arr.buffers()[1]
    words = np.frombuffer(buf, dtype=np.int64, count=2 * (arr.offset + n))[2 * arr.offset :]
    words = words.reshape(n, 2)
    lo, hi = words[:, 0], words[:, 1]
    if np.array_equal(hi, lo >> 63):
        return lo.tolist()
    ulo = lo.view(np.uint64)
    return [(int(h) << 64) | int(u) for h, u in zip(hi.tolist(), ulo.tolist(), strict=True)]


# --------------------------------------------------------------------------- tables


def trades_table(trades: Sequence[Trade]) -> pa.Table:
    """Trades as a table of :data:`TRADES_SCHEMA` (ids must fit int64)."""
    cols = list(zip(*trades, strict=True)) if trades else [()] * 7
    return trades_table_from_columns(*cols)


def trades_table_from_columns(
    exchange: Sequence[str],
    symbol: Sequence[str],
    trade_id: Sequence[int],
    price_e8: Sequence[int],
    quantity_e8: Sequence[int],
    event_time: Sequence[int],
    is_buyer_maker: Sequence[bool],
) -> pa.Table:
    """A table of :data:`TRADES_SCHEMA` from the :class:`Trade` fields as columns.

    No ``Trade`` object is made: the archive flow builds its files from parsed
    columns this way (ids must fit int64).
    """
    return pa.Table.from_arrays(
        [
            pa.array(exchange, pa.string()),
            pa.array(symbol, pa.string()),
            pa.array(trade_id, pa.int64()),
            decimal_array(list(price_e8), PRICE_TYPE),
            decimal_array(list(quantity_e8), QUANTITY_TYPE),
            pa.array(event_time, pa.int64()),
            pa.array(is_buyer_maker, pa.bool_()),
        ],
        schema=TRADES_SCHEMA,
    )


def split_by_day(table: pa.Table) -> dict[date, pa.Table]:
    """A trades table's rows by the UTC day of their event time, in row order."""
    if not table.num_rows:
        return {}
    days = table.column("event_time").to_numpy() // DAY_MS
    lo, hi = int(days.min()), int(days.max())
    if lo == hi:
        return {day_of_ms(lo * DAY_MS): table}
    return {day_of_ms(int(k) * DAY_MS): table.filter(pa.array(days == k)) for k in np.unique(days)}


def trades_from_table(table: pa.Table) -> list[Trade]:
    """Rows of a :data:`TRADES_SCHEMA` table back as :class:`Trade` (exact)."""
    cols = [
        table.column("exchange").to_pylist(),
        table.column("symbol").to_pylist(),
        table.column("trade_id").to_pylist(),
        decimal_unscaled(table.column("price")),
        decimal_unscaled(table.column("quantity")),
        table.column("event_time").to_pylist(),
        table.column("is_buyer_maker").to_pylist(),
    ]
    return [Trade(*row) for row in zip(*cols, strict=True)]


def rejects_table(
    rejections: Sequence[Rejection],
    source: str,
    source_ids: Sequence[str],
    symbols: Sequence[str | None] | None = None,
) -> pa.Table:
    """Rejections as a table of :data:`REJECTS_SCHEMA`."""
    n = len(rejections)
    return pa.Table.from_arrays(
        [
            pa.array([source] * n, pa.string()),
            pa.array(list(source_ids), pa.string()),
            pa.array([r.exchange for r in rejections], pa.string()),
            pa.array(list(symbols) if symbols is not None else [None] * n, pa.string()),
            pa.array([r.reason for r in rejections], pa.string()),
            pa.array([r.detail for r in rejections], pa.string()),
            pa.array([bytes(r.payload) for r in rejections], pa.binary()),
        ],
        schema=REJECTS_SCHEMA,
    )


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
        writer.write_trades(trades, rejections, SourceRange.stream("md:trades:raw", a, b),
                            rejection_ids=ids_of_rejected_entries)
        # only now: advance md:archive:watermark, trim the raw log up to b
    """

    def __init__(
        self, lake: str | os.PathLike[str] | Lake, *, durable: bool = True,
        clock: Callable[[], int] = now_ms,
    ) -> None:  # fmt: skip
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
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


def read_trades(lake: str | os.PathLike[str] | Lake, day: date) -> list[Trade]:
    """Every trade row stored for ``day`` (duplicates included), via pyarrow.

    For tests and tools; the batch job reads with Spark.
    """
    lk = lake if isinstance(lake, Lake) else Lake(lake)
    out: list[Trade] = []
    for path in trade_files(lk, day):
        out.extend(trades_from_table(pq.read_table(path, filesystem=lk.fs, partitioning=None)))
    return out


def read_rejects(lake: str | os.PathLike[str] | Lake, day: date) -> pa.Table:
    """Every rejection stored for ``day`` (all sources), via pyarrow."""
    lk = lake if isinstance(lake, Lake) else Lake(lake)
    directory = lk.rejects_dir(day)
    tables = [
        pq.read_table(f"{directory}/{n}", filesystem=lk.fs, partitioning=None)
        for n in lk.list_files(directory)
    ]
    return pa.concat_tables(tables) if tables else REJECTS_SCHEMA.empty_table()


def import_marker_name(stem: str) -> str:
    """``_IMPORTED~<stem>.json``: the marker of one imported dump in a day's partition."""
    return f"{IMPORT_MARKER_PREFIX}{_safe(stem)}.json"


def write_import_marker(lake: Lake, day: date, stem: str, info: dict[str, Any]) -> str:
    """Record that a dump covering all of ``day`` (for its symbol) is imported."""
    path = f"{lake.trades_dir(day)}/{import_marker_name(stem)}"
    lake.write_bytes(path, json.dumps(info, sort_keys=True).encode())
    return path


def day_bounds(day: date) -> tuple[int, int]:
    """``[start, end)`` of a UTC day in ms."""
    start = (day - date(1970, 1, 1)).days * DAY_MS
    return start, start + DAY_MS
