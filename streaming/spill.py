"""The dead-letter and late streams, bounded: copied to the lake, then trimmed.

The candles flow appends rejected entries to ``md:trades:dlq`` and late trades to
``md:trades:late`` (:mod:`streaming.candlestore`). Left alone they grow for ever. The
archive flow calls :meth:`SideStreamSpiller.maybe_run` with each batch it writes; at
most every ``every_s`` it, for each stream, under a lock so that one process does it:

1. copies the entries after the stream's mark (``{<stream>}:spilled``, the last id
   copied) to the lake, a run of at most ``chunk`` entries of one UTC day per file
   (:mod:`lake.sidestreams`), raising the mark after each file is durable;
2. trims the stream to its newest ``maxlen`` entries, but never past the mark: what
   is not in the lake stays in Redis, however long the stream grows (one script,
   :data:`TRIM_SCRIPT`, at most ``TRIM_BATCH`` entries per call).

A crash between a file and its mark copies the same run again, to the same file
name, with the same entries or more: never a second copy. The counts of rejected and
late trades are the candles flow's counters (``status``), not the streams' lengths,
so trimming loses no count.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from lake.layout import DLQ_DIR, LATE_DIR, Lake, as_lake
from lake.sidestreams import SideEntry, write_side_entries
from marketdata.timeutil import day_of_ms
from redisstore.conn import text
from redisstore.keys import DLQ_STREAM, LATE_STREAM, spill_lock_key, spilled_key
from redisstore.streamids import parse_id

log = logging.getLogger(__name__)

#: Each side stream and its directory in the lake.
SIDE_STREAMS: dict[str, str] = {DLQ_STREAM: DLQ_DIR, LATE_STREAM: LATE_DIR}
#: Entries per lake file at most.
DEFAULT_CHUNK = 10_000
#: Files one pass writes per stream at most (a backlog drains over several passes).
RUNS_PER_PASS = 10
#: Entries one trim script removes at most (it reads their ids first).
TRIM_BATCH = 1_000
LOCK_MS = 120_000

#: KEYS: a stream. ARGV: the mark (last id copied; "" = none), maxlen, limit.
#: Removes the oldest entries beyond ``maxlen``, at most ``limit``, none after the
#: mark; returns how many.
TRIM_SCRIPT = """
if ARGV[1] == '' then return 0 end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return 0 end
if excess > tonumber(ARGV[3]) then excess = tonumber(ARGV[3]) end
local old = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', excess)
if #old == 0 then return 0 end
local last = old[#old][1]
local dash = string.find(last, '-', 1, true)
local seq = tonumber(string.sub(last, dash + 1)) + 1
local minid = string.sub(last, 1, dash) .. string.format('%d', seq)
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
"""

#: KEYS: a lock. ARGV: a token. Deletes the lock if the token holds it.
UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class SpillResult:
    """What one pass did to one stream."""

    stream: str
    copied: int = 0
    files: int = 0
    trimmed: int = 0
    skipped: bool = False  # another process held the lock


class SideStreamSpiller:
    """Copies the DLQ and late streams to the lake and trims them to ``maxlen``.

    Args:
        client: the Redis holding the streams.
        lake: the lake's root.
        maxlen: entries each stream keeps in Redis (once they are in the lake).
        every_s: :meth:`maybe_run` does a pass at most this often.
        chunk: entries per file at most.
        durable: fsync the files before the mark moves (tests may turn it off).

    """

    def __init__(
        self,
        client: redis.Redis,
        lake: str | os.PathLike[str] | Lake,
        *,
        maxlen: int,
        every_s: float = 10.0,
        chunk: int = DEFAULT_CHUNK,
        durable: bool = True,
        streams: Sequence[str] = tuple(SIDE_STREAMS),
    ) -> None:
        self.client = client
        self.lake = as_lake(lake)
        self.maxlen = maxlen
        self.every_s = every_s
        self.chunk = chunk
        self.durable = durable
        self.streams = list(streams)
        self._trim = client.register_script(TRIM_SCRIPT)
        self._unlock = client.register_script(UNLOCK_SCRIPT)
        self._last = -1e18

    def maybe_run(self) -> list[SpillResult]:
        """:meth:`run` if ``every_s`` has passed since the last pass."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return []
        self._last = now
        return self.run()

    def run(self) -> list[SpillResult]:
        """One pass over every stream."""
        return [self.spill(stream) for stream in self.streams]

    def spill(self, stream: str) -> SpillResult:
        """Copy ``stream``'s new entries to the lake, then trim it to ``maxlen``."""
        result = SpillResult(stream)
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        lock = spill_lock_key(stream)
        if not self.client.set(lock, token, nx=True, px=LOCK_MS):
            result.skipped = True
            return result
        try:
            got = self.client.get(spilled_key(stream))
            mark: bytes | None = got if isinstance(got, bytes) else None
            for _ in range(RUNS_PER_PASS):
                run = self._next_run(stream, mark)
                if not run:
                    break
                write_side_entries(self.lake, SIDE_STREAMS[stream], run, durable=self.durable)
                mark = run[-1].entry_id
                self.client.set(spilled_key(stream), mark)
                result.copied += len(run)
                result.files += 1
                self.client.pexpire(lock, LOCK_MS)
            while True:
                n = int(
                    self._trim(keys=[stream], args=[text(mark or b""), self.maxlen, TRIM_BATCH])
                )
                result.trimmed += n
                if n < TRIM_BATCH:
                    break
        finally:
            self._unlock(keys=[lock], args=[token])
        if result.copied or result.trimmed:
            log.info(
                "%s: %d entries copied to the lake (%d files), %d trimmed from Redis",
                stream,
                result.copied,
                result.files,
                result.trimmed,
            )
        return result

    def _next_run(self, stream: str, mark: bytes | None) -> list[SideEntry]:
        """The entries after ``mark``, up to ``chunk``, cut at the first day's end."""
        start = "-" if mark is None else "(" + text(mark)
        read: list[Any] = list(
            self.client.xrange(stream, min=start, max="+", count=self.chunk) or []
        )
        entries = [SideEntry(entry_id, *parse_id(entry_id), fields) for entry_id, fields in read]
        if not entries:
            return []
        day = day_of_ms(entries[0].ms)
        for i, e in enumerate(entries):
            if day_of_ms(e.ms) != day:
                return entries[:i]
        return entries
