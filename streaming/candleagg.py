"""The candles flow's logic: event-time candles of one raw-log partition.

Watermark, dedupe, windows, late trades. Pure Python, no bytewax, no Redis: the candles
flow (:mod:`streaming.flows.candles`, the wiring) wraps one :class:`ShardAggregator` per
raw-log stream (partition) in a bytewax ``stateful_batch`` step,
:mod:`streaming.candlestore` writes what it emits, and tests drive it directly (every
flow is laid out so: docs/architecture.md, "Inside the speed layer"). Semantics
(docs/architecture.md sections 3 and 4, docs/storage.md):

* **Watermark.** One per venue (exchange) of the partition
  (:class:`marketdata.watermark.VenueClocks`), driven only by the data, so that a
  replay of the same entries after a crash or downtime decides exactly what the
  first run decided; a venue's windows close by its own clock. It is the largest
  event time of the venue's trades and progress marks minus the allowed lateness;
  a venue silent for ``hold_ms`` of arrival time (the millisecond part of the
  Redis stream ids, or Redis ``TIME`` when the stream is idle) then follows the
  arrival clock. A resumed flow reading a backlog sees arrival times of the
  backlog, not the wall clock, so downtime never turns a backlog into late trades.
  An event time more than ``max_ahead_ms`` ahead of the venue's clock and of the
  arrival clock is rejected (``bad_timestamp``): one bad row never moves a clock.
* **Windows.** 1m windows are the unit: a trade whose 1m window has closed (the
  watermark passed its end) is late for every interval. Coarser candles (5m ... 1d)
  are the roll-up of the closed 1m candles, which docs/architecture.md section 3
  allows and which makes the stream's 5m candle always equal the roll-up of its 1m
  candles.
* **Duplicates.** The same (exchange, symbol, trade_id) counts once. Trade ids of
  a 1m window are kept while it is open and, compacted into runs, for
  ``dedupe_retention_ms`` after it closed, so a duplicate of a counted trade that
  arrives late is still recognised as a duplicate, not a late trade.
* **Open and close** by (event_time, trade_id), never by arrival order.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, repeat
from operator import add, itemgetter, lt, mod, mul, sub
from typing import Any, NamedTuple

from marketdata.candle import Candle
from marketdata.interval import Interval
from marketdata.rawmessage import ProgressMark
from marketdata.settings import (
    DEFAULT_HOLD_MS,
    DEFAULT_LATENESS_MS,
    DEFAULT_MAX_AHEAD_MS,
    Settings,
)
from marketdata.trade import Rejection, Trade
from marketdata.watermark import NEVER, VenueClocks, Watermark
from redisstore.streamids import id_ms
from streaming.fastparse import FastParser, ParsedBatch, _picker, entry_message

M1 = Interval.M1
MINUTE = M1.ms
COARSE: tuple[Interval, ...] = tuple(i for i in Interval if i is not M1)


@dataclass(frozen=True)
class WindowConfig:
    """How the candles flow closes windows.

    The candles flow and the archive flow use the same one (:meth:`from_settings`):
    the archive's watermark must never run ahead of the candles flow's.

    Attributes:
        lateness_ms: allowed lateness: a window closes when the watermark (largest
            event time minus this) passes its end.
        hold_ms: a venue silent this long (no trade or mark with a later event time,
            in arrival time) has its windows closed by the arrival clock.
        max_ahead_ms: an event time more than this after both the venue's largest
            event time and the arrival clock is rejected (``bad_timestamp``).
        dedupe_retention_ms: how long (in watermark time) trade ids of a closed 1m
            window are remembered, to tell late duplicates from late trades.

    """

    lateness_ms: int = DEFAULT_LATENESS_MS
    hold_ms: int = DEFAULT_HOLD_MS
    max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS
    dedupe_retention_ms: int = 600_000

    def __post_init__(self) -> None:
        for name in ("lateness_ms", "hold_ms", "max_ahead_ms", "dedupe_retention_ms"):
            if getattr(self, name) < 0:
                msg = f"{name} must not be negative"
                raise ValueError(msg)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: int) -> WindowConfig:
        """The settings' lateness, hold and cap (``overrides`` replace any field)."""
        values = {
            "lateness_ms": settings.lateness_ms,
            "hold_ms": settings.hold_ms,
            "max_ahead_ms": settings.max_ahead_ms,
        }
        return cls(**{**values, **overrides})


class IdRuns:
    """A set of integers stored as sorted runs ``[start, end]`` (compact for consecutive ids)."""

    __slots__ = ("ends", "starts")

    def __init__(self, starts: array[int] | None = None, ends: array[int] | None = None) -> None:
        self.starts = starts if starts is not None else array("q")
        self.ends = ends if ends is not None else array("q")

    @classmethod
    def from_ids(cls, ids: Iterable[int]) -> IdRuns:
        """Runs holding exactly ``ids``."""
        starts, ends = array("q"), array("q")
        if not isinstance(ids, set | frozenset):
            ids = set(ids)
        if ids:
            lo, hi = min(ids), max(ids)
            if hi - lo + 1 == len(ids):  # one run: the common case
                starts.append(lo)
                ends.append(hi)
                return cls(starts, ends)
        prev = None
        for x in sorted(ids):
            if prev is not None and x == prev + 1:
                ends[-1] = x
            else:
                starts.append(x)
                ends.append(x)
            prev = x
        return cls(starts, ends)

    def __contains__(self, x: int) -> bool:
        i = bisect_right(self.starts, x) - 1
        return i >= 0 and x <= self.ends[i]

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))

    def add(self, x: int) -> bool:
        """Add ``x``; False if it was already there."""
        i = bisect_right(self.starts, x) - 1
        if i >= 0 and x <= self.ends[i]:
            return False
        joins_left = i >= 0 and self.ends[i] == x - 1
        joins_right = i + 1 < len(self.starts) and self.starts[i + 1] == x + 1
        if joins_left and joins_right:
            self.ends[i] = self.ends[i + 1]
            del self.starts[i + 1]
            del self.ends[i + 1]
        elif joins_left:
            self.ends[i] = x
        elif joins_right:
            self.starts[i + 1] = x
        else:
            self.starts.insert(i + 1, x)
            self.ends.insert(i + 1, x)
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        # As raw bytes: pickling arrays element by element is what made snapshots slow.
        return (_idruns_from_bytes, (self.starts.tobytes(), self.ends.tobytes()))


def _idruns_from_bytes(starts: bytes, ends: bytes) -> IdRuns:
    a, b = array("q"), array("q")
    a.frombytes(starts)
    b.frombytes(ends)
    return IdRuns(a, b)


class _Win:
    """An open 1m window: its candle so far, the trade ids in it, this batch's rows.

    ``lo``/``hi`` bound the ids in ``seen`` (every addition goes through :meth:`add`
    or :meth:`add_fresh`), so a snapshot can store the usual window, whose ids are
    one consecutive run, as two numbers instead of walking the set.
    """

    __slots__ = ("candle", "exchange", "hi", "lo", "open_time", "rows", "seen", "symbol")

    def __init__(self, exchange: str, symbol: str, open_time: int) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.open_time = open_time
        self.candle: Candle | None = None
        self.seen: set[int] = set()
        self.lo = 1 << 63
        self.hi = -1
        self.rows: list[int] = []

    def add(self, tid: int) -> bool:
        """Add one trade id; False if it was there already."""
        seen = self.seen
        if tid in seen:
            return False
        seen.add(tid)
        if tid < self.lo:
            self.lo = tid
        if tid > self.hi:
            self.hi = tid
        return True

    def add_fresh(self, ids: set[int]) -> None:
        """Add ids known to be new (and non-empty)."""
        self.seen |= ids
        lo, hi = min(ids), max(ids)
        if lo < self.lo:
            self.lo = lo
        if hi > self.hi:
            self.hi = hi

    def __getstate__(self) -> tuple[Any, ...]:
        seen: Any = self.seen
        if seen and self.hi - self.lo + 1 == len(seen):  # seen == [lo, hi]
            seen = (self.lo, self.hi)
        return (self.exchange, self.symbol, self.open_time, self.candle, seen)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.exchange, self.symbol, self.open_time, self.candle, seen = state
        if isinstance(seen, tuple):
            self.lo, self.hi = seen
            self.seen = set(range(self.lo, self.hi + 1))
        else:
            self.seen = seen
            self.lo, self.hi = (min(seen), max(seen)) if seen else (1 << 63, -1)
        self.rows = []


class LateTrade(NamedTuple):
    """A trade that arrived after its window closed, with where it came from.

    Attributes:
        trade: the trade.
        windows: interval label -> open_time of each window it belongs to (all closed
            for it: lateness is decided on the 1m window).
        watermark: the partition's watermark when it arrived.
        stream: the raw-log stream it came from.
        entry_id: its raw-log entry id.

    """

    trade: Trade
    windows: dict[str, int]
    watermark: int
    stream: str
    entry_id: bytes


class RejectedEntry(NamedTuple):
    """A raw-log entry that failed validation (for the DLQ)."""

    rejection: Rejection
    stream: str
    entry_id: bytes
    recv_ms: int


@dataclass
class Emitted:
    """What one batch produced."""

    closed: list[Candle] = field(default_factory=list)
    late: list[LateTrade] = field(default_factory=list)
    rejects: list[RejectedEntry] = field(default_factory=list)
    #: (exchange, symbol) pairs whose open candles changed.
    touched: set[tuple[str, str]] = field(default_factory=set)


def far_ahead_trade(event_time: int, exchange: str, payload: bytes, clock: Watermark) -> Rejection:
    """The rejection of a trade too far ahead of its venue's clock."""
    return Rejection(
        "bad_timestamp",
        payload,
        exchange,
        f"event_time {event_time} is too far ahead of {exchange}'s clock "
        f"(largest event time {clock.e_max})",
    )


def far_ahead(m: ProgressMark, clock: Watermark, arrival_ms: int) -> Rejection:
    """The rejection of a progress mark too far ahead of its venue's clock."""
    payload = b"mark=%d exchange=%s recv_ms=%d" % (m.event_ms, m.exchange.encode(), m.recv_ms)
    return Rejection(
        "bad_timestamp",
        payload,
        m.exchange,
        f"progress mark {m.event_ms} is too far ahead of {m.exchange}'s clock "
        f"(largest event time {clock.e_max}, arrival {arrival_ms})",
    )


def window_keys(event_time: int) -> dict[str, int]:
    """Interval label -> open_time of every window holding ``event_time``."""
    return {i.label: i.floor(event_time) for i in Interval}


_LABEL_MS = {i.label: i.ms for i in Interval}


def _absorb(acc: Candle, c: Candle) -> None:
    """Merge ``c`` (disjoint trades) into ``acc`` in place; ``acc`` keeps its window."""
    if c.high_e8 > acc.high_e8:
        acc.high_e8 = c.high_e8
    if c.low_e8 < acc.low_e8:
        acc.low_e8 = c.low_e8
    if (c.first_event_time, c.first_trade_id) < (acc.first_event_time, acc.first_trade_id):
        acc.open_e8, acc.first_event_time, acc.first_trade_id = (
            c.open_e8,
            c.first_event_time,
            c.first_trade_id,
        )
    if (c.last_event_time, c.last_trade_id) > (acc.last_event_time, acc.last_trade_id):
        acc.close_e8, acc.last_event_time, acc.last_trade_id = (
            c.close_e8,
            c.last_event_time,
            c.last_trade_id,
        )
    acc.volume_e8 += c.volume_e8
    acc.quote_volume_e16 += c.quote_volume_e16
    acc.trade_count += c.trade_count
    acc.taker_buy_volume_e8 += c.taker_buy_volume_e8


def _partial(win: _Win, pb: ParsedBatch, rows: list[int]) -> Candle:
    """The candle of ``rows`` of the batch (all in ``win``), computed column-wise."""
    if pb.spans and any(pb.span(k) != 1 for k in rows):
        # Aggregate trades among them (rare): the domain's fold, which counts spans.
        c = Candle.from_trade(pb.trade(rows[0]), M1)
        for k in rows[1:]:
            c.add(pb.trade(k))
        return c
    if len(rows) == 1:
        k = rows[0]
        p, q = pb.price[k], pb.quantity[k]
        t, tid = pb.event_time[k], pb.trade_id[k]
        return Candle(
            exchange=win.exchange,
            symbol=win.symbol,
            interval=M1,
            open_time=win.open_time,
            open_e8=p,
            high_e8=p,
            low_e8=p,
            close_e8=p,
            volume_e8=q,
            quote_volume_e16=p * q,
            trade_count=1,
            taker_buy_volume_e8=0 if pb.maker[k] else q,
            first_event_time=t,
            first_trade_id=tid,
            last_event_time=t,
            last_trade_id=tid,
        )
    pick = itemgetter(*rows)
    ps: Sequence[int] = pick(pb.price)
    qs: Sequence[int] = pick(pb.quantity)
    ts: Sequence[int] = pick(pb.event_time)
    ids: Sequence[int] = pick(pb.trade_id)
    makers: Sequence[bool] = pick(pb.maker)
    volume = sum(qs)
    ft, fid, fp = min(zip(ts, ids, ps, strict=True))
    lt, lid, lp = max(zip(ts, ids, ps, strict=True))
    return Candle(
        exchange=win.exchange,
        symbol=win.symbol,
        interval=M1,
        open_time=win.open_time,
        open_e8=fp,
        high_e8=max(ps),
        low_e8=min(ps),
        close_e8=lp,
        volume_e8=volume,
        quote_volume_e16=sum(map(mul, ps, qs)),
        trade_count=len(rows),
        taker_buy_volume_e8=volume - sum(compress(qs, makers)),
        first_event_time=ft,
        first_trade_id=fid,
        last_event_time=lt,
        last_trade_id=lid,
    )


class ShardAggregator:
    """Candles of one partition (raw-log stream or shard), batch by batch.

    The state (everything but the parser and config) pickles; see :meth:`dumps`.
    """

    def __init__(
        self,
        stream: str,
        config: WindowConfig | None = None,
        known_symbols: frozenset[str] | None = None,
    ) -> None:
        self.stream = stream
        self.config = config or WindowConfig()
        self.parser = FastParser(known_symbols)
        #: A watermark per venue (exchange); a venue's ``cutoff`` is the open time of
        #: its oldest open 1m window: its 1m windows before it are closed.
        self.clocks = VenueClocks()
        self.wins: dict[tuple[str, str, int], _Win] = {}
        #: (exchange, symbol, interval label, open_time) -> roll-up of its closed 1m candles.
        self.coarse: dict[tuple[str, str, str, int], Candle] = {}
        #: Trade ids of recently closed 1m windows (sets until :meth:`compact`).
        self.retained: dict[tuple[str, str, int], IdRuns | set[int]] = {}
        #: Keys of ``retained`` still held as sets.
        self._uncompacted: list[tuple[str, str, int]] = []
        self.counters: dict[str, int] = {}
        self.last_id: bytes | None = None
        self._scanned: dict[str, int] = {}
        #: Force the exact per-entry path (tests compare it with the fast one).
        self.exact = False

    # -- state --------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["parser"]
        state["known_symbols"] = self.parser.known_symbols
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        known = state.pop("known_symbols")
        if "clocks" not in state:  # a snapshot from when a partition had one watermark
            mark = state.pop("mark", None)
            if mark is None:  # ... and before the watermark had its own class
                mark = Watermark(
                    state.pop("e_max"),
                    state.pop("r_at_max"),
                    state.pop("watermark"),
                    state.pop("cutoff"),
                )
            # Every venue goes on from that watermark: those with open windows or
            # retained ids now, any other when it first appears.
            clocks = VenueClocks(template=mark)
            for key in (*state["wins"], *state["coarse"], *state["retained"]):
                clocks.of(key[0])
            state["clocks"] = clocks
            state.pop("_scanned_cutoff", None)
            state["_scanned"] = {}
        if "_uncompacted" not in state:  # a snapshot from before it existed
            state["_uncompacted"] = [k for k, v in state["retained"].items() if isinstance(v, set)]
        self.__dict__.update(state)
        self.parser = FastParser(known)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def watermark(self) -> int:
        """The slowest venue's watermark, ms (``NEVER`` before any trade)."""
        return self.clocks.low()

    # -- one batch ----------------------------------------------------------------

    def process(
        self,
        ids: Sequence[bytes],
        entries: Sequence[Sequence[bytes]],
        tick_ms: int | None = None,
    ) -> Emitted:
        """Fold a batch of raw-log entries (ids and flat field lists), in stream order.

        ``tick_ms`` is an arrival-clock reading (Redis ``TIME``) taken when the
        stream had no entry after this batch: it lets the watermark advance while
        the stream is idle.
        """
        out = Emitted()
        # The trade ids of windows closed by earlier batches become runs now, not in
        # the batch that closed them (its candles go out first) nor in a snapshot.
        self.compact()
        if ids:
            pb = self.parser.parse_batch(entries)
            self._count("entries", len(ids))
            for pos, rej, msg in pb.rejects:
                self._reject(rej, ids[pos], msg.recv_ms, out)
            if not pb.marks:
                if len(pb):
                    self._fold(ids, entries, pb, out)
            else:
                # The trades between two marks are folded as one batch, then the mark
                # moves its venue's clock: stream order, whatever the batching.
                done = 0
                for pos, m in pb.marks:
                    upto = bisect_right(pb.idx, pos, lo=done)
                    if upto > done:
                        self._fold(ids, entries, pb.rows(done, upto), out)
                    done = upto
                    self._mark(m, ids[pos], out)
                if done < len(pb):
                    self._fold(ids, entries, pb.rows(done, len(pb)), out)
            self.last_id = ids[-1]
            self._advance_clock(id_ms(ids[-1]))
        if tick_ms is not None:
            self._advance_clock(tick_ms)
        self._close(out)
        return out

    def _advance_clock(self, clock: int) -> None:
        self.clocks.advance(clock, self.config.lateness_ms, self.config.hold_ms)

    def _reject(self, rej: Rejection, entry_id: bytes, recv_ms: int, out: Emitted) -> None:
        out.rejects.append(
            RejectedEntry(rejection=rej, stream=self.stream, entry_id=entry_id, recv_ms=recv_ms)
        )
        self._count("rejected")
        self._count(f"rejected:{rej.reason}")

    def _mark(self, m: ProgressMark, entry_id: bytes, out: Emitted) -> None:
        """A feed's progress mark: its venue's clock moves to it (unless far ahead)."""
        cfg = self.config
        clock = id_ms(entry_id)
        wm, _ = self.clocks.arrive(m.exchange, NEVER, clock, cfg.lateness_ms, cfg.hold_ms)
        self._count("marks")
        if wm.too_far_ahead(m.event_ms, clock, cfg.max_ahead_ms):
            self._reject(far_ahead(m, wm, clock), entry_id, m.recv_ms, out)
            return
        wm.observe(m.event_ms, clock, cfg.lateness_ms)

    def _fold(
        self,
        ids: Sequence[bytes],
        entries: Sequence[Sequence[bytes]],
        pb: ParsedBatch,
        out: Emitted,
    ) -> None:
        cfg = self.config
        exchanges = pb.exchange
        # One venue in the batch (the usual case) takes the grouped path, against its clock.
        exact = self.exact or exchanges.count(exchanges[0]) != len(exchanges)
        if not exact:
            # The arrival clock cannot matter inside this batch if even its last entry
            # is within hold_ms of the arrival of the largest event time, nor can the
            # cap on event times far ahead if none is ahead of where the batch starts.
            mark = self.clocks.of(exchanges[0])
            first = id_ms(ids[pb.idx[0]])
            since = mark.r_at_max if mark.e_max != NEVER else first
            exact = (
                id_ms(ids[pb.idx[-1]]) - since > cfg.hold_ms
                or max(pb.event_time) > max(mark.e_max, first) + cfg.max_ahead_ms
            )
        if exact:
            touched, late_rows, far = self._rows_exact(ids, pb)
            for k, clock in far:
                msg = entry_message(entries[pb.idx[k]])
                rej = far_ahead_trade(pb.event_time[k], pb.exchange[k], msg.payload, clock)
                self._reject(rej, ids[pb.idx[k]], msg.recv_ms, out)
        else:
            touched, late_rows = self._rows_grouped(ids, pb)
        for w in touched:
            part = _partial(w, pb, w.rows)
            if w.candle is None:
                w.candle = part
            else:
                _absorb(w.candle, part)
            w.rows = []
            out.touched.add((w.exchange, w.symbol))
        for k, wm in late_rows:
            self._late(pb, k, wm, ids, out)

    def _rows_grouped(
        self, ids: Sequence[bytes], pb: ParsedBatch
    ) -> tuple[list[_Win], list[tuple[int, int]]]:
        """Assign rows to windows a window at a time (no arrival-clock effects here).

        Every row is of one venue (:meth:`_fold` sends mixed batches to the exact
        path). The watermark a row meets depends only on the largest event time before
        it, so the late rows are found with a running maximum over the batch: the rule
        of :meth:`Watermark.arrive` and :meth:`Watermark.observe`, written out over the
        whole batch because this is the hot path (:meth:`_rows_exact` applies it entry
        by entry; the tests compare the two).
        """
        ts = pb.event_time
        lateness = self.config.lateness_ms
        one_exchange = pb.exchange[0]
        mark = self.clocks.of(one_exchange)
        wm0 = mark.value
        late_rows: list[tuple[int, int]] = []
        skip: set[int] = set()
        maxt = max(ts)
        wm_end = max(wm0, maxt - lateness)
        # A row is late only if its window closed before it came: either it is behind
        # the cutoff the batch started with, or more than the lateness behind the
        # largest time before it. One cheap pass rules both out for most batches.
        if (
            wm_end > NEVER
            and min(ts) < wm_end - wm_end % MINUTE
            and (
                min(ts) < mark.cutoff
                or any(map(lt, map(add, ts, repeat(lateness)), accumulate(ts, max)))
            )
        ):
            # Some row may be late: the watermark each row meets, by running maximum.
            marks = list(map(max, repeat(wm0), map(sub, accumulate(ts, max), repeat(lateness))))
            cuts = map(sub, marks, map(mod, marks, repeat(MINUTE)))
            late = list(compress(range(len(ts)), map(lt, ts, cuts)))
            late_rows = [(k, marks[k]) for k in late]
            skip = set(late)
        groups: dict[tuple[str, int], list[int]] = {}
        minutes = map(sub, ts, map(mod, ts, repeat(MINUTE)))
        for k, gk in enumerate(zip(pb.symbol, minutes, strict=False)):
            rows = groups.get(gk)
            if rows is None:
                groups[gk] = [k]
            else:
                rows.append(k)
        wins = self.wins
        tids = pb.trade_id
        touched: list[_Win] = []
        dups = 0
        for gkey, rows in groups.items():
            if skip:
                rows = [k for k in rows if k not in skip]
                if not rows:
                    continue
            key = (one_exchange, gkey[0], gkey[1])
            w = wins.get(key)
            if w is None:
                w = wins[key] = _Win(*key)
            batch_ids = list(_picker(rows)(tids))
            fresh = set(batch_ids)
            if len(fresh) == len(rows) and w.seen.isdisjoint(fresh):
                w.add_fresh(fresh)
                good = rows
            else:
                good = []
                for k, tid in zip(rows, batch_ids, strict=True):
                    if w.add(tid):
                        good.append(k)
                    else:
                        dups += 1
            if good:
                w.rows = good
                touched.append(w)
        if maxt > mark.e_max:
            # The first row with the largest time raised it (it cannot be a duplicate:
            # everything seen before had a smaller time).
            mark.observe(maxt, id_ms(ids[pb.idx[ts.index(maxt)]]), lateness)
        self._count("duplicates", dups)
        self._count("trades", sum(len(w.rows) for w in touched))
        return touched, late_rows

    def _rows_exact(
        self, ids: Sequence[bytes], pb: ParsedBatch
    ) -> tuple[list[_Win], list[tuple[int, int]], list[tuple[int, Watermark]]]:
        """Assign rows to windows, with the arrival clock and the cap on times ahead per entry.

        Returns the touched windows, the late rows (with the watermark they met) and
        the rows too far ahead of their venue's clock (with a copy of that clock).
        """
        cfg = self.config
        clocks = self.clocks
        wins = self.wins
        touched: list[_Win] = []
        late_rows: list[tuple[int, int]] = []
        far: list[tuple[int, Watermark]] = []
        dups = 0
        for k, (pos, ex, sym, tid, t) in enumerate(
            zip(pb.idx, pb.exchange, pb.symbol, pb.trade_id, pb.event_time, strict=True)
        ):
            clock = id_ms(ids[pos])
            mark, late = clocks.arrive(ex, t, clock, cfg.lateness_ms, cfg.hold_ms)
            if late:
                late_rows.append((k, mark.value))
                continue
            if mark.too_far_ahead(t, clock, cfg.max_ahead_ms):
                far.append((k, Watermark(*mark.__getstate__())))
                continue
            o = t - t % MINUTE
            key = (ex, sym, o)
            w = wins.get(key)
            if w is None:
                w = wins[key] = _Win(ex, sym, o)
            if not w.add(tid):
                dups += 1
                continue
            if not w.rows:
                touched.append(w)
            w.rows.append(k)
            mark.observe(t, clock, cfg.lateness_ms)
        self._count("duplicates", dups)
        self._count("trades", sum(len(w.rows) for w in touched))
        return touched, late_rows, far

    def _late(self, pb: ParsedBatch, k: int, wm: int, ids: Sequence[bytes], out: Emitted) -> None:
        """A trade whose 1m window had closed when it arrived (watermark ``wm`` then)."""
        ex, sym, tid, t = pb.exchange[k], pb.symbol[k], pb.trade_id[k], pb.event_time[k]
        o = t - t % MINUTE
        key = (ex, sym, o)
        w = self.wins.get(key)
        if o + MINUTE + self.config.dedupe_retention_ms <= wm:
            # Past retention, judged by the watermark at arrival only (never by what
            # happens to be still in memory), so a replay decides the same.
            fresh = True
        elif w is not None:  # closed in this very batch, not yet flushed
            fresh = w.add(tid)
        else:
            runs = self.retained.get(key)
            if runs is None:
                fresh = True
                self.retained[key] = {tid}
                self._uncompacted.append(key)
            elif isinstance(runs, set):
                fresh = tid not in runs
                runs.add(tid)
            else:
                fresh = runs.add(tid)
        if not fresh:
            self._count("duplicates")
            return
        self._count("late")
        trade = Trade(
            exchange=ex,
            symbol=sym,
            trade_id=tid,
            price_e8=pb.price[k],
            quantity_e8=pb.quantity[k],
            event_time=t,
            is_buyer_maker=pb.maker[k],
            span=pb.span(k),
        )
        out.late.append(
            LateTrade(
                trade=trade,
                windows=window_keys(t),
                watermark=wm,
                stream=self.stream,
                entry_id=ids[pb.idx[k]],
            )
        )

    # -- closing ------------------------------------------------------------------

    def _close(self, out: Emitted) -> None:
        cutoffs = self.clocks.cutoffs()
        if cutoffs == self._scanned:
            return
        self._scanned = cutoffs
        closing = sorted(k for k in self.wins if k[2] < cutoffs.get(k[0], NEVER))
        retain = self.config.dedupe_retention_ms > 0
        for key in closing:
            w = self.wins.pop(key)
            c = w.candle
            if c is None:  # only rows not yet folded cannot happen here; defensive
                continue
            out.closed.append(c)
            ex, sym, o = key
            for iv in COARSE:
                ck = (ex, sym, iv.label, o - o % iv.ms)
                acc = self.coarse.get(ck)
                if acc is None:
                    self.coarse[ck] = c.rolled_up(iv)
                else:
                    _absorb(acc, c)
            if retain:
                if w.seen and w.hi - w.lo + 1 == len(w.seen):  # one run: the usual case
                    self.retained[key] = IdRuns(array("q", [w.lo]), array("q", [w.hi]))
                else:  # compacted by the next batch, off the path of the closed candle
                    self.retained[key] = w.seen
                    self._uncompacted.append(key)
        done = sorted(
            (
                k
                for k, c in self.coarse.items()
                if c.open_time + c.interval.ms <= cutoffs.get(k[0], NEVER)
            ),
            key=lambda k: (_LABEL_MS[k[2]], k),
        )
        for ck in done:
            out.closed.append(self.coarse.pop(ck))
        keep = MINUTE + self.config.dedupe_retention_ms
        horizon = {v: m.value - keep for v, m in self.clocks.clocks.items()}
        for key in [k for k in self.retained if k[2] <= horizon.get(k[0], NEVER)]:
            del self.retained[key]
        self._count("closed", len(closing) + len(done))

    def compact(self) -> None:
        """Store the trade ids of closed windows as runs (memory stays bounded by runs)."""
        if not self._uncompacted:
            return
        for key in self._uncompacted:
            ids = self.retained.get(key)
            if isinstance(ids, set):
                self.retained[key] = IdRuns.from_ids(ids)
        self._uncompacted = []

    # -- views --------------------------------------------------------------------

    def open_candles(self, keys: Iterable[tuple[str, str]] | None = None) -> list[Candle]:
        """Current candles of every open window (all intervals), optionally of some pairs.

        A coarse window's candle is its closed 1m candles rolled up, merged with the
        1m windows of it still open.
        """
        want = None if keys is None else set(keys)
        cur: dict[tuple[str, str, str, int], Candle] = {}
        for (ex, sym, label, o), c in self.coarse.items():
            if want is None or (ex, sym) in want:
                cur[(ex, sym, label, o)] = c
        for (ex, sym, o), w in self.wins.items():
            if w.candle is None or (want is not None and (ex, sym) not in want):
                continue
            cur[(ex, sym, M1.label, o)] = w.candle
            for iv in COARSE:
                ck = (ex, sym, iv.label, iv.floor(o))
                acc = cur.get(ck)
                cur[ck] = w.candle.rolled_up(iv) if acc is None else acc.merged(w.candle)
        # Copies: the aggregator keeps folding into its own candles in place.
        return [cur[k].copy() for k in sorted(cur)]

    def live_candles(self, keys: Iterable[tuple[str, str]]) -> list[Candle]:
        """The newest open window's candle per (exchange, symbol, interval) of ``keys``."""
        newest: dict[tuple[str, str, str], Candle] = {}
        for c in self.open_candles(keys):
            k = (c.exchange, c.symbol, c.interval.label)
            prev = newest.get(k)
            if prev is None or c.open_time > prev.open_time:
                newest[k] = c
        return list(newest.values())

    def flush_all(self) -> list[Candle]:
        """Every open window's candle, as if closed now (end of input); state unchanged."""
        return self.open_candles()
