"""Lake copies of the dead-letter and late streams: ``dlq/`` and ``late/`` (docs/storage.md).

Redis keeps the newest entries of ``md:trades:dlq`` and ``md:trades:late``; before it
trims one, the archive flow copies it here (:mod:`streaming.spill`), so nothing a
stream held is lost and reconciliation can read every late trade of a day. One file
holds a run of consecutive entries of one UTC day (of the entry id's time), named by
its first entry id: copying the same run again (after a crash between the file and
the mark) replaces the file with the same entries, or more, never a second copy.

Schema: ``entry_id`` (string, the Redis stream id), ``entry_ms`` and ``entry_seq``
(int64: its two parts, as the caller parsed them), ``fields`` (map string -> binary:
the entry's fields exactly as Redis held them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import date
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lake.layout import Lake, as_lake
from lake.writer import AtomicParquetWriter
from marketdata.timeutil import day_of_ms

SIDE_SCHEMA = pa.schema(
    [
        pa.field("entry_id", pa.string(), nullable=False),
        pa.field("entry_ms", pa.int64(), nullable=False),
        pa.field("entry_seq", pa.int64(), nullable=False),
        pa.field("fields", pa.map_(pa.string(), pa.binary()), nullable=False),
    ]
)

#: A stream entry as read back: its id and fields.
Entry = tuple[bytes, dict[bytes, bytes]]


class SideEntry(NamedTuple):
    """A stream entry to copy: its id, the id's two parts, its fields."""

    entry_id: bytes
    ms: int
    seq: int
    fields: dict[bytes, bytes]


def file_name(first_id: bytes | str) -> str:
    """The file holding a run that starts at ``first_id``."""
    raw = first_id.decode() if isinstance(first_id, bytes) else first_id
    return f"{raw}.parquet"


def write_side_entries(
    lake: str | os.PathLike[str] | Lake,
    kind: str,
    entries: Sequence[SideEntry],
    *,
    durable: bool = True,
) -> str:
    """Write a run of entries of one UTC day to ``<kind>/date=D/<first id>.parquet``.

    Replaces a file of the same run. Returns its path.
    """
    if not entries:
        msg = "no entries to write"
        raise ValueError(msg)
    lk = as_lake(lake)
    day = day_of_ms(entries[0].ms)
    if day_of_ms(entries[-1].ms) != day:
        msg = f"a run of {kind} entries spans more than {day}"
        raise ValueError(msg)
    table = pa.table(
        {
            "entry_id": [e.entry_id.decode() for e in entries],
            "entry_ms": [e.ms for e in entries],
            "entry_seq": [e.seq for e in entries],
            "fields": [[(k.decode(), v) for k, v in e.fields.items()] for e in entries],
        },
        schema=SIDE_SCHEMA,
    )
    writer = AtomicParquetWriter(lk, lk.side_dir(kind, day), SIDE_SCHEMA)
    writer.write(table)
    return writer.commit(file_name(entries[0].entry_id), durable=durable)


def read_side_entries(
    lake: str | os.PathLike[str] | Lake, kind: str, *, since: date | None = None
) -> Iterator[Entry]:
    """Every entry copied to ``kind``, in entry-id order, from day ``since`` on."""
    lk = as_lake(lake)
    for day in lk.list_days(kind):
        if since is not None and day < since:
            continue
        directory = lk.side_dir(kind, day)
        names = [n for n in lk.list_files(directory) if n.endswith(".parquet")]
        tables = [pq.read_table(f"{directory}/{n}", filesystem=lk.fs) for n in names]
        if not tables:
            continue
        table = pa.concat_tables(tables).sort_by(
            [("entry_ms", "ascending"), ("entry_seq", "ascending")]
        )
        seen: set[str] = set()
        for row in table.to_pylist():
            if row["entry_id"] in seen:  # runs never overlap; be safe if one did
                continue
            seen.add(row["entry_id"])
            yield row["entry_id"].encode(), {k.encode(): v for k, v in row["fields"]}
