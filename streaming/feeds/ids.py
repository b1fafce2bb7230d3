"""Trade-id accounting the live venue feeds share (Binance, Coinbase).

The venues' trade ids are contiguous per symbol (Binance) or product (Coinbase), so
the same accounting serves both:

- :class:`IdTracker`: the ids of one key accounted for (written, or given up on) as
  a watermark plus disjoint ranges above it, so memory grows with the open gaps,
  not with the trades.
- :class:`IdBook`: one tracker per key and what every venue does with them: the run's
  counters (duplicates, gaps, filled, lost), the previous run's positions not yet
  taken up, the keys unsure of what they missed, the positions last recorded and the
  ones that moved since, giving up on ids, the gaps left open at a stop.
- :class:`ResumePoints`: the previous run's positions, kept in a Redis hash.

What is a venue's own stays in its package: ``binance/ids.py`` (:class:`TradeIds`:
taking up a position with the first trade, REST probes and the connection epochs)
and ``coinbase/ids.py`` (:class:`ProductIds`: heartbeats, the ids known to exist
beyond those received, the resume floor; :class:`CoinbaseResumePoints`).
"""

from __future__ import annotations

import logging
import urllib.parse
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import redis

from redisstore.keys import BINANCE_RESUME_KEY
from streaming.prom import FEED_GAPS, count_feed


class ResumePoints:
    """Per key, the trade id up to which every trade is in the raw log (Redis hash).

    Written by the feed after each write that left nothing buffered; read when it
    starts. A failed write is skipped (the next one carries a later position).

    The hash is ``<prefix>:<websocket host:port>``, suffixed ``:<event>`` for a stream
    other than ``trade`` (Binance's ``aggTrade``, whose ids are aggregate ids). The
    prefix is the Binance feed's (:data:`~redisstore.keys.BINANCE_RESUME_KEY`);
    another venue's subclass sets its own (:class:`CoinbaseResumePoints`).
    """

    #: The hash's name before ``:<websocket host:port>``.
    prefix: ClassVar[str] = BINANCE_RESUME_KEY
    #: The feed's name in log lines.
    feed: ClassVar[str] = "binance feed"
    #: The feed's logger.
    log: ClassVar[logging.Logger] = logging.getLogger("streaming.feeds.binance")

    def __init__(self, client: redis.Redis, ws_url: str, event: str = "trade") -> None:
        self.client = client
        self.key = f"{self.prefix}:{urllib.parse.urlsplit(ws_url).netloc}"
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
            self.log.debug("%s: resume positions not recorded: %s", self.feed, exc)
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


class IdCounts(Protocol):
    """The counters of a run an :class:`IdBook` keeps (``FeedStats``, ``CoinbaseStats``)."""

    trades: int
    duplicates: int
    gaps: int
    gap_ids: int
    filled: int
    lost: int
    resumed: int


S = TypeVar("S", bound=IdCounts)


class IdBook(Generic[S]):
    """The ids of every key (symbol, product) of a live feed: what every venue does.

    A venue's subclass sets :attr:`feed` and :attr:`log` (and :attr:`noun` when its
    ids are not trade ids) and adds how its ids are received (``accept``), when a
    backfill is ``pending`` and what a lost connection means (``lose_connection``).

    Args:
        keys: the feed's symbols or products.
        stats: counters of the run (trades, duplicates, gaps, lost, resumed ...).
        resume_at: the previous run's positions (also given later by
            :meth:`take_up_positions`).

    """

    #: The feed's name, the start of its log lines ("binance feed").
    feed: ClassVar[str]
    #: The feed's logger.
    log: ClassVar[logging.Logger]

    def __init__(
        self, keys: tuple[str, ...], stats: S, resume_at: Mapping[str, int] | None = None
    ) -> None:
        self.trackers = {k: IdTracker() for k in keys}
        self.stats = stats
        #: What the ids count, in log lines ("trade", "aggregate trade").
        self.noun = "trade"
        #: Positions of the previous run not yet taken up (by a key's first trade).
        self.resume_at: dict[str, int] = dict(resume_at or {})
        #: Positions last recorded in the resume store.
        self.saved: dict[str, int] = dict(resume_at or {})
        #: Keys that may have missed trades nobody knows of yet: the ones with a
        #: position from the previous run, and after a lost connection, until the
        #: venue says where the key is (the venue's subclass says how).
        self.unsure: set[str] = set(self.resume_at)
        #: Keys that had a gap open (pruned by the subclass's ``pending``).
        self._open: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return key in self.trackers

    def take_up_positions(self, points: Mapping[str, int]) -> None:
        """Start from the previous run's positions (each key unsure until settled)."""
        self.resume_at = dict(points)
        self.saved = dict(points)
        self.unsure = set(points)

    def holes(self, key: str) -> list[tuple[int, int]]:
        """The missing ranges (inclusive) of ``key``: between the ids accounted for."""
        return self.trackers[key].holes()

    def accept_filled(self, key: str, tid: int) -> bool:
        """Account for a trade id fetched from REST; ``False`` for a duplicate."""
        if not self.trackers[key].add(tid):
            self.stats.duplicates += 1
            return False
        self.stats.trades += 1
        self.stats.filled += 1
        count_feed(FEED_GAPS)
        return True

    def give_up(self, key: str, lo: int, hi: int, why: str) -> None:
        """Account for ids ``lo..hi`` that will not be written (counted as lost)."""
        lost = self.trackers[key].mark(lo, hi)
        self.stats.lost += lost
        self.log.warning(
            "%s: %s: giving up on %d %s ids in %d..%d (%s)",
            self.feed,
            key,
            lost,
            self.noun,
            lo,
            hi,
            why,
        )

    def moved(self) -> dict[str, int] | None:
        """Positions that moved since last recorded (``None``: none)."""
        out = {}
        for key, tracker in self.trackers.items():
            w = tracker.watermark
            if w is not None and w != self.saved.get(key):
                out[key] = w
        return out or None

    def log_open_gaps(self) -> None:
        """Warn about the ids still missing (at a stop): :meth:`holes` of every key."""
        for key in self.trackers:
            holes = self.holes(key)
            if holes:
                n = sum(hi - lo + 1 for lo, hi in holes)
                self.log.warning(
                    "%s: %s: stopping with %d %s ids unfilled in %d gaps (%s)",
                    self.feed,
                    key,
                    n,
                    self.noun,
                    len(holes),
                    ", ".join(f"{lo}..{hi}" for lo, hi in holes[:5]),
                )

    def _opened(self, key: str, lo: int, hi: int, by: str | None = None) -> None:
        """Count the gap ``lo..hi`` of ``key`` opened (``by``: what showed it, if said)."""
        self.stats.gaps += 1
        self.stats.gap_ids += hi - lo + 1
        self._open.add(key)
        seen = "" if by is None else f" seen by {by}"
        self.log.info(
            "%s: %s gap of %d %s ids (%d..%d)%s; filling from REST",
            self.feed,
            key,
            hi - lo + 1,
            self.noun,
            lo,
            hi,
            seen,
        )
