"""Trade-id tracking and resuming of the Coinbase feed (see :mod:`streaming.feeds.coinbase`).

Coinbase Exchange trade ids are consecutive per product. :class:`ProductIds` keeps,
per product, the ids accounted for (written, or given up on) in the Binance feed's
:class:`~streaming.feeds.binance.ids.IdTracker` (a watermark and disjoint ranges
above it), and what the ``heartbeat`` channel says exists beyond them: a heartbeat
whose ``last_trade_id`` is above the highest id received opens a gap up to it. The
previous run's positions are kept in Redis by :class:`CoinbaseResumePoints`.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping

import redis

from redisstore.keys import COINBASE_RESUME_KEY
from streaming.feeds.binance.ids import IdTracker, ResumePoints
from streaming.feeds.coinbase.config import CoinbaseStats, CoinbaseTuning
from streaming.prom import FEED_GAPS, count_feed

log = logging.getLogger("streaming.feeds.coinbase")


class CoinbaseResumePoints(ResumePoints):
    """Per product, the trade id up to which every trade is in the raw log.

    The Redis hash ``md:feed:coinbase:resume:<websocket host:port>``; loads and saves
    as the Binance feed's :class:`~streaming.feeds.binance.ids.ResumePoints`.
    """

    def __init__(self, client: redis.Redis, ws_url: str) -> None:
        self.client = client
        self.key = f"{COINBASE_RESUME_KEY}:{urllib.parse.urlsplit(ws_url).netloc}"


class ProductIds:
    """The trade ids of every product of the feed: duplicates, gaps, resume positions.

    Args:
        products: the feed's products.
        tuning: ``resume_max_ids`` bounds what a resume fetches.
        stats: counters of the run (trades, duplicates, gaps, lost, resumed ...).

    """

    def __init__(
        self, products: tuple[str, ...], tuning: CoinbaseTuning, stats: CoinbaseStats
    ) -> None:
        self.trackers = {p: IdTracker() for p in products}
        self.tuning = tuning
        self.stats = stats
        #: Positions of the previous run not yet taken up (by a product's first match
        #: or heartbeat).
        self.resume_at: dict[str, int] = {}
        #: Positions last recorded in the resume store.
        self.saved: dict[str, int] = {}
        #: Products that may have missed trades nobody knows of yet: after a start
        #: with resume positions and after a lost connection, until a heartbeat (or a
        #: match) of the new connection says where the product is.
        self.unsure: set[str] = set()
        #: Per product, the highest trade id a heartbeat said exists, while it is
        #: above every id accounted for (the top of an open gap).
        self.ahead: dict[str, int] = {}
        #: Products that had a gap open (pruned by :meth:`pending`).
        self._open: set[str] = set()

    def __contains__(self, product: object) -> bool:
        return product in self.trackers

    def take_up_positions(self, points: Mapping[str, int]) -> None:
        """Start from the previous run's positions (each product unsure until settled)."""
        self.resume_at = dict(points)
        self.saved = dict(points)
        self.unsure = set(points)

    def lose_connection(self) -> None:
        """The socket was lost: every product may have missed trades since."""
        self.unsure = set(self.trackers)

    def pending(self) -> bool:
        """Is a backfill pending: an open gap, or a product unsure of what it missed?"""
        if self._open:
            still = set()
            for p in self._open:
                tracker = self.trackers[p]
                top = tracker.top
                if tracker.complete and top is not None and top >= self.ahead.get(p, top):
                    self.ahead.pop(p, None)
                else:
                    still.add(p)
            self._open = still
        return bool(self._open or self.unsure)

    def holes(self, product: str) -> list[tuple[int, int]]:
        """The missing ranges (inclusive) of ``product``.

        Between the ids accounted for, and from the highest one up to what a heartbeat
        said exists.
        """
        tracker = self.trackers[product]
        out = tracker.holes()
        top = tracker.top
        ahead = self.ahead.get(product)
        if top is not None and ahead is not None and ahead > top:
            out.append((top + 1, ahead))
        return out

    def accept(self, product: str, tid: int) -> tuple[bool, bool]:
        """Account for a received match's trade id: (new, whether it opened a gap)."""
        self.unsure.discard(product)
        tracker = self.trackers[product]
        if tracker.watermark is None and product in self.resume_at:
            point = self.resume_at.pop(product)
            if tid <= point:
                if tid == point:  # the last_match sent on subscribing: written before
                    tracker.watermark = point
                    self.stats.resumed += 1
                else:
                    self._other_sequence(product, tid, point)
            else:
                self.stats.resumed += 1
                tracker.watermark = self._floor(product, point, tid - 1)
        top = tracker.top
        if not tracker.add(tid):
            self.stats.duplicates += 1
            return False, False
        self.stats.trades += 1
        if top is not None and tid > top + 1:
            self._opened(product, top + 1, tid - 1, "a match")
            return True, True
        return True, False

    def heartbeat(self, product: str, last: int) -> bool:
        """A heartbeat says ``product``'s newest trade is ``last``; whether a gap opened.

        It settles the product (every later trade comes from this connection). A
        ``last`` above every id accounted for opens a gap up to it, inclusive. On a
        fresh start (no position, no match yet) it says nothing: the feed's ids begin
        with the first match received.
        """
        self.unsure.discard(product)
        tracker = self.trackers[product]
        if tracker.watermark is None:
            point = self.resume_at.pop(product, None)
            if point is None:
                return False
            if last < point:
                self._other_sequence(product, last, point)
                return False
            self.stats.resumed += 1
            tracker.watermark = self._floor(product, point, last)
        top = tracker.top
        assert top is not None
        known = max(top, self.ahead.get(product, top))
        if last <= known:
            return False
        self.ahead[product] = last
        self._opened(product, known + 1, last, "a heartbeat")
        return True

    def accept_filled(self, product: str, tid: int) -> bool:
        """Account for a trade id fetched from REST; ``False`` for a duplicate."""
        if not self.trackers[product].add(tid):
            self.stats.duplicates += 1
            return False
        self.stats.trades += 1
        self.stats.filled += 1
        count_feed(FEED_GAPS)
        return True

    def give_up(self, product: str, lo: int, hi: int, why: str) -> None:
        """Account for ids ``lo..hi`` that will not be written (counted as lost)."""
        lost = self.trackers[product].mark(lo, hi)
        self.stats.lost += lost
        log.warning(
            "coinbase feed: %s: giving up on %d trade ids in %d..%d (%s)",
            product,
            lost,
            lo,
            hi,
            why,
        )

    def moved(self) -> dict[str, int] | None:
        """Positions that moved since last recorded (``None``: none)."""
        out = {}
        for product, tracker in self.trackers.items():
            w = tracker.watermark
            if w is not None and w != self.saved.get(product):
                out[product] = w
        return out or None

    def log_open_gaps(self) -> None:
        """Warn about the ids still missing (at a stop)."""
        for product in self.trackers:
            holes = self.holes(product)
            if holes:
                n = sum(hi - lo + 1 for lo, hi in holes)
                log.warning(
                    "coinbase feed: %s: stopping with %d trade ids unfilled in %d gaps (%s)",
                    product,
                    n,
                    len(holes),
                    ", ".join(f"{lo}..{hi}" for lo, hi in holes[:5]),
                )

    def _opened(self, product: str, lo: int, hi: int, by: str) -> None:
        self.stats.gaps += 1
        self.stats.gap_ids += hi - lo + 1
        self._open.add(product)
        log.info(
            "coinbase feed: %s gap of %d trade ids (%d..%d) seen by %s; filling from REST",
            product,
            hi - lo + 1,
            lo,
            hi,
            by,
        )

    def _floor(self, product: str, point: int, top: int) -> int:
        """The watermark of a product resuming at ``point`` whose missed ids end at ``top``.

        At most ``resume_max_ids`` of them are fetched (the newest); the older ones are
        given up (counted as lost, said once).
        """
        floor = max(point, top - self.tuning.resume_max_ids)
        if floor > point:
            n = floor - point
            self.stats.lost += n
            log.warning(
                "coinbase feed: %s: %d trades were missed since the last run; the oldest %d "
                "(ids %d..%d) are not fetched from REST (resume_max_ids=%d)",
                product,
                top - point,
                n,
                point + 1,
                floor,
                self.tuning.resume_max_ids,
            )
        return floor

    def _other_sequence(self, product: str, tid: int, point: int) -> None:
        log.warning(
            "coinbase feed: %s: trade id %d is below the last run's position %d: not the "
            "same id sequence (another venue, or ids were reset); starting from the live "
            "stream",
            product,
            tid,
            point,
        )
