"""Trade-id tracking and resuming of the Coinbase feed (see :mod:`streaming.feeds.coinbase`).

Coinbase Exchange trade ids are consecutive per product. What every live feed does
with them (one :class:`~streaming.feeds.ids.IdTracker` per product, duplicates,
giving up, positions moved, gaps left open) is the shared
:class:`~streaming.feeds.ids.IdBook`; :class:`ProductIds` adds the Coinbase feed's
own: what the ``heartbeat`` channel says exists beyond the ids received (a heartbeat
whose ``last_trade_id`` is above the highest id received opens a gap up to it), the
previous run's position taken up by a match or a heartbeat, and its floor. The
previous run's positions are kept in Redis by :class:`CoinbaseResumePoints`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import redis

from redisstore.keys import COINBASE_RESUME_KEY
from streaming.feeds.coinbase.config import CoinbaseStats, CoinbaseTuning
from streaming.feeds.ids import IdBook, ResumePoints

log = logging.getLogger("streaming.feeds.coinbase")


class CoinbaseResumePoints(ResumePoints):
    """Per product, the trade id up to which every trade is in the raw log.

    The Redis hash ``md:feed:coinbase:resume:<websocket host:port>``; loads and saves
    as :class:`~streaming.feeds.ids.ResumePoints`.
    """

    prefix: ClassVar[str] = COINBASE_RESUME_KEY
    feed: ClassVar[str] = "coinbase feed"
    log: ClassVar[logging.Logger] = log

    def __init__(self, client: redis.Redis, ws_url: str) -> None:
        super().__init__(client, ws_url)


class ProductIds(IdBook[CoinbaseStats]):
    """The trade ids of every product of the feed: duplicates, gaps, resume positions.

    Args:
        products: the feed's products.
        tuning: ``resume_max_ids`` bounds what a resume fetches.
        stats: counters of the run (trades, duplicates, gaps, lost, resumed ...).

    A product is unsure (:attr:`unsure`) after a start with resume positions
    (:meth:`take_up_positions`) and after a lost connection, until a heartbeat (or a
    match) of the new connection says where the product is.
    """

    feed: ClassVar[str] = "coinbase feed"
    log: ClassVar[logging.Logger] = log

    def __init__(
        self, products: tuple[str, ...], tuning: CoinbaseTuning, stats: CoinbaseStats
    ) -> None:
        super().__init__(products, stats)
        self.tuning = tuning
        #: Per product, the highest trade id a heartbeat said exists, while it is
        #: above every id accounted for (the top of an open gap).
        self.ahead: dict[str, int] = {}

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
