"""The archive flow's store: lake files first, then the watermark, then the trim.

The logic is :mod:`streaming.archive`, the wiring :mod:`streaming.flows.archive`
(docs/architecture.md, "Inside the speed layer"). For each batch of
:class:`~streaming.archive.ArchiveWork` a worker receives (through
:class:`streaming.sinks.FlowSink`), in order:

1. each range's files are written (:class:`lake.writer.LakeWriter`: hidden temporary
   name, fsync, atomic rename, fsync of the directory); then other files of the same
   stream starting at the same entry are removed: they hold the same bucket written
   partially at an earlier end of input (a subset of this one);
2. only then, one Redis round trip per batch: each partition's watermark into
   :data:`~redisstore.keys.ARCHIVE_PARTITIONS_KEY` (never lowered: a replay after a
   restore publishes older values again), its progress into
   :data:`~redisstore.keys.ARCHIVE_PROGRESS_KEY`, and ``XTRIM MINID ~ ... LIMIT 0`` of its stream;
3. the archive watermark (:data:`redisstore.keys.ARCHIVE_WATERMARK_KEY`) is raised to the
   minimum over every partition of the flow, once each has published one.

The keys are updated one at a time (no script spans two keys, so this works on
Redis Cluster): a partition value only grows, so a minimum read at any moment is
at most the true one, and the global key only grows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson
import redis

from lake.layout import Lake
from lake.writer import LakeWriter, WriteResult
from redisstore.keys import ARCHIVE_PARTITIONS_KEY, ARCHIVE_PROGRESS_KEY, ARCHIVE_WATERMARK_KEY
from streaming.archive import ArchiveWork
from streaming.memory import release_free_memory

log = logging.getLogger(__name__)

# HSET field to ARGV[2] unless it holds a larger number; returns HMGET of ARGV[3..].
_RAISE_FIELD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(ARGV[2]) > tonumber(cur) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if #ARGV < 3 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
"""
# SET key to ARGV[1] unless it holds a larger number; returns the value it holds.
_RAISE_KEY = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(ARGV[1]) > tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return cur
"""


class ArchiveStore:
    """The archive's writes: lake files, then Redis (watermarks, progress, trim).

    Args:
        lake: the lake's root.
        client: the Redis holding the raw log and the archive keys.
        streams: every partition of the flow (the watermark is their minimum).
        durable: fsync files before they count as written (tests may turn it off).

    """

    def __init__(
        self, lake: str | Lake, client: redis.Redis, streams: list[str], *, durable: bool = True
    ) -> None:
        self.writer = LakeWriter(lake, durable=durable)
        self.lake = self.writer.lake
        self.client = client
        self.streams = list(streams)
        self._raise_field = client.register_script(_RAISE_FIELD)
        self._raise_key = client.register_script(_RAISE_KEY)
        self._last_range: dict[str, str] = {}

    def write_files(self, work: ArchiveWork) -> WriteResult | None:
        """Write one range's files (replacing the same range's), drop partial versions.

        A bucket written at an end of input and written again later, with more
        entries, has the same first id and a later last id: once the new files are
        durable, the earlier ones (in the new range's days: its entries are a subset)
        are removed, so that no raw entry is in the lake twice.
        """
        if work.source is None:
            return None
        src = work.source
        result = self.writer.write_trade_table(
            work.trades, work.rejections, src, rejection_ids=work.rejection_ids
        )
        name = src.file_name
        same_start = name[: name.rindex("~") + 1]  # <kind>~<stream>~<first>~
        directories = {f"{self.lake.trades_dir(d)}" for d in result.days}
        day = src.stream_day()
        if day is not None:
            directories.add(self.lake.rejects_dir(day))
        for directory in sorted(directories):
            for other in self.lake.list_files(directory):
                if other.startswith(same_start) and other != name:
                    self.lake.remove(f"{directory}/{other}")
        return result

    def stage(self, works: Sequence[ArchiveWork]) -> int:
        """Write the files of every range in ``works``; the raw entries they hold."""
        entries = 0
        for w in works:
            if self.write_files(w) is not None:
                entries += w.entries
        if entries:  # files were written: give their buffers back to the system
            release_free_memory()
        return entries

    def write(self, works: Sequence[ArchiveWork]) -> int:
        """:meth:`publish` now (retried by the sink); no records of its own."""
        self.publish(list(works), int(time.time() * 1000))
        return 0

    def publish(self, works: list[ArchiveWork], now_ms: int) -> int | None:
        """Publish the last state of each partition in ``works``; trim; raise the watermark.

        Returns:
            The archive watermark after this call, when every partition has one.

        """
        last: dict[str, ArchiveWork] = {}
        files: dict[str, int] = {}
        for w in works:
            last[w.stream] = w
            if w.source is not None:
                files[w.stream] = files.get(w.stream, 0) + 1
                self._last_range[w.stream] = w.source.file_name
        pipe = self.client.pipeline(transaction=False)
        for stream, w in last.items():
            if w.watermark is not None:
                self._raise_field(
                    keys=[ARCHIVE_PARTITIONS_KEY],
                    args=[stream, w.watermark, *self.streams],
                    client=pipe,
                )
            if w.trim_minid is not None:
                # LIMIT 0: with "~" Redis otherwise removes at most 100 nodes' worth
                # (10,000 entries) per call, less than a minute of a busy stream.
                pipe.execute_command("XTRIM", stream, "MINID", "~", w.trim_minid, "LIMIT", 0)
            progress = {
                "archived_id": w.archived_id.decode() if w.archived_id else None,
                "watermark": w.watermark,
                "trim_minid": w.trim_minid.decode() if w.trim_minid else None,
                "last_range": self._last_range.get(stream),
                "files_in_batch": files.get(stream, 0),
                "updated_ms": now_ms,
            }
            pipe.hset(ARCHIVE_PROGRESS_KEY, stream, orjson.dumps(progress))
        replies = pipe.execute()
        values = None
        for r in replies:
            if isinstance(r, list):
                values = r  # the latest HMGET of every partition's watermark
        if values is None or any(v is None for v in values) or not values:
            return None
        low = min(int(v) for v in values)
        return int(self._raise_key(keys=[ARCHIVE_WATERMARK_KEY], args=[low]))
