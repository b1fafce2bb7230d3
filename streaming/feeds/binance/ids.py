"""Trade-id tracking and resuming of the Binance feed (see :mod:`streaming.feeds.binance`).

Binance trade ids (and aggregate trade ids) are contiguous per symbol. What every live
feed does with them (one :class:`~streaming.feeds.ids.IdTracker` per symbol,
duplicates, giving up, positions moved, gaps left open) is the shared
:class:`~streaming.feeds.ids.IdBook`; :class:`TradeIds` adds the Binance feed's own:
the previous run's position taken up by a symbol's first trade, the REST probes of a
symbol's newest trade, and the connection epochs a probe's answer is checked against.
The positions are kept in Redis by :class:`~streaming.feeds.ids.ResumePoints`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

from streaming.feeds.binance.config import TRADES, FeedStats, FeedTuning, TradeStream
from streaming.feeds.ids import IdBook

log = logging.getLogger("streaming.feeds.binance")


class TradeIds(IdBook[FeedStats]):
    """The ids of every symbol of the feed: duplicates, gaps, resume positions.

    Args:
        symbols: the feed's symbols.
        tuning: ``resume_max_ids`` bounds what a resume fetches.
        stats: counters of the run (trades, duplicates, gaps, lost, resumed ...).
        resume_at: the previous run's positions, taken up by each symbol's first trade.
        stream: the trade stream whose ids these are (trade ids, or aggregate trade
            ids of ``@aggTrade``): its names in log lines.

    A symbol is unsure (:attr:`unsure`) from a resume or a lost connection until the
    socket shows a trade of it or REST says what its newest trade is (:meth:`probed`).
    """

    feed: ClassVar[str] = "binance feed"
    log: ClassVar[logging.Logger] = log

    def __init__(
        self,
        symbols: tuple[str, ...],
        tuning: FeedTuning,
        stats: FeedStats,
        resume_at: Mapping[str, int] | None = None,
        stream: TradeStream = TRADES,
    ) -> None:
        super().__init__(symbols, stats, resume_at)
        self.noun = stream.noun
        self.dumps = stream.dumps
        self.tuning = tuning
        #: Counts lost connections: a probe answered across a loss settles nothing.
        self.epoch = 0

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
            self._opened(symbol, top + 1, tid - 1)
            return True, True
        return True, False

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
