"""The archive flow's logic: raw-log entries -> lake files, watermark, trim point.

Pure Python, no bytewax, no Redis: the archive flow (:mod:`streaming.flows.archive`, the
wiring) wraps one :class:`PartitionArchiver` per raw-log stream (partition) in a bytewax
``stateful_batch`` step, and :mod:`streaming.archivestore` writes what it emits (every
flow is laid out so: docs/architecture.md, "Inside the speed layer"). Semantics (see
docs/archive.md):

* **Files cut by stream-id buckets.** Entries whose id's millisecond part falls in
  ``[k*B, (k+1)*B)`` form bucket ``k`` (``B`` = ``bucket_ms``, a divisor of a day).
  A bucket is written as one source range (``SourceRange.stream(stream, first_id,
  last_id)``, so one file per UTC event day of its trades, plus one rejects file)
  once it is complete: an entry of a later bucket arrived (stream order: nothing
  more can come for it), or an idle tick's Redis ``TIME`` is past its end plus
  ``close_margin_ms``. A bucket with more than ``max_file_entries`` entries is
  written as consecutive ranges of that many (each written as soon as it is full),
  so that the state and a write's memory stay bounded at any rate. Bucket contents
  depend only on the data, never on how bytewax batched the reads, so the replay
  after a crash writes the same file names with the same rows. The open bucket's
  entries are kept in the state, compactly.
* **End of input** (``--exit-when-idle``) writes the open bucket as it is and keeps
  it open; when it is written again with more entries, the sink removes the files
  of the earlier, partial range (same stream, same first id: a subset) once the new
  ones are durable. A stop by signal does not write it (the snapshot keeps it).
* **Watermark.** Per partition, the candles flow's venue clocks computed over the
  archived prefix of the stream (:class:`ArchiveClock`: per venue, largest event
  time of its trades and progress marks minus the lateness, moved on by the arrival
  clock after ``hold_ms`` of silence); the partition's watermark is its slowest
  venue's. Idle ticks count only when nothing read is left unarchived. A partition
  that never carried a trade or mark follows the tick: Redis ``TIME`` minus
  lateness minus ``hold_ms``. Trades and marks too far ahead of their venue's clock
  are refused exactly as the candles flow refuses them: written as rejections
  (``bad_timestamp``), not as trades, and the clock does not move.
* **Trim point.** Entries before ``min(archived + 1, archived_ms - retention, the
  position at the snapshot trim_guard_snapshots back)`` may be trimmed: never
  past what is written, and never past what a restore from the last committed
  snapshot would need to read again.
"""

from __future__ import annotations

import pickle
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any

import pyarrow as pa

from lake.arrow import trades_table_from_columns
from lake.layout import SourceRange
from lake.schemas import TRADES_SCHEMA
from marketdata.rawmessage import ProgressMark
from marketdata.timeutil import DAY_MS
from marketdata.trade import Rejection
from marketdata.watermark import NEVER, VenueClocks, Watermark
from redisstore.streamids import id_ms, join_id, parse_id
from streaming.candleagg import WindowConfig, far_ahead, far_ahead_trade
from streaming.fastparse import FastParser, ParsedBatch, entry_message

#: Default bucket: files hold one minute of stream ids.
DEFAULT_BUCKET_MS = 60_000
#: Redis ``TIME`` must be this far past a bucket's end before an idle tick closes it
#: (ids are assigned by Redis at XADD; the margin covers a small clock step back).
DEFAULT_CLOSE_MARGIN_MS = 2_000
#: Entries kept in the raw log behind the archived position (for the candles flow).
DEFAULT_RETENTION_MS = 3_600_000
#: Trim no further than the position at this many snapshots back (bytewax commits a
#: snapshot after the next epoch's; two back is committed). 0 disables the guard.
DEFAULT_TRIM_GUARD_SNAPSHOTS = 2
#: Entries decoded and parsed at a time when a bucket is written.
FLUSH_SLICE = 8_192
#: A bucket is cut into files of at most this many entries: what the flow holds and
#: what a write needs stay bounded however busy the stream (bursts included).
DEFAULT_MAX_FILE_ENTRIES = 50_000


@dataclass(frozen=True)
class ArchiveConfig:
    """How the archive cuts files, computes its watermark and trims.

    Attributes:
        bucket_ms: width of a file's stream-id bucket; must divide a day.
        close_margin_ms: how far Redis ``TIME`` must be past a bucket's end before an
            idle tick closes it.
        retention_ms: stream ids kept behind the archived position when trimming.
        window: lateness, idle advance and event-time cap: the candles flow's, so
            that the archive's watermark never runs ahead of the candles flow's.
        known_symbols: when set, other symbols are rejected (``unknown_symbol``).
        trim_guard_snapshots: trim no further than the position at this many
            snapshots back (0: no guard, for runs without recovery).
        progress_interval_s: at most one watermark update per this from idle ticks.
        max_file_entries: a bucket is written as consecutive files of at most this
            many entries (the open one is cut when it is full): bounds the open
            bucket's state and a write's memory whatever the stream's rate.

    """

    bucket_ms: int = DEFAULT_BUCKET_MS
    close_margin_ms: int = DEFAULT_CLOSE_MARGIN_MS
    retention_ms: int = DEFAULT_RETENTION_MS
    window: WindowConfig = field(default_factory=WindowConfig)
    known_symbols: frozenset[str] | None = None
    trim_guard_snapshots: int = DEFAULT_TRIM_GUARD_SNAPSHOTS
    progress_interval_s: float = 1.0
    max_file_entries: int = DEFAULT_MAX_FILE_ENTRIES

    def __post_init__(self) -> None:
        if self.bucket_ms < 1 or DAY_MS % self.bucket_ms:
            msg = (
                f"bucket_ms={self.bucket_ms}: must be a positive divisor of a day "
                "(e.g. 60000), so that a file's stream ids never straddle two days"
            )
            raise ValueError(msg)
        for name in ("close_margin_ms", "retention_ms", "trim_guard_snapshots"):
            if getattr(self, name) < 0:
                msg = f"{name} must not be negative"
                raise ValueError(msg)
        if self.max_file_entries < 1:
            msg = f"max_file_entries={self.max_file_entries}: must be at least 1"
            raise ValueError(msg)


# --------------------------------------------------------------------------- watermark


class ArchiveClock:
    """The candles flow's venue clocks, over what the archive has written.

    The same :class:`marketdata.watermark.VenueClocks` as
    :class:`streaming.candleagg.ShardAggregator`'s (tests compare them), fed with the
    trades the candles flow would not find late and with the progress marks, so
    that, fed with the same entries, it gives the same values whatever the batching.
    The partition's watermark is its slowest venue's.
    """

    __slots__ = ("clocks", "idle")

    def __init__(self) -> None:
        self.clocks = VenueClocks()
        #: While the partition has carried no trade or mark: Redis ``TIME`` of the last
        #: idle tick minus lateness and hold, so that an empty shard does not hold back
        #: sealing. Never a venue's starting point: a venue that appears later starts
        #: from its own trades (a replay of old history into a stack that sat idle must
        #: not find its days sealed before they are archived).
        self.idle = NEVER

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.clocks.__getstate__(), None, self.idle)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.idle = NEVER
        if len(state) == 5:  # one watermark per partition: every venue goes on from it
            self.clocks = VenueClocks(template=Watermark(*state[:4]))
            return
        # (clocks,), (clocks, capped) from when far-ahead times were capped, or
        # (clocks, None, idle).
        self.clocks = VenueClocks()
        self.clocks.__setstate__(state[0])
        if len(state) == 3:
            self.idle = state[2]
        elif (t := self.clocks.template) is not None:
            # Before ``idle``, idle ticks raised the template, which a venue appearing
            # later copied: keep its value as the idle floor, start venues afresh.
            self.idle = t.value
            self.clocks.template = None

    @property
    def idle_only(self) -> bool:
        """No trade or mark yet: the watermark is the idle ticks' (:attr:`idle`)."""
        return not self.clocks.clocks and self.clocks.template is None

    @property
    def watermark(self) -> int:
        """The slowest venue's watermark, ms (before any trade: the idle ticks', or ``NEVER``)."""
        return self.idle if self.idle_only else self.clocks.low()

    def advance(self, clock: int, cfg: WindowConfig) -> None:
        """The arrival clock reads ``clock`` (an entry id's ms)."""
        self.clocks.advance(clock, cfg.lateness_ms, cfg.hold_ms)

    def tick(self, now_ms: int, cfg: WindowConfig) -> None:
        """Redis ``TIME`` while everything read is archived (the partition is idle).

        A partition that never carried a trade or mark has no event time to start
        from; its watermark follows the tick as if one had arrived just now and the
        hold passed (:attr:`idle`), so that an empty shard does not hold back sealing
        forever.
        """
        if self.idle_only:
            self.idle = max(self.idle, now_ms - cfg.lateness_ms - cfg.hold_ms)
            return
        self.advance(now_ms, cfg)

    def feed(
        self,
        ids: Sequence[bytes],
        fields: Sequence[Sequence[bytes]],
        pb: ParsedBatch,
        start: int,
        cfg: WindowConfig,
    ) -> list[tuple[int, Rejection]]:
        """Entries ``ids[start:]`` (in stream order); ``pb`` is the parse of all ``ids``.

        Returns the entries refused as too far ahead of their venue's clock (position
        in ``ids``, rejection), as the candles flow refuses them.
        """
        if start >= len(ids):
            return []
        refused: list[tuple[int, Rejection]] = []
        k0 = bisect_left(pb.idx, start)
        lateness, max_ahead, hold = cfg.lateness_ms, cfg.max_ahead_ms, cfg.hold_ms
        clocks = self.clocks
        marks: list[tuple[int, ProgressMark | None]] = [
            (pos, m) for pos, m in pb.marks if pos >= start
        ]
        marks.append((len(ids), None))  # a sentinel after every entry
        mi = 0
        for k in range(k0, len(pb.idx) + 1):
            pos = pb.idx[k] if k < len(pb.idx) else len(ids)
            while marks[mi][0] < pos:
                mpos, m = marks[mi]
                mi += 1
                assert m is not None
                clock = id_ms(ids[mpos])
                wm, _ = clocks.arrive(m.exchange, NEVER, clock, lateness, hold)
                if wm.too_far_ahead(m.event_ms, clock, max_ahead):
                    refused.append((mpos, far_ahead(m, wm, clock)))
                else:
                    wm.observe(m.event_ms, clock, lateness)
            if k == len(pb.idx):
                break
            clock = id_ms(ids[pos])
            t = pb.event_time[k]
            wm, late = clocks.arrive(pb.exchange[k], t, clock, lateness, hold)
            if late:
                continue  # late for the candles flow: it does not move the clock
            if wm.too_far_ahead(t, clock, max_ahead):
                payload = entry_message(fields[pos]).payload
                refused.append((pos, far_ahead_trade(t, pb.exchange[k], payload, wm)))
                continue
            wm.observe(t, clock, lateness)
        self.advance(id_ms(ids[-1]), cfg)
        return refused


# --------------------------------------------------------------------------- entries


class _Chunk:
    """Entries of one read, held as four flat buffers (ids, field counts, lengths, bytes).

    About the size of the raw bytes, and pickled as they are: the open bucket's
    state stays compact however many entries it holds. Field counts are 32-bit: an
    entry may carry any number of fields (a hostile one with more than 65,535 is
    rejected by the parser like any other bad entry, not a crash here). Snapshots
    written before, with 16-bit counts (a state of two items), still load.
    """

    __slots__ = ("_blob", "_counts", "n")

    def __init__(self, ids: list[bytes], fields: list[list[bytes]]) -> None:
        self._blob = _encode(ids, fields)
        self._counts = _COUNTS
        self.n = len(ids)

    def entries(self) -> tuple[list[bytes], list[list[bytes]]]:
        return _decode(*self._blob, counts_type=self._counts)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> tuple[tuple[bytes, bytes, bytes, bytes], int, str]:
        return self._blob, self.n, self._counts

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._blob, self.n = state[0], state[1]
        self._counts = state[2] if len(state) > 2 else "H"  # older snapshots: 16-bit


#: The array type of the field counts (32-bit unsigned).
_COUNTS = "I"


def _encode(ids: list[bytes], fields: list[list[bytes]]) -> tuple[bytes, bytes, bytes, bytes]:
    flat = list(chain.from_iterable(fields))
    return (
        b" ".join(ids),  # ids are ASCII "ms-seq": a space never occurs in one
        array(_COUNTS, map(len, fields)).tobytes(),
        array("I", map(len, flat)).tobytes(),
        b"".join(flat),
    )


def _decode(
    ids_blob: bytes, counts_blob: bytes, lens_blob: bytes, data: bytes, *, counts_type: str
) -> tuple[list[bytes], list[list[bytes]]]:
    counts, lens = array(counts_type), array("I")
    counts.frombytes(counts_blob)
    lens.frombytes(lens_blob)
    ends = list(accumulate(lens))
    starts = [0, *ends[:-1]]
    flat = [data[a:b] for a, b in zip(starts, ends, strict=True)]
    fields: list[list[bytes]] = []
    pos = 0
    for c in counts:
        fields.append(flat[pos : pos + c])
        pos += c
    return ids_blob.split(b" "), fields


# --------------------------------------------------------------------------- output


@dataclass
class ArchiveWork:
    """What the sink does for one partition: write a range, publish, trim.

    Attributes:
        stream: the raw-log stream (partition).
        source: the range to write (``None``: only publish and trim).
        trades: its valid trades, one row per raw entry (duplicates kept), as a
            table of :data:`lake.schemas.TRADES_SCHEMA` (no :class:`Trade` objects: a
            busy bucket's worth of them would be most of the flow's memory).
        rejections: its rejected entries, with reasons and payloads.
        rejection_ids: the stream id of each rejection.
        entries: raw entries in ``source``.
        complete: the bucket is closed (False: written at end of input).
        archived_id: every entry up to it is in the lake once this is written.
        watermark: the partition's archive watermark then (``None``: none yet).
        trim_minid: entries before this id may be trimmed after the write.

    """

    stream: str
    source: SourceRange | None = None
    trades: pa.Table = field(default_factory=TRADES_SCHEMA.empty_table)
    rejections: list[Rejection] = field(default_factory=list)
    rejection_ids: list[str] = field(default_factory=list)
    entries: int = 0
    complete: bool = True
    archived_id: bytes | None = None
    watermark: int | None = None
    trim_minid: bytes | None = None


class _Pending:
    """The open bucket: its bounds, entries, and what of it is already written."""

    __slots__ = ("chunks", "clocked", "end", "n", "refused", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.chunks: list[_Chunk] = []
        self.n = 0
        #: Entries already fed to the clock (written at an earlier end of input).
        self.clocked = 0
        #: Position in the bucket -> rejection, of the entries the clock refused.
        self.refused: dict[int, Rejection] = {}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.start, self.end, self.chunks, self.n, self.clocked, self.refused)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.start, self.end, self.chunks, self.n, self.clocked = state[:5]
        self.refused = state[5] if len(state) > 5 else {}

    def add(self, ids: list[bytes], fields: list[list[bytes]]) -> None:
        if ids:
            self.chunks.append(_Chunk(ids, fields))
            self.n += len(ids)

    def slices(self, size: int) -> Iterator[tuple[list[bytes], list[list[bytes]]]]:
        """The entries in order, decoded a slice of about ``size`` at a time."""
        ids: list[bytes] = []
        fields: list[list[bytes]] = []
        for c in self.chunks:
            i, f = c.entries()
            ids += i
            fields += f
            if len(ids) >= size:
                yield ids, fields
                ids, fields = [], []
        if ids:
            yield ids, fields


def _trades_table(pb: ParsedBatch) -> pa.Table:
    """A slice's trades as a lake table (the parsers bound ids to the lake's int64)."""
    spans = {k: pb.span(k) for k, i in enumerate(pb.idx) if i in pb.spans} if pb.spans else None
    return trades_table_from_columns(
        pb.exchange,
        pb.symbol,
        pb.trade_id,
        pb.price,
        pb.quantity,
        pb.event_time,
        pb.maker,
        spans=spans,
    )


# --------------------------------------------------------------------------- partition


class PartitionArchiver:
    """One raw-log partition's archive state: open bucket, watermark, trim point.

    Not thread-safe; pickles (without its configuration: :meth:`configure` after
    loading).
    """

    def __init__(self, stream: str, cfg: ArchiveConfig) -> None:
        self.stream = stream
        self.cfg = cfg
        self.parser = FastParser(cfg.known_symbols)
        self.clock = ArchiveClock()
        self.pending: _Pending | None = None
        #: Last entry read, last entry written, last trim point handed out.
        self.last_seen: bytes | None = None
        self.archived_id: bytes | None = None
        self.trimmed: tuple[int, int] = (0, 0)
        #: ``last_seen`` at the most recent snapshots (the trim guard).
        self.snaps: list[bytes] = []
        self.emitted_wm = NEVER
        self.counters: dict[str, int] = {}
        self._last_progress = float("-inf")
        #: The bucket written early after an idle spell (once per bucket).
        self._idle_written: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("cfg", "parser", "_last_progress", "_idle_written"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._last_progress = float("-inf")
        self._idle_written = None

    def configure(self, cfg: ArchiveConfig) -> PartitionArchiver:
        """Attach the configuration (after unpickling); returns self."""
        self.cfg = cfg
        self.parser = FastParser(cfg.known_symbols)
        return self

    def dumps(self) -> bytes:
        """The state as bytes (an immutable snapshot)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes, cfg: ArchiveConfig) -> PartitionArchiver:
        """A state from :meth:`dumps`, configured with ``cfg``."""
        arch: PartitionArchiver = pickle.loads(data)
        return arch.configure(cfg)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- input ------------------------------------------------------------------------

    def process(
        self,
        ids: list[bytes],
        fields: list[list[bytes]],
        tick_ms: int | None = None,
        now: float = 0.0,
    ) -> list[ArchiveWork]:
        """A read of the partition (entries in stream order), or an idle tick.

        Args:
            ids: entry ids.
            fields: each entry's flat field list.
            tick_ms: Redis ``TIME`` (ms), taken when nothing followed these entries.
            now: a monotonic clock (s), to pace watermark updates from ticks.

        Returns:
            Work for the sink, in order.

        """
        out: list[ArchiveWork] = []
        if ids:
            self._take(ids, fields, out)
            p = self.pending
            idle = self.clock.idle_only and self.clock.idle > NEVER
            if p is not None and idle and self._idle_written != p.start:
                # The first entries after an idle spell: the published watermark still
                # follows Redis TIME, so every day before now reads as sealed. Written
                # at once (as at an end of input; the complete bucket supersedes it),
                # so the venues' own clocks are published now, not a bucket later.
                self._idle_written = p.start
                out.append(self._flush(complete=False))
        if tick_ms is not None:
            p = self.pending
            if p is not None and tick_ms >= p.end + self.cfg.close_margin_ms:
                out.append(self._flush(complete=True))
            if self.pending is None:
                self.clock.tick(tick_ms, self.cfg.window)
                wm = self.clock.watermark
                if out:
                    # Written before it is published: the tick's advance rides along.
                    out[-1].watermark = wm if wm > NEVER else None
                    self.emitted_wm = max(self.emitted_wm, wm)
                elif now - self._last_progress >= self.cfg.progress_interval_s and (
                    wm > self.emitted_wm or self._trim_bound() > self.trimmed
                ):
                    # Idle: the watermark follows the arrival clock, and trimming
                    # catches up with the snapshots taken since the last write.
                    out.append(self._progress())
        if out:
            self._last_progress = now
        return out

    def _take(self, ids: list[bytes], fields: list[list[bytes]], out: list[ArchiveWork]) -> None:
        self.last_seen = ids[-1]
        self._count("entries", len(ids))
        b, cap = self.cfg.bucket_ms, self.cfg.max_file_entries
        i, n = 0, len(ids)
        last_ms = id_ms(ids[-1])
        while i < n:
            ms = id_ms(ids[i])
            p = self.pending
            if p is not None and not p.start <= ms < p.end:
                # A later bucket's entry: the open one is complete (stream order). An
                # earlier bucket's one means Redis' clock stepped back after an idle
                # tick closed its bucket: it starts a new range of its own.
                out.append(self._flush(complete=True))
                p = None
            if p is None:
                start = ms - ms % b
                p = self.pending = _Pending(start, start + b)
            j = n if last_ms < p.end else bisect_left(ids, p.end, lo=i, key=id_ms)
            j = min(j, i + cap - p.n)
            p.add(ids[i:j], fields[i:j])
            i = j
            if p.n >= cap:
                # Full: written now, and the bucket goes on in a file of its own. Where
                # it is cut depends only on the stream (the open file's count is in
                # the state), so a replay after a crash cuts it the same way.
                out.append(self._flush(complete=True))

    def finish(self, *, write_open: bool) -> list[ArchiveWork]:
        """End of input: write the open bucket as it is (``write_open``) and keep it."""
        if self.pending is None or not write_open:
            return []
        return [self._flush(complete=False)]

    def note_snapshot(self) -> None:
        """A snapshot of this state is being taken (moves the trim guard)."""
        keep = self.cfg.trim_guard_snapshots
        if keep and self.last_seen is not None:
            self.snaps = [*self.snaps, self.last_seen][-keep:]

    # -- output -----------------------------------------------------------------------

    def _flush(self, *, complete: bool) -> ArchiveWork:
        p = self.pending
        assert p is not None
        # Decoded and parsed a slice at a time: the flush's memory is the bucket's
        # trades plus one slice, not every entry's bytes and fields at once (a burst
        # minute would otherwise set the process's memory high-water mark).
        tables: list[pa.Table] = []
        rejections: list[Rejection] = []
        rejection_ids: list[str] = []
        first = last = b""
        pos = 0
        for ids, fields in p.slices(FLUSH_SLICE):
            pb = self.parser.parse_batch(fields)
            for i, rej in self.clock.feed(
                ids, fields, pb, max(0, p.clocked - pos), self.cfg.window
            ):
                p.refused[pos + i] = rej
            refused = {i - pos: r for i, r in p.refused.items() if pos <= i < pos + len(ids)}
            rejects = [(i, r) for i, r, _ in pb.rejects]
            if refused:
                pb = pb.without(set(refused))
                rejects = sorted([*rejects, *refused.items()], key=lambda x: x[0])
                self._count("refused_ahead", len(refused))
            rejections += [r for _, r in rejects]
            rejection_ids += [ids[i].decode() for i, _ in rejects]
            tables.append(_trades_table(pb))
            first = first or ids[0]
            last = ids[-1]
            pos += len(ids)
            del ids, fields, pb
        p.clocked = pos
        source = SourceRange.stream(self.stream, first, last)
        if complete:
            self.pending = None
            self._count("files")
        else:
            self._count("partial_files")
        self.archived_id = last
        wm = self.clock.watermark
        self.emitted_wm = max(self.emitted_wm, wm)
        return ArchiveWork(
            stream=self.stream,
            source=source,
            trades=pa.concat_tables(tables) if tables else TRADES_SCHEMA.empty_table(),
            rejections=rejections,
            rejection_ids=rejection_ids,
            entries=pos,
            complete=complete,
            archived_id=last,
            watermark=wm if wm > NEVER else None,
            trim_minid=self._trim_point(),
        )

    def _progress(self) -> ArchiveWork:
        wm = self.clock.watermark
        self.emitted_wm = wm
        return ArchiveWork(
            stream=self.stream,
            archived_id=self.archived_id,
            watermark=wm if wm > NEVER else None,
            trim_minid=self._trim_point(),
        )

    def _trim_bound(self) -> tuple[int, int]:
        """Entries before this ``(ms, seq)`` may leave the raw log (``(0, 0)``: none).

        Never past the last written entry, never within ``retention_ms`` of it, and
        never past the entry read last before the snapshot ``trim_guard_snapshots``
        back: a restore from the last committed snapshot reads again from there.
        """
        if self.archived_id is None:
            return (0, 0)
        a_ms, a_seq = parse_id(self.archived_id)
        bounds = [(a_ms, a_seq + 1), (a_ms - self.cfg.retention_ms, 0)]
        guard = self.cfg.trim_guard_snapshots
        if guard:
            if len(self.snaps) < guard:
                return (0, 0)
            g_ms, g_seq = parse_id(self.snaps[0])
            bounds.append((g_ms, g_seq + 1))
        return max((0, 0), min(bounds))

    def _trim_point(self) -> bytes | None:
        """The MINID to trim to now (``None``: no further than already done)."""
        point = self._trim_bound()
        if point <= self.trimmed:
            return None
        self.trimmed = point
        return join_id(*point)

    # -- status -----------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        """The partition's archive watermark (ms; :data:`NEVER` before any)."""
        return self.clock.watermark

    @property
    def open_entries(self) -> int:
        """Entries read and not yet written as a complete bucket."""
        return self.pending.n if self.pending is not None else 0
