"""Filling the Coinbase feed's gaps from the REST API (see :mod:`streaming.feeds.coinbase`).

``GET /products/<product>/trades`` answers pages of trades newest first, at most 1000
(``limit``); ``after=<trade id>`` asks for the page of trades older than that id, and
the answer's ``CB-AFTER`` header is the cursor of the next older page (the oldest id
of this one). A gap ``lo..hi`` is filled by paging down from ``after=hi+1`` until
``lo`` is reached: every page is a contiguous run of ids, so the ids are known
without guessing. One request at a time, at most ``rest_per_s`` a second (Coinbase
allows 10 a second per IP on public endpoints); a 429 is honoured with its
``Retry-After`` (or a default), and holds every further request. The rows are written
as synthesized ``match`` frames marked ``"source":"rest"``.

The request loop (gate, waits, refusals, back-off) is the live feeds' shared
:class:`streaming.feeds.net.RestClient`; the pacing (``rest_per_s``) is its minimum
interval between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from marketdata.parsing import FORMAT_COINBASE_WS, iso_utc_ms
from marketdata.rawmessage import RawMessage
from streaming.feeds.binance.config import Stop, wall_ms
from streaming.feeds.coinbase.config import (
    USER_AGENT,
    CoinbaseFeedConfig,
    CoinbaseStats,
    rest_match_payload,
)
from streaming.feeds.coinbase.ids import ProductIds
from streaming.feeds.net import RestClient, Wait, backoff_delay

log = logging.getLogger("streaming.feeds.coinbase")


def row_id(row: Any) -> int | None:
    """A REST row's ``trade_id`` (``None`` when it has none usable)."""
    tid = row.get("trade_id") if isinstance(row, dict) else None
    if isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0:
        return tid
    return None


def row_time_ms(row: dict[str, Any]) -> int:
    """A REST row's ``time`` in ms (0 when unreadable: the parser rejects it later)."""
    return iso_utc_ms(row.get("time")) or 0


class GapFiller:
    """Fills the holes of every product's ids from REST, while the feed runs.

    Args:
        config: the feed's URLs and tuning.
        stats: counters of the run.
        ids: the ids accounted for (holes are what is missing).
        emit: queues a filled trade for the raw log, with its trade time and id (a
            pending backfill is written in trade-time order across products).
        stop: the feed's stop.
        now_ms: the wall clock stamped as receive time.

    """

    def __init__(
        self,
        config: CoinbaseFeedConfig,
        stats: CoinbaseStats,
        ids: ProductIds,
        emit: Callable[[RawMessage, int, int], Awaitable[None]],
        stop: Stop,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config
        self.tuning = config.tuning
        self.stats = stats
        self.ids = ids
        self.emit = emit
        self.stop = stop
        self.now_ms = now_ms
        #: Set when a gap opens; the filler waits ``gap_grace_s`` and fills every hole.
        self.gap = asyncio.Event()
        t = self.tuning
        waits = {429: Wait(t.rate_limit_default_s, "rate limit")}
        pace_s = 1.0 / t.rest_per_s  # at most rest_per_s requests a second
        self._rest = RestClient(t, stop, stats, log, "coinbase feed", waits, min_interval_s=pace_s)

    async def run(self) -> None:
        """Fill every hole whenever a gap opens, until stopped."""
        while True:
            await self.gap.wait()
            self.gap.clear()
            if await self.stop.sleep(self.tuning.gap_grace_s):
                return
            for product in self.ids.trackers:
                for lo, hi in self.ids.holes(product):
                    await self.fill(product, lo, hi)
                    if self.stop.stopped():
                        return

    async def fill(self, product: str, lo: int, hi: int) -> None:
        """Fetch the missing ids of ``product`` in ``lo..hi`` (newest first) and queue them."""
        tracker = self.ids.trackers[product]
        cursor = hi + 1
        empty = 0
        filled = 0
        while cursor > lo and not self.stop.stopped():
            limit = min(self.tuning.rest_limit, cursor - lo)
            rows = await self.fetch(product, cursor, limit)
            if rows is None:
                if self.stop.stopped():
                    return  # not given up: logged as unfilled at the stop
                self.ids.give_up(product, lo, cursor - 1, "the REST API failed")
                return
            recv_ms = self.now_ms()
            low, high = cursor, lo - 1
            for row in rows:
                tid = row_id(row)
                if tid is None or tid >= cursor or tid < lo:
                    continue
                low, high = min(low, tid), max(high, tid)
                if self.ids.accept_filled(product, tid):
                    filled += 1
                    payload = rest_match_payload(product, row)
                    ex = self.config.exchange
                    msg = RawMessage(payload, ex, recv_ms, FORMAT_COINBASE_WS, product)
                    await self.emit(msg, row_time_ms(row), tid)
            if high < cursor - 1 and empty + 1 < self.tuning.fill_max_attempts:
                # The newest ones are not there yet (REST may trail the socket for a
                # moment): ask again for this page.
                empty += 1
                if await self.stop.sleep(self._backoff_delay(empty)):
                    return
                continue
            if low >= cursor:
                self.ids.give_up(product, lo, cursor - 1, "the REST API does not have them")
                return
            empty = 0
            skipped = tracker.mark(low, cursor - 1)
            if skipped:
                self.stats.lost += skipped
                log.warning(
                    "coinbase feed: %s: REST skipped %d ids in %d..%d; they are given up",
                    product,
                    skipped,
                    low,
                    cursor - 1,
                )
            cursor = low  # the page's oldest id: its CB-AFTER cursor
        if filled:
            log.info(
                "coinbase feed: %s: filled %d trades from REST (%d..%d)", product, filled, lo, hi
            )

    def _backoff_delay(self, attempt: int) -> float:
        return backoff_delay(self.tuning.backoff_base_s, self.tuning.backoff_cap_s, attempt)

    async def fetch(self, product: str, after: int | None, limit: int) -> list[Any] | None:
        """A page of trades older than ``after``, newest first (the newest without it).

        ``None`` after too many failures or a refusal (the loop is
        :class:`streaming.feeds.net.RestClient`'s).
        """
        url = self.config.trades_url(product, after, limit)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        what = f"/products/{product}/trades after={after} limit={limit}"
        return await self._rest.get_list(url, headers, what)
