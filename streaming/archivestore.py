"""The archive flow's store: lake files first, then the watermark, then the trim.

The logic is :mod:`streaming.archive`, the wiring :mod:`streaming.flows.archive`
(docs/architecture.md, "Inside the speed layer"). For each batch of
:class:`~streaming.archive.ArchiveWork` a worker receives (through
:class:`streaming.sinks.FlowSink`), in order:

0. a partition watermark lower than the published one goes out first, into the
   partition's field and then the archive watermark (lowering only delays sealing;
   raising waits for the files, as below);
1. each range's files are written (:class:`lake.writer.LakeWriter`: hidden temporary
   name, fsync, atomic rename, fsync of the directory); then other files of the same
   stream starting at the same entry are removed: they hold the same bucket written
   partially at an earlier end of input (a subset of this one);
2. only then, one Redis round trip per batch: each partition's watermark into
   :data:`~redisstore.keys.ARCHIVE_PARTITIONS_KEY`, with the archived position it
   belongs to (field ``@<stream>``, ``ms-seq``): a value of a later position replaces
   the stored one even when it is lower (a venue that appeared with older trades
   holds the partition back), a value of an earlier position is ignored (a replay
   after a restore publishes older values again), one of the same position only
   raises it (idle ticks); its progress into
   :data:`~redisstore.keys.ARCHIVE_PROGRESS_KEY`, and ``XTRIM MINID ~ ... LIMIT 0`` of
   its stream;
3. the archive watermark (:data:`redisstore.keys.ARCHIVE_WATERMARK_KEY`) is set to the
   minimum over every partition of the flow, once each has published one.

Each partition update increments the partitions hash's ``@@generation`` in the same
script that reads every partition's value, and the archive watermark is set from such a
snapshot only if no later snapshot set it (:data:`~redisstore.keys.ARCHIVE_WATERMARK_GEN_KEY`,
in the watermark's Cluster slot). With several workers a minimum taken before another
worker's lowering therefore never overwrites it; no script spans two slots, so this
works on Redis Cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson
import redis

from lake.layout import REJECTS_DIR, Lake
from lake.writer import LakeWriter, WriteResult
from redisstore.keys import (
    ARCHIVE_PARTITIONS_KEY,
    ARCHIVE_PROGRESS_KEY,
    ARCHIVE_WATERMARK_GEN_KEY,
    ARCHIVE_WATERMARK_KEY,
)
from redisstore.streamids import parse_id
from streaming.archive import ArchiveWork
from streaming.memory import release_free_memory
from streaming.rejectlog import RejectionLog
from streaming.spill import SideStreamSpiller

log = logging.getLogger(__name__)

# Partition ARGV[1]'s watermark ARGV[2] at archived position (ARGV[3] ms, ARGV[4] seq):
# stored when the position is later than the stored one, or the same and the value
# larger; returns the snapshot's generation and HMGET of ARGV[5..] (every partition's
# watermark), read in the same step.
_PUBLISH_FIELD = """
local at = '@' .. ARGV[1]
local pos = redis.call('HGET', KEYS[1], at)
local ms, seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local store = true
if pos then
  local pms, pseq = string.match(pos, '^(%d+)-(%d+)$')
  pms, pseq = tonumber(pms), tonumber(pseq)
  if ms < pms or (ms == pms and seq < pseq) then
    store = false
  elseif ms == pms and seq == pseq then
    local cur = redis.call('HGET', KEYS[1], ARGV[1])
    store = (not cur) or tonumber(ARGV[2]) > tonumber(cur)
  end
end
if store then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], at, ARGV[3] .. '-' .. ARGV[4])
end
local gen = redis.call('HINCRBY', KEYS[1], '@@generation', 1)
if #ARGV < 5 then return {gen} end
local out = redis.call('HMGET', KEYS[1], unpack(ARGV, 5))
table.insert(out, 1, gen)
return out
"""

# The archive watermark ARGV[1] from the partitions snapshot of generation ARGV[2]: set
# only when no later snapshot set it (KEYS[1] the watermark, KEYS[2] its generation,
# one slot). With several workers a stale minimum never overwrites a newer one.
_SET_WATERMARK = """
local gen = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) <= gen then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def archive_rejection_log(lake: str | Lake, flow: str = "archive") -> RejectionLog:
    """The archive flow's rejection log: its lines say the lake's ``rejects/`` keeps them."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    return RejectionLog(flow, kept=f"lake {lake.path(REJECTS_DIR)}")


class ArchiveStore:
    """The archive's writes: lake files, then Redis (watermarks, progress, trim).

    Args:
        lake: the lake's root.
        client: the Redis holding the raw log and the archive keys.
        streams: every partition of the flow (the watermark is their minimum).
        durable: fsync files before they count as written (tests may turn it off).
        rejection_log: where the rejections of the files written are summed up (at
            most every 10 s); the flow passes the one its workers share. Default: a
            log of this store's own.
        spiller: copies the DLQ and late streams to the lake and trims them, at
            each write (at most as often as it allows); ``None``: left alone.

    """

    def __init__(
        self,
        lake: str | Lake,
        client: redis.Redis,
        streams: list[str],
        *,
        durable: bool = True,
        rejection_log: RejectionLog | None = None,
        spiller: SideStreamSpiller | None = None,
    ) -> None:
        self.writer = LakeWriter(lake, durable=durable)
        self.lake = self.writer.lake
        self.rejection_log = rejection_log or archive_rejection_log(self.lake)
        self.client = client
        self.streams = list(streams)
        self._publish_field = client.register_script(_PUBLISH_FIELD)
        self._set_watermark = client.register_script(_SET_WATERMARK)
        self._last_range: dict[str, str] = {}
        self.spiller = spiller

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
        """Write the files of every range in ``works``; the raw entries they hold.

        The rejections of the files written go to the rejection log.
        """
        self.lower_first(works)
        entries = 0
        for w in works:
            if self.write_files(w) is not None:
                entries += w.entries
                if w.rejections:
                    self.rejection_log.observe(r.reason for r in w.rejections)
        if entries:  # files were written: give their buffers back to the system
            release_free_memory()
        return entries

    def lower_first(self, works: Sequence[ArchiveWork]) -> None:
        """Lower partition watermarks (and the archive's) now, before files are written.

        Raising waits until the files are durable (:meth:`publish`); lowering never
        needs to wait (it only delays sealing), and must not: files of older trades
        (a venue that appears with older history) would otherwise be in the lake for a
        moment under a watermark that still says their days are sealed. The lower value
        goes into the partition's field (at the range's position), so that every
        minimum taken afterwards, by any worker, includes it.
        """
        lows: dict[str, int] = {}  # stream -> the lowest watermark of its ranges
        last: dict[str, bytes] = {}  # stream -> the position of its last range
        for w in works:
            if w.source is None or w.watermark is None or w.archived_id is None:
                continue
            lows[w.stream] = min(lows.get(w.stream, w.watermark), w.watermark)
            if w.stream not in last or parse_id(w.archived_id) > parse_id(last[w.stream]):
                last[w.stream] = w.archived_id
        if not lows:
            return
        current = self.client.hmget(ARCHIVE_PARTITIONS_KEY, list(lows))
        for (stream, low), cur in zip(lows.items(), current, strict=True):
            if cur is None or int(cur) <= low:
                continue
            ms, seq = parse_id(last[stream])
            reply = self._publish_field(
                keys=[ARCHIVE_PARTITIONS_KEY], args=[stream, low, ms, seq, *self.streams]
            )
            self._set_global(reply)

    def _set_global(self, snapshot: list) -> int | None:
        """Set the archive watermark to the minimum of a partitions snapshot ``[gen, ...]``.

        Returns the minimum, ``None`` while some partition has no watermark yet.
        """
        gen, values = snapshot[0], snapshot[1:]
        if not values or any(v is None for v in values):
            return None
        low = min(int(v) for v in values)
        self._set_watermark(
            keys=[ARCHIVE_WATERMARK_KEY, ARCHIVE_WATERMARK_GEN_KEY], args=[low, gen]
        )
        return low

    def finish(self) -> None:
        """The flow ends: log the rejections written since the last line."""
        self.rejection_log.flush()

    def write(self, works: Sequence[ArchiveWork]) -> int:
        """:meth:`publish` now (retried by the sink); no records of its own."""
        self.publish(list(works), int(time.time() * 1000))
        if self.spiller is not None:
            self.spiller.maybe_run()
        return 0

    def publish(self, works: list[ArchiveWork], now_ms: int) -> int | None:
        """Publish the last state of each partition in ``works``; trim; set the watermark.

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
                ms, seq = parse_id(w.archived_id) if w.archived_id else (0, 0)
                self._publish_field(
                    keys=[ARCHIVE_PARTITIONS_KEY],
                    args=[stream, w.watermark, ms, seq, *self.streams],
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
        snapshot = None
        for r in replies:
            if isinstance(r, list):
                snapshot = r  # the latest snapshot of every partition's watermark
        return None if snapshot is None else self._set_global(snapshot)
