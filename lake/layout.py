"""The lake's layout: where each kind of file lives, and atomic writes (docs/batch.md).

Layout under the lake root (a local directory, or any URI pyarrow and Spark both
read, e.g. ``s3://bucket/lake``)::

    trades/date=YYYY-MM-DD/<kind>~<source>~<first>~<last>.parquet
    trades/date=YYYY-MM-DD/_IMPORTED~<source>.json        (lake import's day marker)
    rejects/date=YYYY-MM-DD/<kind>~<source>~<first>~<last>.parquet
    klines/date=YYYY-MM-DD/import~<source>~<first>~<last>.parquet  (the exchange's 1m klines)
    candles/source=batch|stream/interval=1m|...|1d/date=YYYY-MM-DD/part-*.parquet
    aggregates/date=YYYY-MM-DD/part-*.parquet
    reconciliation/date=YYYY-MM-DD/report.json
    dlq/date=YYYY-MM-DD/<first entry id>.parquet   (copies of md:trades:dlq before trimming)
    late/date=YYYY-MM-DD/<first entry id>.parquet  (copies of md:trades:late before trimming)

``date`` is the UTC day of the trade's ``event_time`` (of the candle's
``open_time``). A trade file's name is derived from the source ids it holds: the
same source range always gives the same name, so writing it again (a replay after
recovery, a re-import) replaces the file instead of adding a copy. Files are
written to a hidden temporary name (``.`` prefix, which Spark and pyarrow skip) and
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow.fs as pafs

from marketdata.settings import Settings
from marketdata.timeutil import day_of_ms

TRADES_DIR = "trades"
REJECTS_DIR = "rejects"
CANDLES_DIR = "candles"
AGGREGATES_DIR = "aggregates"
RECONCILIATION_DIR = "reconciliation"
#: Copies of the dead-letter and late streams, taken before Redis trims them.
DLQ_DIR = "dlq"
LATE_DIR = "late"
#: The exchange's own candles (Binance 1m klines), imported as a witness, apart from trades.
KLINES_DIR = "klines"
#: Prefix of the marker lake import writes beside a day's trades once a dump that
#: covers the whole day (for its symbol) is in (see :mod:`batch.sealing`).
IMPORT_MARKER_PREFIX = "_IMPORTED~"

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


@dataclass(frozen=True)
class ImportSource:
    """What one ``cryptopipe lake import`` of one file writes, and so may replace.

    Imports are told apart by exchange (a market is an exchange name of its own:
    ``binance``, ``binance-um``), symbol, kind (``trades``, ``aggtrades``,
    ``klines``) and the file's stem: Binance names the spot and the USD-M dump of a
    day alike, and two files called ``trades.csv`` may hold different symbols.
    Re-importing a file replaces exactly the files of its own source.

    Attributes:
        exchange: normalized exchange name.
        symbol: normalized symbol.
        kind: ``trades``, ``aggtrades`` or ``klines``.
        stem: the file's name without ``.zip`` / ``.csv``.

    """

    exchange: str
    symbol: str
    kind: str
    stem: str

    @property
    def name(self) -> str:
        """``<exchange>.<symbol>.<kind>.<stem>``: the ``source`` of its files' names."""
        return f"{self.exchange}.{self.symbol}.{self.kind}.{self.stem}"

    def rows(self, first_line: int, last_line: int) -> SourceRange:
        """The :class:`SourceRange` of lines ``first_line .. last_line`` of the file."""
        return SourceRange.rows(self.name, first_line, last_line)

    @property
    def prefix(self) -> str:
        """The prefix every file of this source's names starts with."""
        return SourceRange.rows(self.name, 0, 0).prefix


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

    def klines_dir(self, day: date) -> str:
        """``klines/date=D``."""
        return self.path(KLINES_DIR, partition(day))

    def aggregates_dir(self, day: date) -> str:
        """``aggregates/date=D``."""
        return self.path(AGGREGATES_DIR, partition(day))

    def side_dir(self, kind: str, day: date) -> str:
        """``dlq/date=D`` or ``late/date=D`` (``kind`` is :data:`DLQ_DIR` or :data:`LATE_DIR`)."""
        return self.path(kind, partition(day))

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

    def read_json(self, path: str) -> dict[str, Any] | None:
        """A small JSON object's content, or ``None`` when the file is absent."""
        if not self.exists(path):
            return None
        loaded: dict[str, Any] = json.loads(self.read_bytes(path))
        return loaded


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


def trade_files(lake: Lake, day: date) -> list[str]:
    """Paths of the day's trade files."""
    directory = lake.trades_dir(day)
    return [f"{directory}/{n}" for n in lake.list_files(directory) if n.endswith(".parquet")]


def import_marker_name(stem: str) -> str:
    """``_IMPORTED~<stem>.json``: the marker of one imported dump in a day's partition."""
    return f"{IMPORT_MARKER_PREFIX}{_safe(stem)}.json"


def write_import_marker(lake: Lake, day: date, stem: str, info: dict[str, Any]) -> str:
    """Record that a dump covering all of ``day`` (for its symbol) is imported."""
    path = f"{lake.trades_dir(day)}/{import_marker_name(stem)}"
    lake.write_bytes(path, json.dumps(info, sort_keys=True).encode())
    return path


def as_lake(where: Settings | Lake | str | os.PathLike[str]) -> Lake:
    """The :class:`Lake` of settings (their lake URI), of a URI, or the lake itself."""
    if isinstance(where, Lake):
        return where
    if isinstance(where, Settings):
        return Lake(where.lake)
    return Lake(where)
