"""Trade-id tracking and resuming of the Binance feed (see :mod:`streaming.feeds.binance`).

Binance trade ids (and aggregate trade ids) are contiguous per symbol. :class:`IdTracker`
holds the ids of one symbol accounted for (written, or given up on) as a watermark
plus disjoint ranges above it, so memory grows with the open gaps, not with the trades;
:class:`TradeIds` does it for every symbol, counts duplicates and gaps, and takes up
the previous run's positions, which :class:`ResumePoints` keeps in Redis.
"""

from __future__ import annotations

import logging
import urllib.parse
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import Any

import redis

from redisstore.keys import BINANCE_RESUME_KEY
from streaming.feeds.binance.config import TRADES, FeedStats, FeedTuning, TradeStream
from streaming.prom import FEED_GAPS, count_feed

log = logging.getLogger("streaming.feeds.binance")

#: Hash (suffixed ``:<websocket host:port>``, and ``:aggTrade`` for the aggregate
#: stream, whose ids are aggregate ids): symbol -> id up to which every trade is in
#: the raw log.
RESUME_KEY = BINANCE_RESUME_KEY


class ResumePoints:
    """Per symbol, the trade id up to which every trade is in the raw log (Redis hash).

    Written by the feed after each write that left nothing buffered; read when it
    starts. A failed write is skipped (the next one carries a later position).
    """

    def __init__(self, client: redis.Redis, ws_url: str, event: str = "trade") -> None:
        self.client = client
        self.key = f"{RESUME_KEY}:{urllib.parse.urlsplit(ws_url).netloc}"
        if event != "trade":
            self.key += f":{event}"

    def load(self, symbols: tuple[str, ...]) -> dict[str, int]:
        """The recorded positions of ``symbols`` (those without one are left out)."""
        values = self.client.hmget(self.key, list(symbols))
        out = {}
        for sym, raw in zip(symbols, values, strict=True):
            if raw is not None and raw.strip().isdigit():
                out[sym] = int(raw)
        return out

    def save(self, marks: Mapping[str, int]) -> bool:
        """Record positions; ``False`` when Redis refused (logged at DEBUG)."""
        try:
            mapping: dict[Any, Any] = dict(marks)
            self.client.hset(self.key, mapping=mapping)
        except redis.RedisError as exc:
            log.debug("binance feed: resume positions not recorded: %s", exc)
            return False
        return True


class IdTracker:
    """The trade ids of one symbol accounted for (written, or given up on).

    Every id up to ``watermark`` is accounted for; above it, disjoint, non-adjacent
    inclusive ranges ``[_lo[i], _hi[i]]``. The holes between them are the gaps.
    """

    __slots__ = ("_hi", "_lo", "watermark")

    def __init__(self) -> None:
        self.watermark: int | None = None
        self._lo: list[int] = []
        self._hi: list[int] = []

    @property
    def complete(self) -> bool:
        """No hole: every id up to the top is accounted for."""
        return not self._lo

    @property
    def top(self) -> int | None:
        """The highest id accounted for."""
        return self._hi[-1] if self._hi else self.watermark

    def seen(self, tid: int) -> bool:
        """Whether ``tid`` is accounted for."""
        if self.watermark is None:
            return False
        if tid <= self.watermark:
            return True
        i = bisect_right(self._lo, tid) - 1
        return i >= 0 and tid <= self._hi[i]

    def add(self, tid: int) -> bool:
        """Account for one id; ``False`` when it already was (a duplicate)."""
        if self.watermark is None:
            self.watermark = tid
            return True
        return self.mark(tid, tid) == 1

    def mark(self, lo: int, hi: int) -> int:
        """Account for ids ``lo..hi``; returns how many were not accounted for before."""
        if self.watermark is None:
            msg = "mark() before the first id"
            raise RuntimeError(msg)
        lo = max(lo, self.watermark + 1)
        if lo > hi:
            return 0
        # Ranges overlapping or adjacent to [lo, hi] are merged into it.
        i = bisect_left(self._hi, lo - 1)
        j = bisect_right(self._lo, hi + 1)
        new = hi - lo + 1
        for k in range(i, j):
            new -= max(0, min(self._hi[k], hi) - max(self._lo[k], lo) + 1)
        if i < j:
            lo, hi = min(lo, self._lo[i]), max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]
        if self._lo[0] == self.watermark + 1:
            self.watermark = self._hi[0]
            del self._lo[0], self._hi[0]
        return new

    def holes(self) -> list[tuple[int, int]]:
        """The missing ranges (inclusive) between the watermark and the top."""
        out = []
        prev = self.watermark
        for lo, hi in zip(self._lo, self._hi, strict=True):
            assert prev is not None
            out.append((prev + 1, lo - 1))
            prev = hi
        return out

    def first_missing(self, lo: int, hi: int) -> int | None:
        """The smallest id in ``lo..hi`` not accounted for, or ``None``."""
        if self.watermark is not None:
            lo = max(lo, self.watermark + 1)
            i = bisect_right(self._lo, lo) - 1
            if i >= 0 and lo <= self._hi[i]:
                lo = self._hi[i] + 1
        return lo if lo <= hi else None


class TradeIds:
    """The ids of every symbol of the feed: duplicates, gaps, resume positions.

    Args:
        symbols: the feed's symbols.
        tuning: ``resume_max_ids`` bounds what a resume fetches.
        stats: counters of the run (trades, duplicates, gaps, lost, resumed ...).
        resume_at: the previous run's positions, taken up by each symbol's first trade.
        stream: the trade stream whose ids these are (trade ids, or aggregate trade
            ids of ``@aggTrade``): its names in log lines.

    """

    def __init__(
        self,
        symbols: tuple[str, ...],
        tuning: FeedTuning,
        stats: FeedStats,
        resume_at: Mapping[str, int] | None = None,
        stream: TradeStream = TRADES,
    ) -> None:
        self.trackers = {s: IdTracker() for s in symbols}
        self.noun = stream.noun
        self.dumps = stream.dumps
        self.tuning = tuning
        self.stats = stats
        #: Positions of the previous run not yet taken up (a symbol's first trade does).
        self.resume_at: dict[str, int] = dict(resume_at or {})
        #: Positions last recorded in the resume store.
        self.saved: dict[str, int] = dict(resume_at or {})
        #: Symbols that may have missed trades nobody knows of yet: the ones with a
        #: position from the previous run, and every symbol with ids after a
        #: connection was lost, until the socket shows a trade of it or REST says
        #: what its newest trade is (:meth:`probed`).
        self.unsure: set[str] = set(self.resume_at)
        #: Counts lost connections: a probe answered across a loss settles nothing.
        self.epoch = 0
        #: Symbols that had a gap open (pruned by :meth:`pending`).
        self._open: set[str] = set()

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.trackers

    def take_up_positions(self, points: Mapping[str, int]) -> None:
        """Start from the previous run's positions (each symbol unsure until settled)."""
        self.resume_at = dict(points)
        self.saved = dict(points)
        self.unsure = set(points)

    def lose_connection(self) -> None:
        """The socket was lost: any symbol seen so far may have missed trades since."""
        self.epoch += 1
        self.unsure |= {s for s, t in self.trackers.items() if t.watermark is not None}
        self.unsure |= set(self.resume_at)

    def pending(self) -> bool:
        """Is a backfill pending: an open gap, or a symbol unsure of what it missed?"""
        if self._open:
            self._open = {s for s in self._open if not self.trackers[s].complete}
        return bool(self._open or self.unsure)

    def accept(self, symbol: str, tid: int) -> tuple[bool, bool]:
        """Account for a received trade id: (new, whether it opened a gap)."""
        self.unsure.discard(symbol)
        return self._accept(symbol, tid)

    def probed(self, symbol: str, tid: int | None, epoch: int) -> tuple[bool, bool]:
        """REST says ``symbol``'s newest trade is ``tid`` (``None``: it has none).

        Asked while connected (``epoch`` when asked): every trade after it comes from
        the socket, so the symbol is settled; the trade is accounted for like a
        received one (new, whether it opened a gap: the ids missed before it). An
        answer across a lost connection (``epoch`` moved on) settles nothing.
        """
        if epoch != self.epoch:
            return False, False
        self.unsure.discard(symbol)
        tracker = self.trackers[symbol]
        if tid is None:
            return False, False
        if tracker.watermark is None:
            point = self.resume_at.get(symbol)
            if point is None:
                return False, False  # a fresh start: the past is not ours to fetch
            if tid == point:  # nothing happened while we were down
                del self.resume_at[symbol]
                tracker.watermark = point
                self.stats.resumed += 1
                return False, False
        return self._accept(symbol, tid)

    def _accept(self, symbol: str, tid: int) -> tuple[bool, bool]:
        tracker = self.trackers[symbol]
        if tracker.watermark is None and symbol in self.resume_at:
            self._take_up(symbol, self.resume_at.pop(symbol), tid)
        top = tracker.top
        if not tracker.add(tid):
            self.stats.duplicates += 1
            return False, False
        self.stats.trades += 1
        if top is not None and tid > top + 1:
            missing = tid - top - 1
            self.stats.gaps += 1
            self.stats.gap_ids += missing
            self._open.add(symbol)
            log.info(
                "binance feed: %s gap of %d %s ids (%d..%d); filling from REST",
                symbol,
                missing,
                self.noun,
                top + 1,
                tid - 1,
            )
            return True, True
        return True, False

    def accept_filled(self, symbol: str, tid: int) -> bool:
        """Account for a trade id fetched from REST; ``False`` for a duplicate."""
        if not self.trackers[symbol].add(tid):
            self.stats.duplicates += 1
            return False
        self.stats.trades += 1
        self.stats.filled += 1
        count_feed(FEED_GAPS)
        return True

    def give_up(self, symbol: str, lo: int, hi: int, why: str) -> None:
        """Account for ids ``lo..hi`` that will not be written (counted as lost)."""
        lost = self.trackers[symbol].mark(lo, hi)
        self.stats.lost += lost
        log.warning(
            "binance feed: %s: giving up on %d %s ids in %d..%d (%s)",
            symbol,
            lost,
            self.noun,
            lo,
            hi,
            why,
        )

    def _take_up(self, symbol: str, point: int, tid: int) -> None:
        """Start ``symbol``'s ids at the previous run's ``point`` (first trade: ``tid``)."""
        tracker = self.trackers[symbol]
        if tid <= point:
            log.warning(
                "binance feed: %s: first %s id %d is not above the last run's position "
                "%d: not the same id sequence (another venue, or ids were reset); starting "
                "from the live stream",
                symbol,
                self.noun,
                tid,
                point,
            )
            return
        self.stats.resumed += 1
        floor = max(point, tid - 1 - self.tuning.resume_max_ids)
        if floor > point:
            n = floor - point
            self.stats.lost += n
            log.warning(
                "binance feed: %s: %d %ss were missed since the last run; the oldest %d "
                "(ids %d..%d) are not fetched from REST (resume_max_ids=%d): load Binance's "
                "daily %s dumps for them with 'cryptopipe lake import'",
                symbol,
                tid - 1 - point,
                self.noun,
                n,
                point + 1,
                floor,
                self.tuning.resume_max_ids,
                self.dumps,
            )
        tracker.watermark = floor

    def moved(self) -> dict[str, int] | None:
        """Positions that moved since last recorded (``None``: none)."""
        out = {}
        for sym, tracker in self.trackers.items():
            w = tracker.watermark
            if w is not None and w != self.saved.get(sym):
                out[sym] = w
        return out or None

    def log_open_gaps(self) -> None:
        """Warn about the ids still missing (at a stop)."""
        for symbol, tracker in self.trackers.items():
            holes = tracker.holes()
            if holes:
                n = sum(hi - lo + 1 for lo, hi in holes)
                log.warning(
                    "binance feed: %s: stopping with %d %s ids unfilled in %d gaps (%s)",
                    symbol,
                    n,
                    self.noun,
                    len(holes),
                    ", ".join(f"{lo}..{hi}" for lo, hi in holes[:5]),
                )
